"""Deploy alongside production, promote, retire, under steady load, on the real broker,
with the real ``rdv`` commands: no request fails, the answering model switches at the
promotion, and the decisions record the policy version that chose each answer."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.common.codec import decode
from services.common.messages import Decision
from services.common.settings import KafkaSettings
from services.control.deployers import ProcessDeployer
from tests.integration.kafka_io import read_all_after
from tests.integration.stack import (
    GATEWAY,
    Launch,
    Stack,
    Worker,
    launch_stack_fixture,  # noqa: F401 - registers the launch_stack fixture here
    model_spec,
    run_rdv,
    wait_for,
)

POLICY = {
    "endpoint": "live",
    "deadline_ms": 3000,
    "models": ["champ"],
    "stages": [{"until_ms": "deadline", "accept": ["champ"]}],
}
CHALL = "echo:name=chall,role=champion,endpoints=live,latency_ms=3"


@dataclass(frozen=True)
class Sent:
    at: float  # monotonic s when the request was sent
    status: int
    model: str | None
    request_id: str


class SteadyLoad:
    """Requests one after another at about ``rate_per_s`` until stopped."""

    def __init__(self, url: str, rate_per_s: float = 20.0) -> None:
        self.url = url
        self.interval = 1.0 / rate_per_s
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self._stop.wait(self.interval):  # the load's pace
                at = time.monotonic()
                try:
                    resp = http.post("/v1/infer/live", json={"inputs": len(self.sent)})
                    got = Sent(
                        at,
                        resp.status_code,
                        resp.headers.get("x-rdv-model"),
                        resp.headers.get("x-rdv-request-id", ""),
                    )
                except httpx.HTTPError:
                    got = Sent(at, 0, None, "")
                self.sent.append(got)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def answered_by(self, model: str) -> int:
        return sum(1 for s in self.sent if s.model == model)


def rdv(stack: Stack, run_dir: Path, *args: str) -> str:
    """An ``rdv`` control command on the stack's broker, with its policy files."""
    policies = stack.procs[GATEWAY].env["RDV_GATEWAY_POLICIES"]
    flags = ["--by", "tester", "--policies", policies]
    return run_rdv(stack.kafka, *args, *flags, env={"RDV_RUN_DIR": str(run_dir)}).stdout


def test_deploy_promote_retire_under_load_fails_no_request(
    launch_stack: Launch, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    began_ms = time.time() * 1000
    stack = launch_stack(
        policies=[POLICY],
        workers=[Worker("champ", model_spec("champ", "echo", "champion", ["live"], latency_ms=3))],
    )
    run_dir = tmp_path / "run"
    try:
        with SteadyLoad(stack.url) as load:
            wait_for(lambda: load.answered_by("champ") >= 20, 30, lambda: f"{load.sent[-3:]}")
            out = rdv(stack, run_dir, "deploy", CHALL, "--role", "challenger")
            assert "registered as challenger" in out
            port = re.search(r"ops :(\d+)", out)
            assert port is not None, out
            wait_for(  # warm-up: the challenger scores live traffic
                lambda: _scored(int(port.group(1)), "chall") >= 20,
                60,
                lambda: "no chall scores",
            )
            promoted_at = time.monotonic()
            out = rdv(stack, run_dir, "promote", "chall", "--endpoint", "live")
            assert "live: chall preferred, fallback champ (policy version 2)" in out
            promoted_done = time.monotonic()
            wait_for(lambda: _after(load, promoted_done + 1.0) >= 20, 30, lambda: "load stalled")
            out = rdv(stack, run_dir, "retire", "champ", "--keep-running")
            assert "live: champ removed (policy version 3)" in out
            retired_done = time.monotonic()
            stack.terminate("champ")  # the old champion's worker goes away
            wait_for(lambda: _after(load, retired_done + 1.0) >= 20, 30, lambda: "load stalled")
        listed = rdv(stack, run_dir, "models", "list")
        shown = rdv(stack, run_dir, "policy", "show", "live")
        assert ProcessDeployer(run_dir).stop("chall")  # found and stopped
    finally:
        ProcessDeployer(run_dir).stop("chall")  # whatever happened above

    failed = [s for s in load.sent if s.status != 200]
    assert not failed, f"{len(failed)} of {len(load.sent)} requests failed: {failed[:3]}"
    before = [s.model for s in load.sent if s.at < promoted_at]
    after = [s.model for s in load.sent if s.at > promoted_done + 1.0]
    assert set(before) == {"champ"}
    assert set(after) == {"chall"}
    assert "chall" in listed
    assert "champion" in listed
    assert "champ " not in listed  # unregistered at retirement
    assert "version 3 (control topic, by tester" in shown

    decisions = {
        d.request_id: d
        for d in (
            decode(r.value, Decision)
            for r in read_all_after(kafka_settings, stack.topics.decisions, began_ms)
        )
    }
    chosen = {
        (decisions[s.request_id].chosen_model, decisions[s.request_id].policy_version)
        for s in load.sent
    }
    assert ("champ", 1) in chosen  # the policy file's version
    assert ("chall", 2) in chosen  # promoted
    assert ("chall", 3) in chosen  # the old champion retired
    assert not {c for c in chosen if c[0] == "champ" and c[1] == 3}


def _scored(ops_port: int, model: str) -> float:
    """The worker's own count of requests it scored (its /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{ops_port}/metrics", timeout=5).text
    samples = (s for f in text_string_to_metric_families(text) for s in f.samples)
    return sum(
        s.value
        for s in samples
        if s.name == "rdv_worker_scored_total" and s.labels.get("model") == model
    )


def _after(load: SteadyLoad, at: float) -> int:
    return sum(1 for s in load.sent if s.at > at)
