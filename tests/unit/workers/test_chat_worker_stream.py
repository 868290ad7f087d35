"""The chat worker's deltas for streaming requests, over a scripted engine: one per step
that added text, to the request's return address, best effort; none for the others."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Any

from prometheus_client import REGISTRY

from models.llama.batching import GenerationResult
from services.common.codec import decode, encode
from services.common.kafka import Record
from services.common.loop import Context, Inbound
from services.common.messages import Delta, ReturnAddress, Score, ScoreStatus
from services.common.spec import parse_inline
from services.workers.chat import ChatWorker
from services.workers.chat_runtime import ChatRuntime
from tests.factories import request

_offsets = itertools.count()


class ScriptedChat:
    """Per step: each request's answer so far; a request ends with its last entry."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = script
        self.running: list[str] = []
        self.steps = 0
        self.prompt_tokens_reused = 0  # a runtime without a prompt cache

    def submit(self, _messages: Any, _params: Any, *, deadline: float, request_id: str) -> str:
        self.running.append(request_id)
        return request_id

    def step(self) -> list[GenerationResult]:
        self.steps += 1
        done = [r for r in self.running if len(self.script[r]) == self.steps]
        self.running = [r for r in self.running if r not in done]
        return [_result(r, self.script[r][-1]) for r in done]

    def partial_texts(self, request_ids: Collection[str]) -> dict[str, str]:
        return {r: self.script[r][self.steps - 1] for r in self.running if r in request_ids}

    def token_text(self, token_id: int) -> str:
        return f"<{token_id}>"


def _result(request_id: str, text: str) -> GenerationResult:
    return GenerationResult(request_id, text, (1, 2), "stop", 5, 2, 0.01, 0.1, 20.0)


def _inbound(payload: dict[str, Any], request_id: str) -> Inbound:
    env = request(payload, request_id=request_id, endpoint="chat", deadline_in_ms=60_000)
    env = env.model_copy(update={"return_address": ReturnAddress(topic="rdv.replies", partition=1)})
    return Inbound(
        Record("rdv.requests", 0, next(_offsets), env.request_id.encode(), encode(env)), env
    )


def _payload(stream: bool) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "stream": stream}


def test_a_streaming_request_gets_a_delta_per_step_with_new_text() -> None:
    runtime = ChatRuntime({})
    runtime.chat = ScriptedChat({"s": ["Pa", "Paris", "Paris", "Paris."], "q": ["x", "xy"]})
    spec = parse_inline("llama-chat:name=smol,role=champion,version=1,endpoints=chat")
    worker = ChatWorker(spec, runtime, "rdv.scores")
    sent = REGISTRY.get_sample_value("rdv_worker_stream_deltas_total", {"model": "smol"}) or 0.0

    worker.process([_inbound(_payload(True), "s"), _inbound(_payload(False), "q")], Context())
    deltas: list[Delta] = []
    scores: list[Score] = []
    for _ in range(4):
        ctx = Context()
        worker.tick(0.0, ctx)
        for out in ctx.best_effort:
            assert (out.topic, out.partition, out.key) == ("rdv.replies", 1, b"s")
            deltas.append(decode(out.value, Delta))
        scores += [decode(out.value, Score) for out, _ in ctx.emits]
        assert all(src for _, src in ctx.emits)  # scores still hold their request's offset

    assert [(d.seq, d.offset, d.text, d.finish_reason) for d in deltas] == [
        (0, 0, "Pa", None),
        (1, 2, "ris", None),
        (2, 5, ".", "stop"),  # the last one, with the score
    ]
    assert {d.model for d in deltas} == {"smol"}
    assert sorted((s.request_id, s.status, s.output["text"]) for s in scores) == [  # type: ignore[index,call-overload]
        ("q", ScoreStatus.OK, "xy"),
        ("s", ScoreStatus.OK, "Paris."),
    ]
    after = REGISTRY.get_sample_value("rdv_worker_stream_deltas_total", {"model": "smol"})
    assert after == sent + 3
    assert not worker.busy


def test_prompt_tokens_taken_from_the_runtimes_cache_are_counted() -> None:
    class CachingChat(ScriptedChat):
        def step(self) -> list[GenerationResult]:
            self.prompt_tokens_reused += 24  # as if each step admitted a prompt with a cached start
            return super().step()

    runtime = ChatRuntime({})
    runtime.chat = CachingChat({"c": ["a", "ab", "abc"]})
    spec = parse_inline("llama-chat:name=cached,role=champion,version=1,endpoints=chat")
    worker = ChatWorker(spec, runtime, "rdv.scores")
    labels = {"model": "cached", "kind": "prompt_reused"}
    before = REGISTRY.get_sample_value("rdv_worker_tokens_total", labels) or 0.0
    worker.process([_inbound(_payload(False), "c")], Context())
    for _ in range(3):
        worker.tick(0.0, Context())
    assert REGISTRY.get_sample_value("rdv_worker_tokens_total", labels) == before + 72


