"""``rdv compare`` with a sampled shadow (spec ``sample`` < 1) over a real archive folder:
paired figures over its sample agree with a full shadow's, the report gives the sample
shares, and the off-policy estimates read only the requests in the sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.archive.schema import ROW_BUILDERS, to_table
from services.archive.store import PartStore, hour_of
from services.common.archive_files import DECISIONS, FEEDBACK, REQUESTS, SCORES, connect
from services.common.kafka import Record
from services.common.messages import (
    Decision,
    ErrorBody,
    Feedback,
    RequestEnvelope,
    Score,
    ScoreStatus,
    Timings,
)
from services.common.sampling import in_sample, not_sampled_error, sample_point
from services.compare.offpolicy import estimate
from services.compare.paired import Window
from services.compare.rewards import logged_rewards
from services.compare.run import compare
from services.compare.sampled import sampled_rewards
from tests.factories import request

N = 4000
SHARE = 0.2
CANARY = 0.5  # the logging policy's canary share for the shadow
REWARD = {"champ": 0.2, "part": 0.8}


class Writer:
    """Rows of every kind, written by the archive's own store."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[object, ...]]] = {
            k: [] for k in (REQUESTS, SCORES, DECISIONS, FEEDBACK)
        }

    def add(self, kind: str, msg: object, created: int) -> None:
        rec = Record(f"rdv.{kind}", 0, len(self.rows[kind]), b"k", b"v", timestamp_ms=created)
        self.rows[kind].append(ROW_BUILDERS[kind](msg, rec, created + 500))

    def write(self, root: Path) -> None:
        store = PartStore(root)
        for kind, rows in self.rows.items():
            if rows:
                record_ms = rows[0][-2]
                assert isinstance(record_ms, int)
                store.write(kind, hour_of(record_ms), to_table(kind, rows))


def _score(req: RequestEnvelope, model: str, latency: float, **kw: object) -> Score:
    done = req.created_ms + latency
    return Score.model_validate(
        {
            "request_id": req.request_id,
            "endpoint": "demo",
            "model": model,
            "model_version": "1",
            "role": "champion" if model == "champ" else "challenger",
            "timings": Timings(received_ms=req.created_ms, started_ms=done, finished_ms=done),
            **kw,
        }
    )


def _shadow(req: RequestEnvelope, i: int, model: str, sample: float) -> Score:
    """A shadow 20..39 ms fast that fails every 10th request; a not_sampled skip outside
    its sample."""
    if not in_sample(model, req.request_id, sample):
        return _score(req, model, 0.0, status=ScoreStatus.SKIPPED, error=not_sampled_error(sample))
    if i % 10 == 0:
        boom = ErrorBody(code="model_error", message="boom")
        return _score(req, model, 30 + i % 20, status=ScoreStatus.ERROR, error=boom)
    return _score(req, model, 20 + i % 20, status=ScoreStatus.OK, output={"text": "same"})


def _decision(req: RequestEnvelope) -> Decision:
    """The logging policy: the shadow answers in its canary branch when it scored (in its
    sample), the champion otherwise; propensity: the branch's probability."""
    canary = sample_point("canary", req.request_id) < CANARY
    chosen = "part" if canary and in_sample("part", req.request_id, SHARE) else "champ"
    return Decision(
        request_id=req.request_id,
        endpoint="demo",
        chosen_model=chosen,
        reason="x",
        in_time=[],
        late=[],
        latencies_ms={},
        elapsed_ms=1.0,
        decided_ms=req.created_ms + 1.0,
        propensity=CANARY if canary else 1 - CANARY,
    )


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """champ (100..149 ms, never fails), a full shadow ``full`` and a 20% shadow
    ``part`` of the same behaviour; feedback on every request."""
    root = tmp_path_factory.mktemp("sampled") / "archive"
    w = Writer()
    for i in range(N):
        req = request(request_id=f"r{i}", endpoint="demo", deadline_in_ms=1000)
        w.add(REQUESTS, req, req.created_ms)
        ok = {"status": ScoreStatus.OK, "output": {"text": "same"}}
        w.add(SCORES, _score(req, "champ", 100 + i % 50, **ok), req.created_ms)
        w.add(SCORES, _shadow(req, i, "full", 1.0), req.created_ms)
        w.add(SCORES, _shadow(req, i, "part", SHARE), req.created_ms)
        decision = _decision(req)
        w.add(DECISIONS, decision, req.created_ms)
        assert decision.chosen_model is not None
        reward = Feedback(
            request_id=req.request_id,
            reward=REWARD[decision.chosen_model],
            received_ms=req.created_ms + 5.0,
        )
        w.add(FEEDBACK, reward, req.created_ms)
    w.write(root)
    return root


