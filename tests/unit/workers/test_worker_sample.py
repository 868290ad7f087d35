"""A sampled model's worker (spec ``sample`` < 1): it runs the model only on the requests
in its sample, sends a ``not_sampled`` skip for the others, and that skip lets the
rendezvous move on at once."""

from __future__ import annotations

from pydantic import JsonValue

from services.common.decide import decide
from services.common.loop import Context, Inbound
from services.common.messages import REPLAY, REPLAY_MODEL, REPLAY_OF, ScoreStatus
from services.common.policy import parse_policy
from services.common.sampling import NOT_SAMPLED, in_sample, not_sampled_error
from services.common.spec import parse_inline
from services.rendezvous.mailbox import Mailbox
from services.workers.chat import ChatWorker
from services.workers.chat_runtime import ChatRuntime
from services.workers.worker import ModelWorker
from tests.factories import policy_doc, score_for
from tests.unit.workers.test_chat_worker_stream import ScriptedChat, _inbound, _payload
from tests.unit.workers.test_worker import NOW, Scripted, StepClock, req, run

SHADOW = "echo:name=shadow,role=challenger,endpoints=demo,sample=0.25"


def test_only_requests_in_the_sample_reach_the_model() -> None:
    batch = [req(i) for i in range(200)]
    model = Scripted()

    ctx, scores = run(_shadow(model), batch)

    ids = [item.message.request_id for item in batch]
    chosen = [rid for rid in ids if in_sample("shadow", rid, 0.25)]
    assert 0 < len(chosen) < len(ids)
    assert model.batches == [_payloads(batch, chosen)]  # one call, the sampled requests only
    by_id = {s.request_id: s for s in scores}
    assert set(by_id) == set(ids)  # every request gets one score, in or out
    assert len(ctx.emits) == len(ids)
    for rid in ids:
        score = by_id[rid]
        if rid in chosen:
            assert (score.status, score.error) == (ScoreStatus.OK, None)
        else:
            assert score.status is ScoreStatus.SKIPPED
            assert score.error == not_sampled_error(0.25)
            assert score.timings.received_ms == score.timings.finished_ms == NOW


def _shadow(model: Scripted) -> ModelWorker:
    return ModelWorker(parse_inline(SHADOW), model, "scores", clock=StepClock())


def _payloads(batch: list[Inbound], chosen: list[str]) -> list[JsonValue]:
    return [item.message.payload for item in batch if item.message.request_id in chosen]


def test_an_expired_request_outside_the_sample_says_not_sampled() -> None:
    outside = next(
        item
        for item in (req(i, deadline_epoch_ms=NOW - 1) for i in range(100))
        if not in_sample("shadow", item.message.request_id, 0.25)
    )
    _, scores = run(_shadow(Scripted()), [outside])
    assert scores[0].status is ScoreStatus.SKIPPED
    assert scores[0].error is not None
    assert scores[0].error.code == NOT_SAMPLED


def test_the_chat_worker_submits_only_requests_in_its_sample() -> None:
    runtime = ChatRuntime({})
    ids = [f"c{i}" for i in range(40)]
    chat = ScriptedChat({rid: ["ok"] for rid in ids})
    runtime.chat = chat
    spec = parse_inline("llama-chat:name=llm2,role=challenger,endpoints=chat,sample=0.3")
    worker = ChatWorker(spec, runtime, "rdv.scores")
    ctx = Context()

    worker.process([_inbound(_payload(False), rid) for rid in ids], ctx)

    inside = [rid for rid in ids if in_sample("llm2", rid, 0.3)]
    assert 0 < len(inside) < len(ids)
    assert chat.running == inside  # the engine never saw the others
    assert len(ctx.emits) == len(ids) - len(inside)  # their skips, at once


def test_a_sampled_out_challenger_in_an_accept_list_does_not_delay_the_answer() -> None:
    """The shadow is preferred until 300 ms; its not_sampled skip ends that stage."""
    policy = parse_policy(
        policy_doc(
            models=["shadow", "fast"],
            stages=[
                {"until_ms": 300, "accept": ["shadow"]},
                {"until_ms": "deadline", "accept": ["fast"]},
            ],
        ),
        "test",
    )
    item = next(
        r
        for r in (req(i) for i in range(100))
        if not in_sample("shadow", r.message.request_id, 0.25)
    )
    _, (skip,) = run(_shadow(Scripted()), [item])
    fast = score_for(item.message, model="fast", output="fast-out")
    waiting, sampled_out = Mailbox(item.message, 0.0, 1000.0), Mailbox(item.message, 0.0, 1000.0)
    waiting.add(fast, 20.0)
    sampled_out.add(skip, 5.0)
    sampled_out.add(fast, 20.0)

    assert decide(waiting, policy, 20.0) is None  # a silent shadow: the stage waits
    verdict = decide(sampled_out, policy, 20.0)
    assert verdict is not None
    assert (verdict.chosen_model, verdict.reason) == ("fast", "fallback:1")


def test_a_replay_aimed_at_the_sampled_model_is_always_scored() -> None:
    """``rdv replay --model shadow`` asks for shadow's score of every replayed request."""
    batch = []
    for i in range(40):
        item = req(i)
        env = item.message.model_copy(
            update={"attributes": {REPLAY: "try-1", REPLAY_OF: f"old-{i}", REPLAY_MODEL: "shadow"}}
        )
        batch.append(Inbound(item.record, env))
    model = Scripted()

    _, scores = run(_shadow(model), batch)

    assert [s.status for s in scores] == [ScoreStatus.OK] * 40
    assert model.batches == [[item.message.payload for item in batch]]