def test_a_payload_without_stream_is_not_streamed() -> None:
    runtime = ChatRuntime({})
    runtime.chat = ScriptedChat({"n": ["a", "ab"]})
    spec = parse_inline("llama-chat:name=smol,role=champion,version=1,endpoints=chat")
    worker = ChatWorker(spec, runtime, "rdv.scores")
    worker.process([_inbound({"messages": [{"role": "user", "content": "hi"}]}, "n")], Context())
    ctx = Context()
    worker.tick(0.0, ctx)
    worker.tick(0.0, ctx)
    assert ctx.best_effort == []
    assert len(ctx.emits) == 1


class FailingChat(ScriptedChat):
    """Takes requests, then its step fails; counts how often its engine was reset."""

    def __init__(self, submit_error: Exception | None = None) -> None:
        super().__init__({})
        self.submit_error = submit_error
        self.engine = self
        self.resets = 0

    def submit(self, _messages: Any, _params: Any, *, deadline: float, request_id: str) -> str:
        if self.submit_error is not None:
            raise self.submit_error
        return super().submit(_messages, _params, deadline=deadline, request_id=request_id)

    def step(self) -> list[GenerationResult]:
        raise RuntimeError("the batch broke")

    def reset(self) -> list[str]:
        self.resets += 1
        dropped, self.running = self.running, []
        return dropped


def test_a_failed_step_fails_its_requests_and_resets_the_engine_only() -> None:
    runtime = ChatRuntime({})
    chat = FailingChat()
    runtime.chat = chat
    spec = parse_inline("llama-chat:name=smol,role=champion,version=1,endpoints=chat")
    worker = ChatWorker(spec, runtime, "rdv.scores")
    inbound = [_inbound(_payload(True), "a"), _inbound(_payload(False), "b")]
    worker.process(inbound, Context())

    ctx = Context()
    worker.tick(0.0, ctx)

    scores = [decode(out.value, Score) for out, _ in ctx.emits]
    assert sorted((s.request_id, s.status) for s in scores) == [
        ("a", ScoreStatus.ERROR),
        ("b", ScoreStatus.ERROR),
    ]
    assert all(s.error is not None and "the batch broke" in s.error.message for s in scores)
    assert sorted(r.offset for r in ctx.releases) == sorted(i.record.offset for i in inbound)
    assert chat.resets == 1
    assert runtime.chat is chat  # the loaded model stays: no reload
    assert not worker.busy


def test_a_models_request_error_keeps_its_code_in_the_score() -> None:
    from models.llama.errors import PromptTooLongError  # noqa: PLC0415 - torch

    runtime = ChatRuntime({})
    runtime.chat = FailingChat(submit_error=PromptTooLongError(9000, 8192))
    spec = parse_inline("llama-chat:name=smol,role=champion,version=1,endpoints=chat")
    worker = ChatWorker(spec, runtime, "rdv.scores")
    ctx = Context()
    worker.process([_inbound(_payload(False), "long")], ctx)

    [score] = [decode(out.value, Score) for out, _ in ctx.emits]
    assert score.status is ScoreStatus.ERROR
    assert score.error is not None
    assert score.error.code == "prompt_too_long"
    assert score.error.message.startswith("the prompt has 9000 tokens")


def test_a_request_read_again_while_generating_is_held_not_failed() -> None:
    """Before: the engine refused the id ("already in the engine") and the worker sent
    an invalid_request error score, so the rendezvous counted the model as failed."""

    class RefusingChat(ScriptedChat):
        def submit(self, _m: Any, _p: Any, *, deadline: float, request_id: str) -> str:
            if request_id in self.running:
                raise ValueError(f"request {request_id!r} is already in the engine")
            return super().submit(_m, _p, deadline=deadline, request_id=request_id)

    runtime = ChatRuntime({})
    runtime.chat = RefusingChat({"r": ["a", "ab"]})
    spec = parse_inline("llama-chat:name=smol,role=champion,version=1,endpoints=chat")
    worker = ChatWorker(spec, runtime, "rdv.scores")
    first = _inbound(_payload(False), "r")
    same_again = Inbound(first.record, first.message)  # the same record after a rewind
    duplicate = Inbound(  # the same request at another offset
        Record("rdv.requests", 0, next(_offsets), b"r", first.record.value), first.message
    )

    opened = Context()
    worker.process([first], opened)
    again = Context()
    worker.process([same_again, duplicate], again)
    assert again.emits == []  # no error score
    assert again.holds == [first.record, duplicate.record]
    assert runtime.chat.running == ["r"]  # submitted once

    ticks = [Context(), Context()]
    for ctx in ticks:
        worker.tick(0.0, ctx)
    [(out, sources)] = ticks[1].emits
    score = decode(out.value, Score)
    assert score.status is ScoreStatus.OK
    assert list(sources) == [first.record]
    assert ticks[1].releases == [first.record, duplicate.record]  # each hold released once
    assert not worker.busy
