"""The Kafka bus: one producer for requests and one thread that reads this instance's
reply partition (no consumer group) and serves the producer's delivery reports.

Records of the reply partition: bytes that are no reply, delta or grant go to dead
letters (one each, from service ``gateway``); a reply, delta or grant for a request
this instance is not waiting for (unknown, finished, or an earlier instance's) is
counted in ``rdv_gateway_dropped_replies_total`` / ``..._dropped_stream_records_total``
and dropped, never dead-lettered: after a restart every answer to the previous
instance's requests is such a record. Nothing a record holds stops the listener."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from services.common import tracing
from services.common.errors import MessageError, RendezvousError
from services.common.kafka import (
    Admin,
    Consumer,
    Outbound,
    Producer,
    Record,
    admin_config,
    assigned_reader,
    consumer_config,
    producer_config,
)
from services.common.loop import dead_letter_for
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.gateway.bus import BrokerHealth, DeliveryReport, ReplySink

log = logging.getLogger("rdv.gateway.replies")

POLL_TIMEOUT_S = 0.1  # how long one turn waits for a reply; bounds delivery-report lag
MAX_BATCH = 500
POSITION_TIMEOUT_S = 2.0
RETRY_S = 0.5
PROBE_EVERY_S = 0.5
LOG_EVERY = 20  # while positioning keeps failing, log the 1st, 21st, ... attempt


class KafkaBus:
    """Produces requests and hands every record of the reply partition to a sink."""

    def __init__(
        self,
        producer: Producer,
        consumer: Consumer,
        *,
        topic: str,
        partition: int,
        health: BrokerHealth,
        probe: Callable[[], object] | None = None,
        dead_letters: str | None = None,
        poll_timeout_s: float = POLL_TIMEOUT_S,
    ) -> None:
        """``probe`` asks the cluster for something and raises when no broker answers;
        while the clients report every broker down it runs every PROBE_EVERY_S.
        ``poll_timeout_s``: how long one turn waits for a reply (GatewaySettings.
        reply_poll_ms)."""
        self._poll_timeout_s = poll_timeout_s
        self._producer = producer
        self._consumer = consumer
        self._topic = topic
        self._partition = partition
        self._health = health
        self._probe = probe
        self._dead_letters = dead_letters  # where undecodable replies go (None: dropped)
        self._sink: ReplySink | None = None
        self._stop = threading.Event()
        self._positioned = threading.Event()
        self._next_probe = 0.0
        self._position_failures = 0
        self._thread = threading.Thread(target=self._run, name="gateway-replies", daemon=True)

    def start(self, on_reply: ReplySink) -> None:
        self._sink = on_reply
        self._thread.start()

    def ready(self) -> bool:
        return self._positioned.is_set() and not self._health.down and self._thread.is_alive()

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the reply partition is positioned (or the timeout passes)."""
        return self._positioned.wait(timeout_s) and self.ready()

    def produce(self, out: Outbound, on_delivery: DeliveryReport) -> None:
        def report(error: str | None) -> None:
            if error is None:
                self._health.up()
            on_delivery(error)

        self._producer.produce(out, report)

    def close(self, flush_timeout_s: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        elif self._thread.ident is None:  # never started: the thread did not close it
            self._consumer.close()
        left = self._producer.flush(flush_timeout_s)
        if left:
            log.warning("requests not acknowledged at shutdown", extra={"records": left})

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    if self._positioned.is_set():
                        self._turn()
                    else:
                        self._position()
                except Exception:  # no record stops the listener: log, wait, go on
                    log.exception("reply listener turn failed")
                    self._stop.wait(RETRY_S)
        finally:
            self._consumer.close()

    def _position(self) -> None:
        self._producer.poll(0)
        try:
            offset = self._consumer.assign_at_end(self._topic, self._partition, POSITION_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the wrapper passes the client's own error type
            self._position_failures += 1
            if self._position_failures % LOG_EVERY == 1:
                log.warning(
                    "cannot position on the reply partition",
                    extra={"error": str(exc), "attempts": self._position_failures},
                )
            self._stop.wait(RETRY_S)
            return
        self._health.up()
        self._positioned.set()
        log.info(
            "listening for replies",
            extra={"topic": self._topic, "partition": self._partition, "offset": offset},
        )

    def _turn(self) -> None:
        records = self._consumer.consume(1, self._poll_timeout_s)
        if records:  # more may be waiting: take them without waiting
            records += self._consumer.consume(MAX_BATCH, 0.0)
            self._health.up()
            self._hand_over(records)
        self._producer.poll(0)
        if self._health.down:
            self._probe_broker()

    def _hand_over(self, records: list[Record]) -> None:
        sink = self._sink
        for rec in records:
            if sink is None:
                continue
            try:
                with tracing.receiving(rec):  # a no-op unless on and the record has a context
                    sink(rec.value)
            except MessageError as exc:
                self._dead_letter(rec, exc)
            except Exception:  # one bad record must not stop every reply
                log.exception("reply handling failed", extra={"offset": rec.offset})

    def _dead_letter(self, rec: Record, exc: MessageError) -> None:
        if self._dead_letters is None:
            return
        out = dead_letter_for(rec, exc, "gateway", self._dead_letters)
        try:
            self._producer.produce(out, lambda _err: None)
        except RendezvousError as err:  # a full queue: the record is logged and counted
            log.warning("dead letter not sent", extra={"error": str(err)})

    def _probe_broker(self) -> None:
        now = time.monotonic()
        if self._probe is None or now < self._next_probe:
            return
        self._next_probe = now + PROBE_EVERY_S
        try:
            self._probe()
        except Exception:  # noqa: BLE001 - any failure means: still down
            return
        self._health.up()


def connect(
    kafka: KafkaSettings, topics: Topics, partition: int, poll_timeout_s: float = POLL_TIMEOUT_S
) -> KafkaBus:
    """A Kafka bus for the gateway instance that reads ``partition`` of the replies
    topic; no network call happens before ``start``."""
    health = BrokerHealth()
    client_id = f"rdv-gateway-p{partition}"
    producer = Producer(producer_config(kafka, client_id), on_error=health.on_error)
    consumer = Consumer(
        consumer_config(
            kafka, f"rdv-gateway-{uuid.uuid4().hex}", client_id, defaults=assigned_reader()
        ),
        on_error=health.on_error,
    )
    admin = Admin(admin_config(kafka))
    return KafkaBus(
        producer,
        consumer,
        topic=topics.replies,
        partition=partition,
        health=health,
        probe=lambda: admin.partitions(timeout_s=1.0),
        dead_letters=topics.dead_letters,
        poll_timeout_s=poll_timeout_s,
    )