def test_paired_figures_of_a_sampled_shadow_are_over_its_sample(archive: Path) -> None:
    report = compare(archive, Window("champ", "part", "demo"))
    p = report.paired
    inside = sum(in_sample("part", f"r{i}", SHARE) for i in range(N))
    assert (p.paired, p.only_champion, p.only_challenger) == (inside, N - inside, 0)
    assert p.challenger.skipped == 0  # its not_sampled skips are not counted as skips
    data = report.as_dict()
    part, champ = data["models"]["part"], data["models"]["champ"]
    assert part["sample"]["configured"] == SHARE
    assert part["sample"]["observed"]["value"] == pytest.approx(inside / N)
    assert part["sample"]["observed"]["n"] == N
    assert champ["sample"]["configured"] == 1.0
    assert champ["sample"]["observed"]["value"] == 1.0
    assert "part is sampled: configured 20.0%" in report.table()


def test_a_sampled_shadows_estimates_agree_with_the_full_shadows(archive: Path) -> None:
    full = compare(archive, Window("champ", "full", "demo")).as_dict()
    part = compare(archive, Window("champ", "part", "demo")).as_dict()
    assert full["paired"] == N
    assert full["models"]["full"]["sample"]["configured"] == 1.0
    assert "is sampled" not in compare(archive, Window("champ", "full", "demo")).table()
    for key in ("error_rate", "within_deadline", "skip_rate"):
        a, b = full["models"]["full"][key], part["models"]["part"][key]
        assert a["low"] <= b["high"], key  # the intervals overlap
        assert b["low"] <= a["high"], key
        assert b["n"] < a["n"]
    assert part["models"]["part"]["error_rate"]["value"] == pytest.approx(0.1, abs=0.03)
    for q in ("p50", "p90"):
        assert part["models"]["part"]["latency_ms"][q] == pytest.approx(
            full["models"]["full"]["latency_ms"][q], rel=0.1
        )


def test_off_policy_estimates_read_only_the_requests_in_the_sample(archive: Path) -> None:
    window = Window("champ", "part", "demo")
    report = compare(archive, window)
    champ, part = report.off_policy
    inside = sum(in_sample("part", f"r{i}", SHARE) for i in range(N))
    assert champ.ips.n == part.ips.n == inside
    for found in (champ, part):  # each model's true mean reward, had it always answered
        truth = REWARD[found.model]
        assert found.ips.low <= truth <= found.ips.high, found
    con = connect(archive)
    try:
        whole = logged_rewards(con, window)
        assert len(whole) == N
        assert len(sampled_rewards(con, window)) == inside
    finally:
        con.close()
    # the whole log would mislead: outside its sample the shadow could never answer
    biased = estimate("part", whole)
    assert biased.ips.high < REWARD["part"] - 0.3


def test_a_full_comparison_reads_the_whole_log(archive: Path) -> None:
    window = Window("champ", "full", "demo")
    con = connect(archive)
    try:
        assert len(sampled_rewards(con, window)) == len(logged_rewards(con, window)) == N
    finally:
        con.close()
