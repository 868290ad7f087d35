"""A rendezvous replica frozen (SIGSTOP) past its group session, on the real broker:
the other replica takes over and answers its requests; when the frozen one wakes
(SIGCONT) with open mailboxes and scores to fetch, it answers none of them again.

This passes on the code before the freeze rule for records too (two runs): here the
scores are written during the freeze, and the revocation reached the woken replica
before them. The race that rule closes (records fetched before the freeze, handled
on waking) cannot be timed from outside the process; its regression test is the unit
test with a fake clock in tests/unit/rendezvous/test_readback.py."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

from services.common.codec import decode, encode, message_key
from services.common.kafka import Outbound
from services.common.messages import Decision, Reply, RequestEnvelope
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from tests.conftest import free_port_pair
from tests.factories import request, score_for
from tests.integration.kafka_io import produce_all, read_all_after
from tests.integration.test_failover import POLICY, _ready, metric, start, wait_for


def test_a_replica_woken_after_its_session_answers_nothing_twice(
    kafka_settings: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    policy = tmp_path / "t.yaml"
    policy.write_text(POLICY)
    ops = [free_port_pair(), free_port_pair()]
    first = start(kafka_settings, policy, ops[0], "rendezvous-1")
    second = start(kafka_settings, policy, ops[1], "rendezvous-2")
    reqs: list[RequestEnvelope] = []
    replies: list[Reply] = []
    decisions: list[Decision] = []
    try:
        wait_for(lambda: _ready(ops[0]) and _ready(ops[1]), "both replicas never got ready")
        reqs = [
            request("q", endpoint="t", deadline_in_ms=8000, reply_topic=topics.replies)
            for _ in range(40)
        ]
        produce_all(
            kafka_settings, [Outbound(topics.requests, message_key(r), encode(r)) for r in reqs]
        )
        held = lambda: sum(metric(p, "rdv_rendezvous_open_mailboxes") for p in ops)  # noqa: E731
        wait_for(lambda: held() == 40, "the replicas never held the 40 requests")
        assert metric(ops[1], "rdv_rendezvous_open_mailboxes") > 0  # the frozen one holds some
        second.send_signal(signal.SIGSTOP)
        scores = [score_for(r, model="champ", output="ok") for r in reqs]
        produce_all(
            kafka_settings, [Outbound(topics.scores, message_key(s), encode(s)) for s in scores]
        )
        want = {r.request_id for r in reqs}
        until = time.monotonic() + 40
        while True:  # the survivor answers all 40 while the other one is frozen
            got = read_all_after(kafka_settings, topics.replies, time.time() * 1000)
            if {decode(r.value, Reply).request_id for r in got} >= want:
                break
            assert time.monotonic() < until, "the survivor never answered every request"
        second.send_signal(signal.SIGCONT)
        stray_by = max(r.deadline_epoch_ms for r in reqs) + 2000  # the woken one's deadlines passed
        replies = [
            decode(r.value, Reply) for r in read_all_after(kafka_settings, topics.replies, stray_by)
        ]
        decisions = [
            decode(r.value, Decision) for r in read_all_after(kafka_settings, topics.decisions, 0)
        ]
    finally:
        if second.poll() is None:
            second.send_signal(signal.SIGCONT)
        for proc in (first, second):
            proc.send_signal(signal.SIGTERM)
        for proc in (first, second):
            proc.wait(30)
    want = {r.request_id for r in reqs}
    assert Counter(r.request_id for r in replies) == Counter(dict.fromkeys(want, 1))
    assert Counter(d.request_id for d in decisions) == Counter(dict.fromkeys(want, 1))
    assert {r.output for r in replies} == {"ok"}
