"""One model worker: a loaded model, its consumer group on the requests topic, the
shared poll loop, and what the ops server asks (ready, healthy)."""

from __future__ import annotations

import logging
import os
import time

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
from services.workers.runtime import ModelRuntime
from services.workers.settings import WorkerSettings
from services.workers.worker import ModelWorker

log = logging.getLogger("rdv.worker")


def decode_request(data: bytes | None) -> RequestEnvelope:
    return decode(data, RequestEnvelope)


class WorkerService:
    """Loads the model, scores requests until stopped, unloads it."""

    def __init__(
        self,
        *,
        spec: ModelSpec,
        model: ModelRuntime,
        consumer: Consumer,
        producer: Producer,
        topics: Topics,
        settings: WorkerSettings,
    ) -> None:
        self.spec = spec
        self.model = model
        self.consumer = consumer
        worker = ModelWorker
        if getattr(model, "generative", False):  # token by token: continuous batching
            from services.workers.chat import ChatWorker  # noqa: PLC0415

            worker = ChatWorker
        self.processor = worker(
            spec,
            model,
            topics.scores,
            lag=consumer.lag,
            lag_interval_ms=settings.lag_interval_s * 1000.0,
            score_expired=settings.score_expired,
        )
        self.runner = StreamRunner(
            service=f"worker.{spec.name}",
            consumer=consumer,
            producer=producer,
            decoders={topics.requests: decode_request},
            processor=self.processor,
            dead_letter_topic=topics.dead_letters,
            batch_size=spec.batch.max_size,
            poll_timeout_s=0.02,  # the first request of a batch is taken at once
            batch_linger_s=spec.batch.max_wait_ms / 1000.0,  # then more, up to this long
            flush_timeout_s=settings.flush_timeout_s,
            busy=lambda: bool(getattr(self.processor, "busy", False)),
        )
        self._stall_ms = settings.stall_timeout_s * 1000.0
        self._nice = settings.nice

    def ready(self) -> bool:
        """The model is loaded and the group gave this replica partitions."""
        try:
            return self.model.ready and self.runner.ready
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
        """Load the model, run the loop (see ``StreamRunner.run``), unload the model.
        The consumer is closed in every case."""
        if self._nice:  # this thread runs the model: it, and the threads it starts
            os.nice(self._nice)
        started = time.monotonic()
        try:
            self.model.load()
        except BaseException:
            self.consumer.close()
            raise
        log.info(
            "model loaded",
            extra={
                "model": self.spec.name,
                "load_s": round(time.monotonic() - started, 3),
                "sample": self.spec.sample,
            },
        )
        try:
            return self.runner.run(max_records=max_records, idle_timeout_s=idle_timeout_s)
        finally:
            self.model.unload()


OFF_ANSWER_PATH = frozenset({Role.CANARY, Role.DECOY})
"""Roles whose scores never answer a client (docs/architecture.md, "Roles"): they may
read and write in batches (WorkerSettings.off_path_wait_ms)."""


def client_overrides(
    spec: ModelSpec, settings: WorkerSettings
) -> tuple[dict[str, str], dict[str, str]]:
    """The worker's own consumer and producer properties: where a new group starts, and
    batched reads and writes for a model off the answer path."""
    reading: dict[str, str] = {"auto.offset.reset": settings.auto_offset_reset}
    if spec.role not in OFF_ANSWER_PATH or settings.off_path_wait_ms == 0:
        return reading, {}
    linger_ms = settings.off_path_wait_ms // 10
    return reading | batched_fetch(settings.off_path_wait_ms), {"linger.ms": str(linger_ms)}


def build_worker(
    *,
    kafka: KafkaSettings,
    settings: WorkerSettings,
    spec: ModelSpec,
    model: ModelRuntime,
    topics: Topics,
) -> WorkerService:
    """A worker whose consumer group is ``<topic prefix>rdv.model.<name>``: every model
    sees every request; replicas of one model share its partitions."""
    client_id = f"rdv-worker-{spec.name}"
    reading, writing = client_overrides(spec, settings)
    consumer = Consumer(
        consumer_config(kafka, kafka.topic_prefix + spec.group_id, client_id, reading)
    )
    return WorkerService(
        spec=spec,
        model=model,
        consumer=consumer,
        producer=Producer(producer_config(kafka, client_id) | writing),
        topics=topics,
        settings=settings,
    )
