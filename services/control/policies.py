"""Policy documents rewritten by the control commands: promote a challenger, retire a
model. Pure functions over the documents (services.common.policy's format); the
result is validated before it is returned."""

from __future__ import annotations

import copy
from typing import Any

from services.common.policy import parse_policy
from services.control.errors import ControlConflictError

Doc = dict[str, Any]


def mentions(doc: Doc, model: str) -> bool:
    """Whether the policy names ``model`` (roster, a stage, the canary or the OOD gate)."""
    gate = doc.get("ood") or {}
    named = {*doc.get("models", []), (doc.get("canary") or {}).get("model"), gate.get("detector")}
    named.add((gate.get("when_flagged") or {}).get("model"))
    for stage in doc.get("stages", []):
        if stage.get("accept") != "any":
            named.update(stage.get("accept", []))
    return model in named


def champion_of(doc: Doc) -> str | None:
    """The most preferred model of the first stage (None for ``accept: any``)."""
    accept = doc["stages"][0]["accept"]
    return None if accept == "any" else str(accept[0])


def promote(doc: Doc, model: str) -> Doc:
    """``model`` becomes the preferred answer and the old champion its fallback: the
    first stage accepts ``model`` alone (a single-stage policy is split at half its
    deadline), every later explicit stage prefers ``model`` then the old champion."""
    out = copy.deepcopy(doc)
    old = champion_of(out)
    if old == model:
        raise ControlConflictError(f"{model} is already the champion of {out['endpoint']}")
    if out.get("models") and model not in out["models"]:
        out["models"] = [*out["models"], model]
    stages = out["stages"]
    if len(stages) == 1:
        last = stages[0]
        first = {"until_ms": max(1, int(out["deadline_ms"]) // 2), "accept": [model]}
        stages = [first, {"until_ms": "deadline", "accept": last["accept"]}]
    else:
        stages = [{"until_ms": stages[0]["until_ms"], "accept": [model]}, *stages[1:]]
    for stage in stages[1:]:
        if stage["accept"] != "any":
            rest = [m for m in stage["accept"] if m not in (model, old)]
            stage["accept"] = [model, *([old] if old else []), *rest]
    out["stages"] = stages
    return _checked(_settle_bandit(out))


def retire(doc: Doc, model: str) -> Doc:
    """The policy without ``model``: off the roster and every accept list; a stage left
    empty goes (the new last stage runs to the deadline)."""
    out = copy.deepcopy(doc)
    endpoint = out["endpoint"]
    gate = out.get("ood") or {}
    if model in (gate.get("detector"), (gate.get("when_flagged") or {}).get("model")):
        raise ControlConflictError(
            f"{model} serves the OOD gate of {endpoint}: set a policy without it first"
        )
    if (out.get("canary") or {}).get("model") == model:
        out.pop("canary")
    out["models"] = [m for m in out.get("models", []) if m != model]
    stages = []
    for stage in out["stages"]:
        accept = stage["accept"]
        if accept != "any":
            accept = [m for m in accept if m != model]
            if not accept:
                continue
        stages.append({**stage, "accept": accept})
    if not stages:
        raise ControlConflictError(
            f"retiring {model} leaves {endpoint} with no model: promote another first"
        )
    stages[-1]["until_ms"] = "deadline"
    out["stages"] = stages
    bandit = out.get("bandit") or {}
    if bandit.get("champion") == model:
        out["bandit"] = {k: v for k, v in bandit.items() if k not in ("champion", "champion_floor")}
    return _checked(_settle_bandit(out))


def _settle_bandit(doc: Doc) -> Doc:
    """A bandit stage left with fewer than two arms picks by preference, and the
    ``bandit`` section goes with the last bandit stage (a promotion ends the bandit when
    the promoted model takes its first stage)."""
    for stage in doc["stages"]:
        if stage.get("pick") == "bandit" and (stage["accept"] == "any" or len(stage["accept"]) < 2):
            stage.pop("pick")
    if not any(stage.get("pick") == "bandit" for stage in doc["stages"]):
        doc.pop("bandit", None)
    return doc


def _checked(doc: Doc) -> Doc:
    parse_policy(doc, f"the rewritten policy of {doc.get('endpoint')}")
    return doc
