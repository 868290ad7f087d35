"""The worker's processor without a broker: batching, deadlines, errors, timings, lag."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest
from prometheus_client import REGISTRY
from pydantic import JsonValue

from services.common.codec import decode, encode
from services.common.kafka import Record
from services.common.loop import Context, Inbound
from services.common.messages import ErrorBody, RequestEnvelope, Role, Score, ScoreStatus
from services.common.spec import ModelSpec, parse_inline
from services.workers.runtime import ModelRuntime, Prediction, PredictionError
from services.workers.worker import ModelWorker
from tests.factories import request

NOW = 1_700_000_000_000.0
_offsets = itertools.count()


class Scripted(ModelRuntime):
    """Answers with ``answer(payloads)``; remembers every batch it was given."""

    def __init__(self, answer: object = None) -> None:
        super().__init__({})
        self.batches: list[list[JsonValue]] = []
        self.answer = answer

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        self.batches.append(list(payloads))
        if isinstance(self.answer, Exception):
            raise self.answer
        if callable(self.answer):
            result: list[Prediction] = self.answer(payloads)
            return result
        return list(payloads)


class StepClock:
    """Epoch ms that advance by ``step`` on every reading."""

    def __init__(self, start: float = NOW, step: float = 1.0) -> None:
        self.now = start
        self.step = step
        self.readings: list[float] = []

    def __call__(self) -> float:
        value = self.now
        self.readings.append(value)
        self.now += self.step
        return value


def spec(name: str = "m1", endpoints: str = "demo") -> ModelSpec:
    return parse_inline(f"echo:name={name},role=challenger,version=7,endpoints={endpoints}")


def worker(model: ModelRuntime, clock: StepClock | None = None, **kw: object) -> ModelWorker:
    return ModelWorker(spec(), model, "scores", clock=clock or StepClock(), **kw)  # type: ignore[arg-type]


def req(
    payload: JsonValue, *, endpoint: str = "demo", deadline_epoch_ms: float = NOW + 5000
) -> Inbound:
    base = request(payload, endpoint=endpoint)
    env = RequestEnvelope.model_validate(
        {
            **base.model_dump(),
            "created_ms": int(NOW) - 60_000,
            "deadline_ms": int(deadline_epoch_ms),
        }
    )
    return Inbound(
        Record("rdv.requests", 0, next(_offsets), env.request_id.encode(), encode(env)), env
    )


def run(w: ModelWorker, batch: list[Inbound]) -> tuple[Context, list[Score]]:
    ctx = Context()
    w.process(batch, ctx)
    return ctx, [decode(out.value, Score) for out, _ in ctx.emits]


def sample(name: str, model: str = "m1", **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model, **labels}) or 0.0


def test_each_request_gets_an_ok_score_keyed_by_request_id_with_its_source() -> None:
    batch = [req({"x": 1}), req("two"), req([3])]
    model = Scripted()

    ctx, scores = run(worker(model), batch)

    assert model.batches == [[{"x": 1}, "two", [3]]]  # one predict call for the batch
    assert [s.output for s in scores] == [{"x": 1}, "two", [3]]
    assert {(s.status, s.model, s.model_version, s.role) for s in scores} == {
        (ScoreStatus.OK, "m1", "7", Role.CHALLENGER)
    }
    for (out, source), item in zip(ctx.emits, batch, strict=True):
        assert out.topic == "scores"
        assert out.key == item.message.request_id.encode()
        assert source == (item.record,)  # the offset waits for the score's acknowledgement
    for score, item in zip(scores, batch, strict=True):  # a copy of the request, no payload
        assert score.request == item.message.header()
        assert score.request.envelope(score.request_id, score.endpoint) == (
            item.message.model_copy(update={"payload": None})
        )


def test_expired_requests_are_skipped_without_predicting() -> None:
    late, live = req("late", deadline_epoch_ms=NOW - 1), req("live")
    at_deadline = req("edge", deadline_epoch_ms=NOW)  # "has passed" includes exactly now
    model = Scripted()

    _, scores = run(worker(model), [late, live, at_deadline])

    assert model.batches == [["live"]]
    by_id = {s.request_id: s for s in scores}
    for skipped in (late, at_deadline):
        score = by_id[skipped.message.request_id]
        assert (score.status, score.output, score.error) == (ScoreStatus.SKIPPED, None, None)
        assert score.timings.received_ms == score.timings.finished_ms == NOW
    assert by_id[live.message.request_id].status is ScoreStatus.OK


def test_a_batch_of_only_expired_requests_never_calls_the_model() -> None:
    model = Scripted()
    _, scores = run(worker(model), [req(1, deadline_epoch_ms=NOW - 100)])
    assert model.batches == []
    assert [s.status for s in scores] == [ScoreStatus.SKIPPED]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (
            RuntimeError("CUDA out of memory"),
            ErrorBody(code="model_error", message="RuntimeError: CUDA out of memory"),
        ),
        (
            PredictionError("weights missing"),
            ErrorBody(code="prediction_failed", message="weights missing"),
        ),
    ],
)
def test_a_failing_batch_gives_every_request_an_error_score(
    raised: Exception, expected: ErrorBody
) -> None:
    batch = [req(1), req(2), req(3)]

    ctx, scores = run(worker(Scripted(raised)), batch)

    assert [(s.status, s.error, s.output) for s in scores] == [
        (ScoreStatus.ERROR, expected, None)
    ] * 3
    assert [src for _, src in ctx.emits] == [(b.record,) for b in batch]


def test_a_per_item_prediction_error_fails_only_that_request() -> None:
    def answer(payloads: list[JsonValue]) -> list[Prediction]:
        return [PredictionError(f"cannot score {p}") if p == "bad" else p for p in payloads]

    _, scores = run(worker(Scripted(answer)), [req("a"), req("bad"), req("c")])

    assert [(s.status, s.output) for s in scores] == [
        (ScoreStatus.OK, "a"),
        (ScoreStatus.ERROR, None),
        (ScoreStatus.OK, "c"),
    ]
    assert scores[1].error == ErrorBody(code="prediction_failed", message="cannot score bad")


def test_a_runtime_returning_the_wrong_number_of_outputs_fails_the_batch() -> None:
    _, scores = run(worker(Scripted(lambda p: p[:1])), [req("a"), req("b")])
    assert {s.status for s in scores} == {ScoreStatus.ERROR}
    assert scores[0].error is not None
    assert scores[0].error.code == "prediction_failed"
    assert "1 outputs for 2 requests" in scores[0].error.message


def test_an_output_that_is_not_json_becomes_an_error_score() -> None:
    _, scores = run(worker(Scripted(lambda p: [float("nan"), p[1]])), [req("a"), req("b")])
    assert [s.status for s in scores] == [ScoreStatus.ERROR, ScoreStatus.OK]
    assert scores[0].error is not None
    assert scores[0].error.code == "invalid_output"
    assert "not valid JSON" in scores[0].error.message


def test_requests_for_other_endpoints_are_ignored() -> None:
    model = Scripted()
    ctx, scores = run(worker(model), [req("a", endpoint="other"), req("b"), req("c", endpoint="x")])
    assert model.batches == [["b"]]
    assert [s.output for s in scores] == ["b"]
    assert len(ctx.emits) == 1


def test_a_model_serving_several_endpoints_scores_each_of_them() -> None:
    model = Scripted()
    w = ModelWorker(spec(endpoints="demo+chat"), model, "scores", clock=StepClock())
    _, scores = run(w, [req(1, endpoint="chat"), req(2), req(3, endpoint="other")])
    assert [(s.endpoint, s.output) for s in scores] == [("chat", 1), ("demo", 2)]


def test_timings_are_received_then_started_then_finished() -> None:
    clock = StepClock(step=10.0)

    _, scores = run(worker(Scripted(), clock), [req(1), req(2), req(3, deadline_epoch_ms=NOW - 1)])

    received, started, finished = clock.readings
    assert received < started < finished
    ok = [s for s in scores if s.status is ScoreStatus.OK]
    assert {s.timings.model_dump_json() for s in ok} == {
        f'{{"received_ms":{received},"started_ms":{started},"finished_ms":{finished}}}'
    }
    skipped = next(s for s in scores if s.status is ScoreStatus.SKIPPED)
    assert skipped.timings.started_ms == skipped.timings.received_ms == received


def test_a_wall_clock_stepping_back_still_gives_ordered_timings() -> None:
    clock = StepClock(step=-50.0)
    _, scores = run(worker(Scripted(), clock), [req(1)])
    t = scores[0].timings
    assert t.received_ms <= t.started_ms <= t.finished_ms


def test_counters_count_scores_by_outcome() -> None:
    name = "counted"
    model = Scripted(lambda p: [PredictionError("x") if v == "bad" else v for v in p])
    w = ModelWorker(spec(name), model, "scores", clock=StepClock())
    before = {m: sample(f"rdv_worker_{m}_total", name) for m in ("scored", "errors", "skipped")}

    run(w, [req("a"), req("bad"), req("b"), req("late", deadline_epoch_ms=NOW - 1)])

    after = {m: sample(f"rdv_worker_{m}_total", name) for m in ("scored", "errors", "skipped")}
    assert {m: after[m] - before[m] for m in after} == {"scored": 2, "errors": 1, "skipped": 1}
    assert sample("rdv_worker_batch_size_count", name) >= 1
    assert sample("rdv_worker_predict_seconds_count", name) >= 1


def test_lag_is_refreshed_at_most_once_per_interval() -> None:
    calls: list[int] = []
    lags: list[Mapping[tuple[str, int], int]] = [
        {("rdv.requests", 0): 5, ("rdv.requests", 3): 2},
        {("rdv.requests", 3): 0},  # partition 0 was given to another replica
    ]

    def lag() -> Mapping[tuple[str, int], int]:
        calls.append(1)
        return lags[min(len(calls), len(lags)) - 1]

    w = ModelWorker(spec("lagged"), Scripted(), "scores", lag=lag, lag_interval_ms=1000)

    for now in (NOW, NOW + 400, NOW + 999):
        w.tick(now, Context())
    assert len(calls) == 1
    assert sample("rdv_worker_consumer_lag", "lagged", partition="0") == 5
    assert sample("rdv_worker_consumer_lag", "lagged", partition="3") == 2

    w.tick(NOW + 1000, Context())
    assert len(calls) == 2
    assert (
        REGISTRY.get_sample_value("rdv_worker_consumer_lag", {"model": "lagged", "partition": "0"})
        is None
    )
    assert sample("rdv_worker_consumer_lag", "lagged", partition="3") == 0
    assert w.last_tick_mono_ms is not None


def _replayed(payload: JsonValue, model: str | None) -> Inbound:
    item = req(payload)
    attributes = {"replay": "r1", "replay_of": "orig"} | ({"replay_model": model} if model else {})
    env = item.message.model_copy(update={"attributes": attributes})
    return Inbound(item.record, env)


def test_a_replay_for_another_model_is_not_scored() -> None:
    model = Scripted()
    _, scores = run(
        worker(model), [_replayed("mine", "m1"), _replayed("theirs", "m2"), _replayed("all", None)]
    )
    assert [s.output for s in scores] == ["mine", "all"]


def test_a_backfilling_worker_scores_expired_requests() -> None:
    model = Scripted()
    w = ModelWorker(spec(), model, "scores", clock=StepClock(), score_expired=True)
    _, scores = run(w, [req("old", deadline_epoch_ms=NOW - 1000), req("new")])
    assert [(s.output, s.status) for s in scores] == [
        ("old", ScoreStatus.OK),
        ("new", ScoreStatus.OK),
    ]


def test_a_request_delivered_again_is_scored_again_never_failed() -> None:
    """Batched and OOD runtimes keep no state per request: a redelivered request (the
    same record after a rewind, or a duplicate) gets an ok score again; the rendezvous
    keeps the first score of each model."""
    first = req("again")
    duplicate = Inbound(
        Record("rdv.requests", 0, next(_offsets), first.record.key, first.record.value),
        first.message,
    )
    w = worker(Scripted())
    _, before = run(w, [first])
    ctx, after = run(w, [first, duplicate])
    assert [s.status for s in before + after] == [ScoreStatus.OK] * 3
    assert [src for _, src in ctx.emits] == [(first.record,), (duplicate.record,)]
