"""Canary drift on real traffic: the stack's detector (fitted on CLINC150) and canary
(the lexicon) score every request; in-scope queries, then out-of-scope ones; the compare
service's drift report of the second window against the first raises the alarm on both
signals (the quiet case, windows without a shift, is covered with larger samples by the
unit tests)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from models.ood.data import load_split
from services.common.archive_files import connect
from services.common.settings import KafkaSettings
from tests.integration.clinc import CLINC150
from tests.integration.stack import (
    Launch,
    Worker,
    launch_stack_fixture,  # noqa: F401 - the fixture
    model_spec,
    wait_for,
)
from tests.integration.test_archive import archive_proc, archives, start  # noqa: F401
from tests.integration.test_compare_service import compare_proc, compares  # noqa: F401

N = 60
POLICY = {
    "endpoint": "drift",
    "deadline_ms": 5000,
    "models": ["champ"],
    "stages": [{"until_ms": "deadline", "accept": ["champ"]}],
}


def _scored(root: Path, model: str) -> int:
    con = connect(root)
    try:
        sql = "SELECT count(*) FROM scores WHERE model = ? AND status = 'ok'"
        return int(con.execute(sql, [model]).fetchall()[0][0])
    finally:
        con.close()


@pytest.mark.timeout(600)
def test_out_of_scope_traffic_raises_the_drift_signal(
    launch_stack: Launch,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    clinc_artifact: Path,
    archives: list,  # type: ignore[type-arg]  # noqa: F811
    compares: list,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    val = load_split(CLINC150, "val")
    inside = list(val.in_scope().texts[::50])[:N]  # 60 intents
    outside = list(val.out_of_scope().texts)[:N]
    detector = model_spec("ood", "ood", "detector", ["drift"], artifact=clinc_artifact, threads=1)
    stack = launch_stack(
        policies=[POLICY],
        workers=[
            Worker("champ", model_spec("champ", "echo", "champion", ["drift"])),
            Worker("ood", detector),
            Worker("canary", model_spec("canary", "lexicon", "canary", ["drift"])),
        ],
    )
    root = tmp_path / "archive"
    start(archive_proc(kafka_settings, root, tmp_path / "archive.log", max_age_s="1"), archives)
    experiments = start(compare_proc(root, tmp_path / "compare.log"), compares)

    marks = [time.time() * 1000]
    for texts in (inside, outside):
        for text in texts:
            resp = stack.http.post("/v1/infer/drift", json={"inputs": {"text": text}})
            assert resp.status_code == 200, resp.text
        wait_for(  # this phase's scores are in before the next phase starts
            lambda: min(_scored(root, "ood"), _scored(root, "canary")) >= N * len(marks),
            120,
            lambda: f"scored: ood {_scored(root, 'ood')}, canary {_scored(root, 'canary')}",
        )
        marks.append(time.time() * 1000)
    start_ms, switch_ms, end_ms = marks

    def drift(since: float, until: float, ref_since: float, ref_until: float) -> dict[str, dict]:  # type: ignore[type-arg]
        params = {
            "champion": "champ",
            "challenger": "canary",
            "since": str(int(since)),
            "until": str(int(until)),
            "reference_since": str(int(ref_since)),
            "reference_until": str(int(ref_until)),
        }
        resp = httpx.get(f"{experiments.url}/v1/experiments/compare", params=params, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()["drift"]  # type: ignore[no-any-return]

    shifted = drift(switch_ms, end_ms, start_ms, switch_ms)
    assert shifted["detector:ood"]["alert"] is True, shifted
    assert shifted["canary:canary"]["psi"] > 0.25, shifted
