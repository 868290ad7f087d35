"""Exactly one reply and one decision per request across rendezvous crashes, on the
real broker: a restart long after the crash, and crashes between the two writes.

A crash is injected in-process: the rendezvous's producer raises ``Crash`` (not an
Exception, so nothing in the loop catches it) at a chosen output, after flushing what
it was given before, as a killed process leaves what it had sent. The loop's consumer
is closed on the way out, as a killed process's group membership lapses."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from services.common.codec import decode, encode, message_key
from services.common.kafka import (
    Outbound,
    Producer,
    committed_offsets,
    consumer_config,
    producer_config,
)
from services.common.loop import StreamRunner
from services.common.messages import Decision, Reply, RequestEnvelope
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.rendezvous.__main__ import build
from services.rendezvous.settings import RendezvousSettings
from tests.factories import request, score_for
from tests.integration.kafka_io import produce_all, read_exactly

DEADLINE_MS = 2500
MARGIN_MS = 100
POLICY = f"""
endpoint: t
deadline_ms: {DEADLINE_MS}
models: [champ]
stages:
  - {{until_ms: deadline, accept: [champ]}}
default:
  error: {{code: deadline_exceeded, message: no answer by the deadline}}
"""


class Crash(BaseException):
    """The process dies here."""


class FaultyProducer(Producer):
    """A real producer that dies at the first output ``dies_at`` matches (after
    flushing everything before it); outputs ``loses`` matches are never sent."""

    def __init__(
        self,
        config: dict[str, str],
        dies_at: Callable[[Outbound], bool],
        loses: Callable[[Outbound], bool] = lambda _out: False,
        send_fatal: bool = False,
    ) -> None:
        super().__init__(config)
        self._dies_at, self._loses, self._send_fatal = dies_at, loses, send_fatal

    def produce(
        self, out: Outbound, on_delivery: Callable[[str | None], None] | None = None
    ) -> None:
        if self._loses(out):
            return
        if self._dies_at(out):
            if self._send_fatal:
                super().produce(out)
            self.flush(10)
            raise Crash(out.topic)
        super().produce(out, on_delivery)


def keyed(topic: str, request_id: str) -> Callable[[Outbound], bool]:
    return lambda out: out.topic == topic and out.key == request_id.encode()


@pytest.fixture
def settings(tmp_path: Path) -> RendezvousSettings:
    policy = tmp_path / "t.yaml"
    policy.write_text(POLICY)
    return RendezvousSettings(
        policies=policy, auto_offset_reset="earliest", ops_port=0, catchup_margin_ms=MARGIN_MS
    )


class Instance:
    """One rendezvous run in a thread; ``crashed`` once its producer died."""

    def __init__(
        self, settings: RendezvousSettings, kafka: KafkaSettings, producer: Producer | None = None
    ) -> None:
        self.runner: StreamRunner = build(settings, kafka, producer)[0]
        self.crashed = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        until = time.monotonic() + 60
        while not self.runner.ready and time.monotonic() < until:
            time.sleep(0.05)  # polling the group join, which has no event to wait on
        assert self.runner.ready, "the rendezvous got no partitions within 60 s"

    def _run(self) -> None:
        try:
            self.runner.run(idle_timeout_s=60)
        except Crash:
            self.crashed.set()

    def wait_crash(self, timeout_s: float = 30) -> None:
        self.thread.join(timeout_s)
        assert self.crashed.is_set(), "the injected fault never fired"

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(30)


def send(kafka: KafkaSettings, topics: Topics, *reqs: RequestEnvelope, scored: bool) -> None:
    """Requests (and a champion score each) on partition 0 of their topics: one
    partition, so an open request holds back the offsets of those after it."""
    out = [Outbound(topics.requests, message_key(r), encode(r), partition=0) for r in reqs]
    produce_all(kafka, out + (scores(topics, reqs) if scored else []))


def scores(topics: Topics, reqs: Sequence[RequestEnvelope]) -> list[Outbound]:
    made = [score_for(r, model="champ", output="ok") for r in reqs]
    return [Outbound(topics.scores, message_key(s), encode(s), partition=0) for s in made]


def counts(
    kafka: KafkaSettings, topics: Topics, expected: int
) -> tuple[Counter[str], Counter[str]]:
    replies = [
        decode(r.value, Reply).request_id for r in read_exactly(kafka, topics.replies, expected)
    ]
    decisions = [
        decode(r.value, Decision).request_id
        for r in read_exactly(kafka, topics.decisions, expected)
    ]
    return Counter(replies), Counter(decisions)


def req(topics: Topics, request_id: str | None = None) -> RequestEnvelope:
    return request(
        "q",
        request_id=request_id,
        endpoint="t",
        deadline_in_ms=DEADLINE_MS,
        reply_topic=topics.replies,
    )


def test_a_restart_long_after_the_crash_answers_no_request_twice(
    kafka_settings: KafkaSettings, topics: Topics, settings: RendezvousSettings
) -> None:
    """Requests answered but not committed (an open one holds their offsets back) are
    not answered again by a rendezvous restarted later than the longest deadline plus
    the margin (the old read-back window, measured from the restart)."""
    held_id = uuid.uuid4().hex  # made once the group has formed: its deadline counts
    crashing = FaultyProducer(
        producer_config(kafka_settings, "rendezvous"), dies_at=keyed(topics.replies, held_id)
    )
    a = Instance(settings, kafka_settings, crashing)
    first = req(topics)
    send(kafka_settings, topics, first, scored=True)
    read_exactly(kafka_settings, topics.replies, 1)  # first answered, its offset stored
    held, answered = req(topics, held_id), [req(topics) for _ in range(5)]
    produce_all(  # one write: held (open until its deadline) before the others
        kafka_settings,
        [
            Outbound(topics.requests, message_key(r), encode(r), partition=0)
            for r in (held, *answered)
        ]
        + scores(topics, answered),
    )
    a.wait_crash()  # at held's deadline, before its reply
    group = consumer_config(kafka_settings, kafka_settings.topic_prefix + settings.group_id, "t")
    assert committed_offsets(group, topics.requests, [0]) == {0: 1}  # held is uncommitted

    decided_at = max(d.decided_ms for d in _decisions(kafka_settings, topics, 6))
    outage_end = decided_at + DEADLINE_MS + MARGIN_MS + 1000  # past the old window
    time.sleep(max(outage_end - time.time() * 1000, 0) / 1000)  # the outage itself
    b = Instance(settings, kafka_settings)
    try:
        replies, decisions = counts(kafka_settings, topics, 7)
    finally:
        b.stop()
    every = {r.request_id for r in (first, held, *answered)}
    assert set(replies) == set(decisions) == every
    assert max(replies.values()) == max(decisions.values()) == 1


@pytest.mark.parametrize("fault", ["reply_sent_decision_not", "decision_sent_reply_lost"])
def test_a_crash_between_reply_and_decision_gives_one_of_each(
    kafka_settings: KafkaSettings, topics: Topics, settings: RendezvousSettings, fault: str
) -> None:
    torn_id = uuid.uuid4().hex
    config = producer_config(kafka_settings, "rendezvous")
    dies_at = keyed(topics.decisions, torn_id)
    if fault == "reply_sent_decision_not":  # the reply is out, the process dies
        crashing = FaultyProducer(config, dies_at=dies_at)
    else:  # the decision is out, the reply never left the process
        lost = keyed(topics.replies, torn_id)
        crashing = FaultyProducer(config, dies_at=dies_at, loses=lost, send_fatal=True)
    a = Instance(settings, kafka_settings, crashing)
    first = req(topics)
    send(kafka_settings, topics, first, scored=True)
    read_exactly(kafka_settings, topics.replies, 1)  # first committed before the crash
    torn, after = req(topics, torn_id), req(topics)  # deadlines from now: decided in time
    send(kafka_settings, topics, torn, after, scored=True)
    a.wait_crash()

    b = Instance(settings, kafka_settings)
    try:
        replies, decisions = counts(kafka_settings, topics, 3)
    finally:
        b.stop()
    every = {r.request_id for r in (first, torn, after)}
    assert set(replies) == set(decisions) == every  # no request lost
    assert max(replies.values()) == max(decisions.values()) == 1  # none answered twice
    if fault == "reply_sent_decision_not":  # the decision says what the client got
        reply = next(
            decode(r.value, Reply)
            for r in read_exactly(kafka_settings, topics.replies, 3)
            if decode(r.value, Reply).request_id == torn_id
        )
        logged = next(d for d in _decisions(kafka_settings, topics, 3) if d.request_id == torn_id)
        assert (logged.chosen_model, logged.reason, logged.decided_ms) == (
            reply.model,
            reply.reason,
            reply.decided_ms,
        )


def _decisions(kafka: KafkaSettings, topics: Topics, count: int) -> list[Decision]:
    return [decode(r.value, Decision) for r in read_exactly(kafka, topics.decisions, count)]
