"""The OOD gate end to end, every service a real process on the session's broker.

1. The local stack's chat policy (deploy/policies/chat.yaml: its gate and safe reply)
   with the real detector fitted on CLINC150 and the real SmolLM2 worker: an
   out-of-scope prompt gets the safe reply and the flag at once, an in-scope one the
   chat model's answer, marked clear; the decisions record both.
2. A detector that is down, or slower than the gate's wait: answers come at the end of
   the wait, never later, marked unknown.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.codec import decode
from services.common.messages import Decision
from tests.integration.kafka_io import read_exactly
from tests.integration.stack import (
    REPO,
    Launch,
    Worker,
    launch_stack_fixture,  # noqa: F401 - registers the launch_stack fixture here
    model_spec,
)

OUT_OF_SCOPE = "Who won the football world cup in 1998?"
IN_SCOPE = "How do I make lasagna?"


def _chat_policy() -> dict[str, Any]:
    """The repo's chat policy (gate, safe reply), with the champion alone on the roster."""
    doc = yaml.safe_load((REPO / "deploy" / "policies" / "chat.yaml").read_text())
    assert isinstance(doc, dict)
    return doc | {
        "deadline_ms": 120_000,
        "models": ["smol", "ood"],
        "stages": [{"until_ms": "deadline", "accept": ["smol"]}],
    }


@pytest.mark.timeout(600)
def test_out_of_scope_prompts_get_the_safe_reply_and_in_scope_ones_the_chat_answer(
    launch_stack: Launch, clinc_artifact: Path
) -> None:
    policy = _chat_policy()
    safe_text = policy["ood"]["when_flagged"]["output"]["text"]
    detector = model_spec("ood", "ood", "detector", ["chat"], artifact=clinc_artifact, threads=1)
    stack = launch_stack(
        policies=[policy],
        workers=[Worker("ood", detector), Worker("smol", "models/specs/smol.yaml")],
    )

    def ask(prompt: str) -> Any:
        body = {"model": "chat", "messages": [{"role": "user", "content": prompt}]}
        return stack.http.post("/v1/chat/completions", json=body | {"max_tokens": 48}, timeout=120)

    flagged, answered = ask(OUT_OF_SCOPE), ask(IN_SCOPE)

    assert flagged.status_code == 200, flagged.text
    assert flagged.headers["x-rdv-ood"] == "flagged"
    assert flagged.headers["x-rdv-reason"] == "ood_safe_reply"
    assert flagged.json()["choices"][0]["message"]["content"] == safe_text
    assert flagged.json()["ood"]["status"] == "flagged"
    assert flagged.json()["ood"]["score"] > 0

    assert answered.status_code == 200, answered.text
    assert answered.headers["x-rdv-ood"] == "clear"
    assert answered.headers["x-rdv-reason"] == "champion_in_time"
    assert answered.json()["model"] == "smol"
    assert answered.json()["ood"]["status"] == "clear"
    text = answered.json()["choices"][0]["message"]["content"]
    assert text
    assert text != safe_text

    decisions = {
        d.request_id: d
        for d in (
            decode(r.value, Decision)
            for r in read_exactly(stack.kafka, stack.topics.decisions, 2, timeout_s=30)
        )
    }
    on_flag = decisions[flagged.headers["x-rdv-request-id"]]
    on_clear = decisions[answered.headers["x-rdv-request-id"]]
    assert on_flag.ood is not None
    assert (on_flag.chosen_model, on_flag.reason, on_flag.ood.status) == (
        None,
        "ood_safe_reply",
        "flagged",
    )
    assert "smol" in on_flag.late  # answered without waiting for the chat model
    assert on_clear.ood is not None
    assert (on_clear.chosen_model, on_clear.ood.status) == ("smol", "clear")
    assert (
        stack.metric(
            "rendezvous", "rdv_rendezvous_ood_checks_total", endpoint="chat", status="flagged"
        )
        == 1
    )


WAIT_MS = 500


def _gated(endpoint: str, detector: str) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "deadline_ms": 5000,
        "models": ["champ", detector],
        "stages": [{"until_ms": "deadline", "accept": ["champ"]}],
        "ood": {"detector": detector, "wait_ms": WAIT_MS, "when_flagged": {"output": "safe"}},
    }


def test_a_slow_or_stopped_detector_holds_answers_only_until_the_wait_ends(
    launch_stack: Launch,
) -> None:
    champ = model_spec("champ", "echo", "champion", ["stopped", "slow"])
    sloth = model_spec("sloth", "latency", "detector", ["slow"], latency_ms=3000)
    stack = launch_stack(
        policies=[_gated("stopped", "ghost"), _gated("slow", "sloth")],  # ghost never runs
        workers=[Worker("champ", champ), Worker("sloth", sloth)],
    )
    for endpoint in ("stopped", "slow", "stopped", "slow"):
        started = time.monotonic()
        resp = stack.http.post(f"/v1/infer/{endpoint}", json={"inputs": endpoint})
        took_ms = (time.monotonic() - started) * 1000

        assert resp.status_code == 200, resp.text
        assert resp.json()["output"] == endpoint  # the champion's answer
        assert resp.headers["x-rdv-ood"] == "unknown"
        detector = "ghost" if endpoint == "stopped" else "sloth"
        assert resp.json()["ood"] == {"status": "unknown", "detector": detector, "score": None}
        assert WAIT_MS <= took_ms <= WAIT_MS + 1000, f"{endpoint}: answered after {took_ms:.0f} ms"
