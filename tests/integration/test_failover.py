"""Failover on the real broker: when one of two rendezvous replicas is SIGKILLed, the
survivor takes over its partitions, answers the open requests it held, once each, and
no request is answered twice. (How fast is measured by ``python -m bench.failover``,
not asserted here.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
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

POLICY = """
endpoint: t
deadline_ms: 8000
models: [champ]
stages:
  - {until_ms: deadline, accept: [champ]}
default:
  error: {code: deadline_exceeded, message: no answer by the deadline}
"""


def start(kafka: KafkaSettings, policy: Path, ops: int, name: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RDV_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "RDV_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "RDV_RENDEZVOUS_POLICIES": str(policy),
        "RDV_RENDEZVOUS_OPS_PORT": str(ops),
        "RDV_RENDEZVOUS_INSTANCE_ID": name,
        "RDV_RENDEZVOUS_AUTO_OFFSET_RESET": "earliest",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.rendezvous"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait_for(check: object, what: str, timeout_s: float = 60) -> None:
    until = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < until, what
        time.sleep(0.1)  # polling other processes' metrics


def test_a_killed_replicas_open_requests_are_answered_once_by_the_survivor(
    kafka_settings: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    policy = tmp_path / "t.yaml"
    policy.write_text(POLICY)
    ops = [free_port_pair(), free_port_pair()]
    first = start(kafka_settings, policy, ops[0], "rendezvous-1")
    second = start(kafka_settings, policy, ops[1], "rendezvous-2")
    survivor_code: int | None = None
    reqs: list[RequestEnvelope] = []
    try:
        wait_for(
            lambda: (
                metric(ops[0], "rdv_rendezvous_open_mailboxes") == 0
                and _ready(ops[0])
                and _ready(ops[1])
            ),
            "both replicas never got partitions",
        )
        reqs = [
            request("q", endpoint="t", deadline_in_ms=8000, reply_topic=topics.replies)
            for _ in range(40)
        ]
        produce_all(
            kafka_settings, [Outbound(topics.requests, message_key(r), encode(r)) for r in reqs]
        )
        held = lambda: sum(metric(p, "rdv_rendezvous_open_mailboxes") for p in ops)  # noqa: E731
        wait_for(lambda: held() == 40, "the replicas never held the 40 requests")
        assert metric(ops[1], "rdv_rendezvous_open_mailboxes") > 0  # the victim holds some
        second.send_signal(signal.SIGKILL)
        second.wait(10)
        scores = [score_for(r, model="champ", output="ok") for r in reqs]
        produce_all(
            kafka_settings, [Outbound(topics.scores, message_key(s), encode(s)) for s in scores]
        )
        until = max(r.deadline_epoch_ms for r in reqs) + 1000  # a stray answer would be out by then
        replies = [
            decode(r.value, Reply) for r in read_all_after(kafka_settings, topics.replies, until)
        ]
        decisions = [
            decode(r.value, Decision) for r in read_all_after(kafka_settings, topics.decisions, 0)
        ]
    finally:
        first.send_signal(signal.SIGTERM)
        survivor_code = first.wait(30)
        if second.poll() is None:
            second.kill()
            second.wait(10)
    want = {r.request_id for r in reqs}
    assert Counter(r.request_id for r in replies) == Counter(dict.fromkeys(want, 1))
    assert Counter(d.request_id for d in decisions) == Counter(dict.fromkeys(want, 1))
    assert {r.output for r in replies} == {"ok"}  # answered by the champion, not the deadline
    assert survivor_code == 0


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False
