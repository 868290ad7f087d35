"""The reply side of the gateway without a broker: the pending table, the Kafka bus's
listener thread over fake clients, broker health, settings and imports."""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.common.codec import encode
from services.common.errors import DeliveryError, KafkaUnavailableError, MessageError
from services.common.kafka import Outbound, Record
from services.common.messages import Reply
from services.gateway import kafka_bus
from services.gateway.bus import BrokerHealth
from services.gateway.kafka_bus import KafkaBus
from services.gateway.pending import PendingReplies
from services.gateway.settings import DEFAULT_POLICIES, GatewaySettings


def reply(request_id: str, output: str = "out") -> Reply:
    return Reply(request_id=request_id, model="m", reason="champion", output=output, decided_ms=1)


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("rdv_gateway_dropped_replies_total", {"reason": reason}) or 0


def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    until = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > until:
            return False
        time.sleep(0.005)
    return True


# --- the pending table -------------------------------------------------------------


def test_a_reply_from_another_thread_resolves_its_request() -> None:
    async def scenario() -> Reply:
        pending = PendingReplies()
        pending.bind(asyncio.get_running_loop())
        fut = pending.open("r1")
        threading.Thread(target=pending.deliver, args=(encode(reply("r1", "hi")),)).start()
        try:
            return await asyncio.wait_for(fut, 5)
        finally:
            pending.close("r1")
            assert len(pending) == 0

    assert asyncio.run(scenario()).output == "hi"


def test_unmatched_replies_are_dropped_by_reason() -> None:
    before = {r: dropped(r) for r in ("unknown", "finished", "undecodable")}

    async def scenario() -> None:
        pending = PendingReplies()
        pending.bind(asyncio.get_running_loop())
        waiting = pending.open("waiting")
        pending.open("done")
        pending.close("done")
        pending.deliver(encode(reply("stranger")))
        pending.deliver(encode(reply("done")))
        for junk in (b'{"v": 1, "kind": "score"}', None):
            with pytest.raises(MessageError):
                pending.deliver(junk)  # the bus dead-letters what raises here
        pending.deliver(encode(reply("waiting")))
        assert (await asyncio.wait_for(waiting, 5)).request_id == "waiting"
        pending.deliver(encode(reply("waiting")))  # a duplicate while still open
        await asyncio.sleep(0)  # let the loop run the scheduled resolution
        pending.cancel_all()

    asyncio.run(scenario())

    assert dropped("unknown") == before["unknown"] + 1
    assert dropped("finished") == before["finished"] + 2
    assert dropped("undecodable") == before["undecodable"] + 2


def test_a_failure_reaches_only_its_request() -> None:
    async def scenario() -> None:
        pending = PendingReplies()
        pending.bind(asyncio.get_running_loop())
        lost, fine = pending.open("lost"), pending.open("fine")
        pending.fail("lost", DeliveryError("gone"))
        pending.fail("nobody", DeliveryError("ignored"))
        with pytest.raises(DeliveryError):
            await asyncio.wait_for(lost, 5)
        assert not fine.done()
        pending.cancel_all()
        assert fine.cancelled()

    asyncio.run(scenario())


def test_the_table_needs_a_loop_and_unique_ids() -> None:
    pending = PendingReplies()
    with pytest.raises(RuntimeError, match="not bound"):
        pending.open("r")

    async def scenario() -> None:
        pending.bind(asyncio.get_running_loop())
        pending.open("r")
        with pytest.raises(ValueError, match="waiting already"):
            pending.open("r")
        pending.cancel_all()

    asyncio.run(scenario())
    before = dropped("unknown")
    pending.deliver(encode(reply("r")))  # the loop is closed: counted, not raised
    assert dropped("unknown") == before + 1


# --- the Kafka bus over fake clients ---------------------------------------------


class FakeConsumer:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.records: queue.Queue[Record] = queue.Queue()
        self.assigned: tuple[str, int] | None = None
        self.closed = False

    def assign_at_end(self, topic: str, partition: int, timeout_s: float = 10.0) -> int:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("KafkaError{code=_TRANSPORT}")  # what the client raises
        self.assigned = (topic, partition)
        return 42

    def consume(self, max_records: int, timeout_s: float) -> list[Record]:
        out: list[Record] = []
        try:
            out.append(
                self.records.get(timeout=timeout_s) if timeout_s else self.records.get_nowait()
            )
            while len(out) < max_records:
                out.append(self.records.get_nowait())
        except queue.Empty:
            pass
        return out

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    def __init__(self) -> None:
        self.reports: list[Callable[[str | None], None]] = []
        self.flushed_with: float | None = None

    def produce(self, out: Outbound, on_delivery: Callable[[str | None], None]) -> None:
        self.reports.append(on_delivery)

    def poll(self, timeout_s: float = 0.0) -> int:
        return 0

    def flush(self, timeout_s: float) -> int:
        self.flushed_with = timeout_s
        return 0


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_bus, "RETRY_S", 0.01)
    monkeypatch.setattr(kafka_bus, "PROBE_EVERY_S", 0.01)


