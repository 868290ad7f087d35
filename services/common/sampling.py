"""Sampled models: which requests a model whose spec has ``sample < 1`` scores.

A model spec's ``sample`` (in (0, 1], default 1) is the share of its endpoints'
requests the model scores, so that an expensive shadow (a second LLM) need not run on
every request. Membership is a stable hash of the model's name and the request id
(sha256, as the canary share's in services.common.decide): a request is in or out on
every replica, after every restart and when compare reads the archive, different
models sample different requests, and raising the share only adds requests.

A request outside the sample gets a ``skipped`` score whose error code is
``NOT_SAMPLED`` (``not_sampled_error``, which also names the share): the rendezvous
stops waiting for the model at once, and the archive keeps the score, so which
requests were in the sample is on record (``ARCHIVED_PREFIX``, ``SHARE_PATTERN``).
"""

from __future__ import annotations

import hashlib

from services.common.messages import ErrorBody

NOT_SAMPLED = "not_sampled"
"""The error code of a sampled model's skipped score for a request outside its sample."""

ARCHIVED_PREFIX = f"[{NOT_SAMPLED}]"
"""How such a score's error starts in the archive's ``error`` column (``[code] message``)."""

SHARE_PATTERN = r"\(sample=([0-9.eE+-]+)\)"
"""A regular expression whose group 1 is the share a ``not_sampled`` error names."""

_HASH_SPACE = float(2**64)


def sample_point(model: str, request_id: str) -> float:
    """Where the request falls for ``model``: a stable number in [0, 1)."""
    digest = hashlib.sha256(f"{model}\0{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SPACE


def in_sample(model: str, request_id: str, sample: float) -> bool:
    """Whether ``model``, scoring a ``sample`` share of requests, scores this one."""
    return sample >= 1.0 or sample_point(model, request_id) < sample


def not_sampled_error(sample: float) -> ErrorBody:
    """The error of a skipped score for a request outside a ``sample`` share."""
    return ErrorBody(
        code=NOT_SAMPLED,
        message=f"the request is outside this model's sample (sample={sample!r})",
    )
