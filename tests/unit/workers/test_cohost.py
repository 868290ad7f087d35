"""Co-hosted models without a broker: every model scores each batch, in its own batch
size; the set's consumer group; what may not share a process."""

from __future__ import annotations

import pytest

from services.common.codec import decode
from services.common.errors import ConfigError
from services.common.loop import Context
from services.common.messages import Score
from services.common.spec import ModelSpec, parse_inline
from services.workers.cohost import CoHosted, check_cohosted, cohost_group_id
from services.workers.worker import ModelWorker
from tests.unit.workers.test_worker import Scripted, StepClock, req


class Generative(Scripted):
    generative = True  # as the chat runtime says of itself


def spec(name: str, endpoints: str = "demo", max_size: int = 32) -> ModelSpec:
    return parse_inline(
        f"echo:name={name},role=challenger,endpoints={endpoints},max_size={max_size}"
    )


def test_every_model_scores_the_batch_in_pieces_of_its_own_size() -> None:
    small, large = Scripted(), Scripted()
    workers = [
        ModelWorker(spec("small", max_size=2), small, "scores", clock=StepClock()),
        ModelWorker(spec("large", endpoints="demo+other"), large, "scores", clock=StepClock()),
    ]
    batch = [req(1), req(2), req("x", endpoint="other"), req(3), req(4)]
    ctx = Context()

    CoHosted(workers).process(batch, ctx)

    assert small.batches == [[1, 2], [3], [4]]  # "other" is not small's endpoint
    assert large.batches == [[1, 2, "x", 3, 4]]
    scores = [(decode(out.value, Score), sources) for out, sources in ctx.emits]
    assert [(s.model, s.output) for s, _ in scores] == [
        ("small", 1),
        ("small", 2),
        ("small", 3),
        ("small", 4),
        ("large", 1),
        ("large", 2),
        ("large", "x"),
        ("large", 3),
        ("large", 4),
    ]
    by_request = {item.message.request_id: item.record for item in batch}
    assert all(sources == (by_request[s.request_id],) for s, sources in scores)


def test_every_model_ticks_and_the_set_reports_the_first_ones_tick() -> None:
    workers = [ModelWorker(spec(n), Scripted(), "scores") for n in ("a", "b")]
    hosted = CoHosted(workers)
    assert hosted.last_tick_mono_ms is None

    hosted.tick(0.0, Context())

    assert all(w.last_tick_mono_ms is not None for w in workers)
    assert hosted.last_tick_mono_ms == workers[0].last_tick_mono_ms


def test_a_set_has_its_own_group_and_a_lone_model_keeps_its_own() -> None:
    assert cohost_group_id([spec("fast")]) == "rdv.model.fast"
    assert cohost_group_id([spec("b"), spec("a")]) == "rdv.models.a+b"
    assert cohost_group_id([spec("a"), spec("b")]) == cohost_group_id([spec("b"), spec("a")])


def test_one_model_twice_or_a_generative_model_in_a_set_is_refused() -> None:
    echo, chat = Scripted(), Generative()
    with pytest.raises(ConfigError, match="cannot host one model twice"):
        check_cohosted([(spec("a"), echo), (spec("a"), echo)])
    with pytest.raises(ConfigError, match=r"chat.*process of its own"):
        check_cohosted([(spec("a"), echo), (spec("chat"), chat)])
    check_cohosted([(spec("chat"), chat)])  # alone it is fine
    with pytest.raises(ValueError, match="at least one"):
        CoHosted([])
