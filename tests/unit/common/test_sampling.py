"""Sample membership (services.common.sampling) and the ``sample`` field of model specs
and their registrations."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.common.messages import ModelRegistration, Role
from services.common.sampling import (
    NOT_SAMPLED,
    SHARE_PATTERN,
    in_sample,
    not_sampled_error,
    sample_point,
)
from services.common.spec import load_spec, parse_inline

IDS = [f"req-{i}" for i in range(20_000)]


def test_membership_is_stable_across_calls_and_processes() -> None:
    first = [in_sample("shadow", rid, 0.1) for rid in IDS[:500]]
    assert first == [in_sample("shadow", rid, 0.1) for rid in IDS[:500]]
    code = (
        "from services.common.sampling import sample_point;"
        "print(repr(sample_point('shadow', 'req-1')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == sample_point("shadow", "req-1")  # no per-process hash seed
    assert sample_point("shadow", "req-1") == pytest.approx(0.2828070679845114, abs=1e-15)


@pytest.mark.parametrize("share", [0.01, 0.1, 0.5, 0.9])
def test_the_share_of_ids_in_the_sample_is_the_configured_share(share: float) -> None:
    k = sum(in_sample("shadow", rid, share) for rid in IDS)
    sd = math.sqrt(len(IDS) * share * (1 - share))
    assert abs(k - share * len(IDS)) < 4 * sd  # a binomial count, 4 standard deviations


def test_each_model_samples_its_own_requests() -> None:
    a = {rid for rid in IDS if in_sample("shadow-a", rid, 0.1)}
    b = {rid for rid in IDS if in_sample("shadow-b", rid, 0.1)}
    assert a != b
    overlap = len(a & b) / len(IDS)  # independent: about 0.1 * 0.1
    assert overlap == pytest.approx(0.01, abs=0.004)


def test_raising_the_share_only_adds_requests_and_one_means_every_request() -> None:
    small = {rid for rid in IDS if in_sample("shadow", rid, 0.1)}
    large = {rid for rid in IDS if in_sample("shadow", rid, 0.3)}
    assert small < large
    assert all(in_sample("shadow", rid, 1.0) for rid in IDS[:1000])


def test_the_not_sampled_error_names_its_share_as_compare_reads_it() -> None:
    error = not_sampled_error(0.125)
    assert error.code == NOT_SAMPLED
    found = re.search(SHARE_PATTERN, f"[{error.code}] {error.message}")
    assert found is not None
    assert float(found.group(1)) == 0.125


def test_a_spec_samples_every_request_unless_told() -> None:
    spec = parse_inline("echo:name=s,role=challenger,endpoints=demo")
    assert spec.sample == 1.0
    assert spec.registration("t", 1).sample == 1.0


def test_the_sample_is_read_from_the_inline_form_and_files(tmp_path: Path) -> None:
    inline = parse_inline("echo:name=s,role=challenger,endpoints=demo,sample=0.1,latency_ms=2")
    assert (inline.sample, inline.params) == (0.1, {"latency_ms": 2})  # a field, not a param
    assert inline.registration("t", 1).sample == 0.1
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nruntime: echo\nrole: canary\nendpoints: [demo]\nsample: 0.25\n")
    assert load_spec(str(path)).sample == 0.25


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "greater than 0"),
        ("-0.1", "greater than 0"),
        ("1.5", "less than or equal to 1"),
        ("10%", "sample must be a number in (0, 1]"),
        ("true", "sample must be a number in (0, 1]"),
        ("nan", "sample must be a number in (0, 1]"),
    ],
)
def test_a_sample_outside_0_1_or_not_a_number_is_refused_by_name(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match="sample") as caught:
        parse_inline(f"echo:name=s,role=challenger,endpoints=demo,sample={value}")
    assert says in str(caught.value)


def test_a_sampled_champion_is_refused() -> None:
    with pytest.raises(ConfigError, match="a champion answers every request"):
        parse_inline("echo:name=s,role=champion,endpoints=demo,sample=0.5")
    assert parse_inline("echo:name=s,role=champion,endpoints=demo,sample=1").sample == 1.0
    sampled = parse_inline("echo:name=s,role=challenger,endpoints=demo,sample=0.5")
    promoted = sampled.model_copy(update={"role": Role.CHAMPION})  # rdv deploy --role
    with pytest.raises(ConfigError, match="cannot register s: a champion answers every"):
        promoted.registration("t", 1)


def test_a_registration_without_a_sample_from_an_older_build_reads_as_one() -> None:
    reg = ModelRegistration.model_validate(
        {
            "name": "s",
            "version": "1",
            "role": "challenger",
            "endpoints": ["demo"],
            "runtime": "echo",
            "changed_by": "t",
            "changed_ms": 1,
        }
    )
    assert (reg.sample, reg.role) == (1.0, Role.CHALLENGER)