def make_bus(
    consumer: FakeConsumer, producer: FakeProducer, probe: Callable[[], object] | None = None
) -> tuple[KafkaBus, BrokerHealth]:
    health = BrokerHealth()
    bus = KafkaBus(
        producer,  # type: ignore[arg-type]
        consumer,  # type: ignore[arg-type]
        topic="replies",
        partition=3,
        health=health,
        probe=probe,
    )
    return bus, health


def test_the_listener_positions_then_hands_over_every_record() -> None:
    consumer, producer = FakeConsumer(failures=2), FakeProducer()
    bus, _ = make_bus(consumer, producer)
    seen: list[bytes | None] = []
    assert not bus.ready()

    bus.start(seen.append)
    try:
        assert bus.wait_ready(5)
        assert consumer.assigned == ("replies", 3)
        for offset, value in enumerate([b"a", None, b"c"]):
            consumer.records.put(Record("replies", 3, offset, b"k", value))
        assert wait_until(lambda: len(seen) == 3)
        assert seen == [b"a", None, b"c"]
    finally:
        bus.close(2.5)
    assert not bus.ready()
    assert consumer.closed
    assert producer.flushed_with == 2.5


def test_a_failing_sink_does_not_stop_the_listener() -> None:
    consumer = FakeConsumer()
    bus, _ = make_bus(consumer, FakeProducer())
    seen: list[bytes | None] = []

    def sink(value: bytes | None) -> None:
        if value == b"boom":
            raise ValueError("boom")
        seen.append(value)

    bus.start(sink)
    try:
        consumer.records.put(Record("replies", 3, 0, None, b"boom"))
        consumer.records.put(Record("replies", 3, 1, None, b"fine"))
        assert wait_until(lambda: seen == [b"fine"])
        assert bus.ready()
    finally:
        bus.close(1)


def test_all_brokers_down_until_a_probe_answers() -> None:
    answers = iter([KafkaUnavailableError("still down"), None])

    def probe() -> None:
        outcome = next(answers, None)
        if outcome is not None:
            raise outcome

    consumer = FakeConsumer()
    bus, health = make_bus(consumer, FakeProducer(), probe)
    bus.start(lambda _v: None)
    try:
        assert bus.wait_ready(5)
        health.on_error("_ALL_BROKERS_DOWN", True)
        assert not bus.ready()
        assert wait_until(bus.ready)
    finally:
        bus.close(1)


def test_an_acknowledged_request_clears_the_down_flag() -> None:
    producer = FakeProducer()
    bus, health = make_bus(FakeConsumer(), producer)
    reports: list[str | None] = []
    health.on_error("_ALL_BROKERS_DOWN", True)
    health.on_error("_TRANSPORT", False)

    bus.produce(Outbound("requests", b"k", b"v"), reports.append)
    producer.reports[0](None)

    assert reports == [None]
    assert not health.down
    bus.close(1)


def test_closing_a_bus_that_never_started_closes_its_consumer() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    bus, _ = make_bus(consumer, producer)

    bus.close(0.5)

    assert consumer.closed
    assert producer.flushed_with == 0.5


# --- settings and imports ----------------------------------------------------------


def test_settings_come_from_rdv_gateway_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RDV_GATEWAY_PORT", "9001")
    monkeypatch.setenv("RDV_GATEWAY_REPLY_PARTITION", "4")
    monkeypatch.setenv("RDV_GATEWAY_MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("RDV_GATEWAY_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("RDV_GATEWAY_GRACE_MS", "15")
    monkeypatch.setenv("RDV_GATEWAY_POLICIES", str(tmp_path))

    s = GatewaySettings()

    assert (s.port, s.reply_partition, s.max_in_flight) == (9001, 4, 7)
    assert (s.max_body_bytes, s.grace_ms, s.policies) == (1000, 15, tmp_path)


def test_settings_defaults() -> None:
    s = GatewaySettings()

    assert (s.host, s.port, s.reply_partition, s.grace_ms) == ("127.0.0.1", 8080, 0, 30)
    assert s.policies == DEFAULT_POLICIES
    assert DEFAULT_POLICIES.parts[-2:] == ("deploy", "policies")


def test_the_gateway_process_does_not_import_torch() -> None:
    code = "import sys, services.gateway.__main__; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
