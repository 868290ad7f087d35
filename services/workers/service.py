"""One model worker process: its loaded model (or several co-hosted ones), its consumer
group on the requests topic, the shared poll loop, and what the ops server asks (ready,
healthy)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from services.common.clock import mono_ms
from services.common.codec import decode
from services.common.kafka import (
    Consumer,
    Producer,
    batched_fetch,
    consumer_config,
    producer_config,
)
from services.common.loop import RunStats, StreamRunner
from services.common.messages import RequestEnvelope, Role
from services.common.settings import KafkaSettings
from services.common.spec import ModelSpec
from services.common.topics import Topics
from services.workers.cohost import CoHosted, check_cohosted, cohost_group_id
from services.workers.runtime import ModelRuntime
from services.workers.settings import WorkerSettings
from services.workers.worker import ModelWorker

log = logging.getLogger("rdv.worker")


def decode_request(data: bytes | None) -> RequestEnvelope:
    return decode(data, RequestEnvelope)


class WorkerService:
    """Loads the model(s), scores requests until stopped, unloads them."""

    def __init__(
        self,
        *,
        spec: ModelSpec,
        model: ModelRuntime,
        consumer: Consumer,
        producer: Producer,
        topics: Topics,
        settings: WorkerSettings,
        cohosted: Sequence[tuple[ModelSpec, ModelRuntime]] = (),
    ) -> None:
        """``cohosted``: more models this process serves from the same consumer
        (services.workers.cohost)."""
        self.spec = spec
        self.model = model
        self.hosted = [(spec, model), *cohosted]
        check_cohosted(self.hosted)  # so a generative model is always alone
        specs = [s for s, _ in self.hosted]
        self.consumer = consumer
        worker = ModelWorker
        if getattr(model, "generative", False):  # token by token: continuous batching
            from services.workers.chat import ChatWorker  # noqa: PLC0415

            worker = ChatWorker
        workers = [
            worker(
                s,
                m,
                topics.scores,
                lag=consumer.lag,
                lag_interval_ms=settings.lag_interval_s * 1000.0,
                score_expired=settings.score_expired,
            )
            for s, m in self.hosted
        ]
        self.processor = workers[0] if len(workers) == 1 else CoHosted(workers)
        name = "+".join(s.name for s in specs)
        self.runner = StreamRunner(
            service=f"worker.{name}",
            consumer=consumer,
            producer=producer,
            decoders={topics.requests: decode_request},
            processor=self.processor,
            dead_letter_topic=topics.dead_letters,
            batch_size=max(s.batch.max_size for s in specs),
            poll_timeout_s=settings.idle_poll_ms / 1000.0,  # a record ends the wait at once
            # then more, up to this long (the most urgent model's window when co-hosted)
            batch_linger_s=min(s.batch.max_wait_ms for s in specs) / 1000.0,
            flush_timeout_s=settings.flush_timeout_s,
            busy=lambda: bool(getattr(self.processor, "busy", False)),
        )
        self._stall_ms = settings.stall_timeout_s * 1000.0
        self._nice = settings.nice

    def ready(self) -> bool:
        """Every hosted model is loaded and the group gave this replica partitions."""
        try:
            return all(m.ready for _, m in self.hosted) and self.runner.ready
        except RuntimeError:  # the assignment changed while it was read (a rebalance)
            return False

    def healthy(self) -> bool:
        """The loop turned recently (or has not started yet: the model is loading)."""
        last = self.processor.last_tick_mono_ms
        return last is None or mono_ms() - last < self._stall_ms

    def stop(self) -> None:
        """Finish the current batch, then shut down (safe from signal handlers)."""
        self.runner.stop()

    def run(
        self, *, max_records: int | None = None, idle_timeout_s: float | None = None
    ) -> RunStats:
        """Load the model(s), run the loop (see ``StreamRunner.run``), unload them.
        The consumer is closed in every case."""
        if self._nice:  # this thread runs the model: it, and the threads it starts
            os.nice(self._nice)
        loaded: list[ModelRuntime] = []
        try:
            for spec, model in self.hosted:
                started = time.monotonic()
                model.load()
                loaded.append(model)
                log.info(
                    "model loaded",
                    extra={
                        "model": spec.name,
                        "load_s": round(time.monotonic() - started, 3),
                        "sample": spec.sample,
                    },
                )
            return self.runner.run(max_records=max_records, idle_timeout_s=idle_timeout_s)
        finally:
            if len(loaded) < len(self.hosted):  # a load failed: the loop never ran
                self.consumer.close()
            for model in loaded:
                model.unload()


OFF_ANSWER_PATH = frozenset({Role.CANARY, Role.DECOY})
"""Roles whose scores never answer a client (docs/architecture.md, "Roles"): they may
read and write in batches (WorkerSettings.off_path_wait_ms)."""


def client_overrides(
    specs: Sequence[ModelSpec], settings: WorkerSettings
) -> tuple[dict[str, str], dict[str, str]]:
    """The worker's own consumer and producer properties: where a new group starts,
    batched reads and writes when every model it hosts is off the answer path, and,
    when it hosts several, a linger that a full set of scores cuts short (their scores
    of a request share one produce request)."""
    reading: dict[str, str] = {"auto.offset.reset": settings.auto_offset_reset}
    off_path = all(s.role in OFF_ANSWER_PATH for s in specs)
    if not off_path or settings.off_path_wait_ms == 0:
        if len(specs) == 1 or settings.cohost_linger_ms == 0:
            return reading, {}
        # a batch of the set's size is full: it leaves without waiting out the linger
        linger = {"linger.ms": f"{settings.cohost_linger_ms:g}"}
        return reading, linger | {"batch.num.messages": str(len(specs))}
    linger_ms = settings.off_path_wait_ms // 10
    return reading | batched_fetch(settings.off_path_wait_ms), {"linger.ms": str(linger_ms)}


def build_worker(
    *,
    kafka: KafkaSettings,
    settings: WorkerSettings,
    spec: ModelSpec,
    model: ModelRuntime,
    topics: Topics,
    cohosted: Sequence[tuple[ModelSpec, ModelRuntime]] = (),
) -> WorkerService:
    """A worker whose consumer group is ``<topic prefix>rdv.model.<name>`` (with
    co-hosted models, ``services.workers.cohost.cohost_group_id``): every model sees
    every request; replicas of one model (or of one set) share its partitions."""
    specs = [spec, *(s for s, _ in cohosted)]
    client_id = "rdv-worker-" + "+".join(s.name for s in specs)
    reading, writing = client_overrides(specs, settings)
    consumer = Consumer(
        consumer_config(kafka, kafka.topic_prefix + cohost_group_id(specs), client_id, reading)
    )
    return WorkerService(
        spec=spec,
        model=model,
        consumer=consumer,
        producer=Producer(producer_config(kafka, client_id) | writing),
        topics=topics,
        settings=settings,
        cohosted=cohosted,
    )
