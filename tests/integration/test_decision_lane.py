"""The rendezvous's decision lane on the real broker: replies leave at once, decisions
gather into fewer Kafka produce requests, and a rebalance sends what the lane holds
before the partitions are given up."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from services.common.codec import decode, encode, message_key
from services.common.kafka import Consumer, Outbound, Producer, consumer_config, producer_config
from services.common.kafka.stats import REQUEST_COUNTS
from services.common.messages import Decision, Reply, RequestEnvelope
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.rendezvous.__main__ import build
from services.rendezvous.settings import RendezvousSettings
from tests.factories import request, score_for
from tests.integration.kafka_io import read_exactly, running

POLICY = """
endpoint: t
deadline_ms: 5000
models: [champ]
stages: [{until_ms: deadline, accept: any}]
"""
ANSWERS = 40
GAP_S = 0.01  # between answers: each reply is a produce request of its own


def _produces(name: str) -> int:
    """Produce requests of the one producer client named ``name#producer-...``."""
    counts = [c for n, c in REQUEST_COUNTS.snapshot().items() if n.startswith(name + "#producer")]
    assert len(counts) <= 1, f"more than one producer named {name}"
    return counts[0].get("Produce", 0) if counts else 0


def _settled(name: str, at_least: int) -> int:
    """``name``'s produce requests once its statistics show at least ``at_least`` and
    then stay the same over three reports (every 200 ms)."""
    until, last, same = time.monotonic() + 15, -1, 0
    while same < 3:
        assert time.monotonic() < until, (name, last, REQUEST_COUNTS.snapshot())
        now = _produces(name)
        same = same + 1 if now == last and now >= at_least else 0
        last = now
        time.sleep(0.2)  # one statistics interval: the reports have no event to wait on
    return last


def test_decisions_share_produce_requests_while_each_reply_leaves_at_once(
    kafka_settings: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    (tmp_path / "t.yaml").write_text(POLICY)
    name = f"lane-{uuid.uuid4().hex[:8]}"
    kafka = kafka_settings.model_copy(
        update={"client_config": {**kafka_settings.client_config, "statistics.interval.ms": "200"}}
    )
    settings = RendezvousSettings(
        policies=tmp_path / "t.yaml", auto_offset_reset="earliest", ops_port=0, instance_id=name
    )
    assert settings.decision_linger_ms == 500  # the default under test
    runner, _ = build(settings, kafka)
    sender = Producer(producer_config(kafka_settings, "test-producer"))
    reqs = [request(i, endpoint="t", reply_topic=topics.replies) for i in range(ANSWERS + 1)]

    def answer(req: RequestEnvelope) -> None:
        score = score_for(req, model="champ", output="ok", copy=True)
        sender.produce(Outbound(topics.requests, message_key(req), encode(req)))
        sender.produce(Outbound(topics.scores, message_key(score), encode(score)))
        sender.poll(0)

    with running(runner):
        answer(reqs[0])  # warms up the sender and the rendezvous: read at once from now on
        assert sender.flush(15) == 0
        read_exactly(kafka, topics.replies, 1)
        for req in reqs[1:]:  # one answer every GAP_S, as from a client at 100 req/s
            answer(req)
            time.sleep(GAP_S)  # the pace of the load, not a wait for a result
        assert sender.flush(15) == 0
        replies = [decode(r.value, Reply) for r in read_exactly(kafka, topics.replies, len(reqs))]
        decided = read_exactly(kafka, topics.decisions, len(reqs))
        reply_requests = _settled(name, 1)
        decision_requests = _settled(f"{name}-decisions", 1)
    assert sorted(r.request_id for r in replies) == sorted(r.request_id for r in reqs)
    assert sorted(decode(r.value, Decision).request_id for r in decided) == sorted(
        r.request_id for r in reqs
    )
    # 400 ms of answers: the lane (500 ms linger) sends one or two requests per
    # partition of the decisions topic (6), the replies about one each
    assert decision_requests <= ANSWERS // 3, (decision_requests, reply_requests)
    assert reply_requests >= ANSWERS * 3 // 4, (decision_requests, reply_requests)


def test_a_rebalance_runs_the_hook_before_partitions_are_given_up(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    group = f"lane-revoke-{uuid.uuid4().hex[:8]}"
    calls: list[frozenset[tuple[str, int]]] = []
    first: Consumer | None = None

    def hook() -> None:  # what the member still owns when the hook runs
        assert first is not None
        calls.append(first.assignment)

    first = Consumer(consumer_config(kafka_settings, group, "first"), before_revoke=hook)
    second = Consumer(consumer_config(kafka_settings, group, "second"))
    try:
        first.subscribe([topics.requests])
        until = time.monotonic() + 30
        while not first.assignment:
            assert time.monotonic() < until, "the first member got no partitions"
            first.consume(10, 0.1)
        owned = first.assignment
        second.subscribe([topics.requests])
        until = time.monotonic() + 30
        while not second.assignment:  # eager rebalance: the first gives everything up
            assert time.monotonic() < until, "the second member got no partitions"
            first.consume(10, 0.05)
            second.consume(10, 0.05)
        assert calls, "the hook did not run"
        assert calls[0] == owned  # it ran while the partitions were still the first's
        assert not calls[0] & second.assignment or first.assignment != owned
    finally:
        first.close()
        second.close()
