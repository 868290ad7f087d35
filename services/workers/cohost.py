"""Several models in one worker process: one consumer reads each request once, every
model scores it, one producer sends the scores (together, in one produce request).

Each hosted model keeps its own ``ModelWorker`` (its endpoints, sample, batch size,
metrics and scores, with its own name and role), so the rendezvous sees exactly what
separate processes would send. What the models share is the process: one poll loop,
one consumer group (``cohost_group_id``: replicas of the same set share the requests'
partitions), one batch window (the shortest ``max_wait_ms`` of the set, the largest
``max_size``, each model given the batch in pieces of its own size). The models
score each batch one after another in one thread, so a slow model delays the others'
scores: co-host fast models with each other, and give a slow or generative one its own
process (a generative model is refused here).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.errors import ConfigError
from services.common.loop import Context, Inbound
from services.common.spec import ModelSpec
from services.workers.worker import ModelWorker


def cohost_group_id(specs: Sequence[ModelSpec]) -> str:
    """The consumer group of a set of co-hosted models (before the topic prefix): the
    model's own group when it is alone, else one named by the sorted set."""
    if len(specs) == 1:
        return specs[0].group_id
    return "rdv.models." + "+".join(sorted(s.name for s in specs))


def check_cohosted(hosted: Sequence[tuple[ModelSpec, object]]) -> None:
    """Raises ``ConfigError`` unless these (spec, runtime) pairs can share one process."""
    names = [spec.name for spec, _ in hosted]
    if len(set(names)) != len(names):
        raise ConfigError(f"a process cannot host one model twice: {', '.join(names)}")
    chat = [spec.name for spec, model in hosted if getattr(model, "generative", False)]
    if len(hosted) > 1 and chat:
        raise ConfigError(
            f"{', '.join(chat)} generate(s) token by token: a generative model runs in a "
            "process of its own (give it its own --model)"
        )


class CoHosted:
    """A ``services.common.loop.Processor`` that gives each batch to every hosted
    model's ``ModelWorker`` (stateless, so the loop's retry of a failed batch record by
    record is safe: the scores recorded before a failure are dropped with it)."""

    def __init__(self, workers: Sequence[ModelWorker]) -> None:
        if not workers:
            raise ValueError("CoHosted needs at least one worker")
        self.workers = list(workers)

    @property
    def last_tick_mono_ms(self) -> float | None:
        return self.workers[0].last_tick_mono_ms  # every worker ticks in the same turn

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        for worker in self.workers:
            size = worker.spec.batch.max_size
            for start in range(0, len(batch), size):
                worker.process(batch[start : start + size], ctx)

    def tick(self, now_ms: float, ctx: Context) -> None:
        for worker in self.workers:
            worker.tick(now_ms, ctx)
