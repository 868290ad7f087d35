"""How long answers degrade when one of two rendezvous replicas is SIGKILLed, or the
broker is SIGKILLed and restarted, under each consumer-group setting.

    python -m bench.failover --scenario replica               # the service's settings
    python -m bench.failover --scenario replica --session-ms 6000   # the old session
    python -m bench.failover --scenario replica --static      # static membership
    python -m bench.failover --scenario replica --client-config '{"group.protocol": "consumer"}'
    python -m bench.failover --scenario broker

An open-loop load (``--rate`` requests/s, deadline 1 s) goes straight onto the
requests topic with a champion score for each (no gateway, no workers: only the
rendezvous group and the broker are measured); replies are read from the return
partition. A request is degraded when no reply reached it by its deadline + 50 ms, or
the reply is an error. Like the gateway, the load sheds a request (counted as
degraded) while half a second of records waits unacknowledged in its client (the
broker away), rather than queueing requests that will miss their deadlines. Prints
one JSON line: degraded requests, the span of creation
times they cover (``degraded_s``), doubles, and for the broker scenario the seconds
from the broker accepting connections to the first good answer after it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.stack import free_port
from bench.txn_cost import machine
from services.common.codec import decode, encode, message_key
from services.common.errors import MessageError
from services.common.kafka import (
    Admin,
    Consumer,
    Outbound,
    Producer,
    admin_config,
    consumer_config,
    producer_config,
)
from services.common.messages import (
    Reply,
    RequestEnvelope,
    ReturnAddress,
    Role,
    Score,
    ScoreStatus,
    Timings,
)
from services.common.settings import KafkaSettings
from services.common.topics import Topics, load_topics
from services.devstack.broker import LocalBroker
from services.devstack.stack import ProcessSpec, pid_of, start, stop

DEADLINE_MS = 1000
LATE_MS = 50
POLICY = f"""
endpoint: fo
deadline_ms: {DEADLINE_MS}
models: [champ]
stages:
  - {{until_ms: deadline, accept: [champ]}}
default:
  error: {{code: deadline_exceeded, message: no answer by the deadline}}
"""


def now_ms() -> float:
    return time.time() * 1000


class Load:
    """Open-loop requests with an instant champion score; replies read back."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, rate: float) -> None:
        self.kafka, self.topics, self.rate = kafka, topics, rate
        self.sent: dict[str, int] = {}  # request id -> deadline (epoch ms)
        self.created: dict[str, int] = {}
        self.got: dict[str, list[tuple[float, bool]]] = {}  # id -> (received ms, ok)
        self._stop = threading.Event()
        self.drain = threading.Event()  # stop sending, keep reading
        self._reader = Consumer(consumer_config(kafka, f"fo-{uuid.uuid4().hex}", "fo-reader"))
        self._reader.assign_at_end(topics.replies, 0)
        self._threads = [threading.Thread(target=self._send), threading.Thread(target=self._read)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        self._reader.close()

    def _send(self) -> None:
        producer = Producer(producer_config(self.kafka, "fo-load"))
        began, n = time.monotonic(), 0
        while not self._stop.is_set() and not self.drain.is_set():
            wait = began + n / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the open loop's schedule
            made = int(now_ms())
            rid = uuid.uuid4().hex
            req = RequestEnvelope(
                request_id=rid,
                endpoint="fo",
                payload=None,
                return_address=ReturnAddress(topic=self.topics.replies, partition=0),
                deadline_epoch_ms=made + DEADLINE_MS,
                created_ms=made,
                trace_id=rid,
            )
            if len(producer) > self.rate / 2:  # half a second unacknowledged: the
                self.sent[rid], self.created[rid] = req.deadline_epoch_ms, made  # gateway sheds
                n += 1  # (503) rather than queue requests that will miss their deadline
                producer.poll(0)
                continue
            score = Score(
                request_id=rid,
                endpoint="fo",
                model="champ",
                model_version="1",
                role=Role.CHAMPION,
                status=ScoreStatus.OK,
                output="ok",
                timings=Timings(received_ms=made, started_ms=made, finished_ms=made),
            )
            try:
                producer.produce(Outbound(self.topics.requests, message_key(req), encode(req)))
                producer.produce(Outbound(self.topics.scores, message_key(score), encode(score)))
            except Exception:  # noqa: BLE001 - a full queue while the broker is away
                pass  # counted as degraded: sent but never answered
            self.sent[rid], self.created[rid] = req.deadline_epoch_ms, made
            producer.poll(0)
            n += 1
        producer.flush(10)

    def _read(self) -> None:
        while not self._stop.is_set():
            for rec in self._reader.consume(500, 0.1):
                try:
                    reply = decode(rec.value, Reply)
                except MessageError:
                    continue
                self.got.setdefault(reply.request_id, []).append((now_ms(), reply.ok))

    def degraded(self, since_ms: float, until_ms: float = float("inf")) -> list[int]:
        """Creation times (epoch ms) of the degraded requests created in the range."""
        out = []
        for rid, deadline in list(self.sent.items()):
            if not since_ms <= self.created[rid] < until_ms:
                continue
            answers = self.got.get(rid, [])
            if not answers or answers[0][0] > deadline + LATE_MS or not answers[0][1]:
                out.append(self.created[rid])
        return sorted(out)

    def first_good_after(self, since_ms: float) -> float | None:
        """Receive time of the first good, in-time answer to a request created since."""
        times = [
            answers[0][0]
            for rid, answers in self.got.items()
            if self.created.get(rid, 0) >= since_ms
            and answers[0][1]
            and answers[0][0] <= self.sent[rid] + LATE_MS
        ]
        return min(times, default=None)


def rendezvous(name: str, ops: int, args: argparse.Namespace) -> ProcessSpec:
    env = {"RDV_RENDEZVOUS_OPS_PORT": str(ops), "RDV_KAFKA_CLIENT_CONFIG": args.client_config}
    if args.static:
        env["RDV_RENDEZVOUS_INSTANCE_ID"] = name
        env["RDV_RENDEZVOUS_STATIC_MEMBERSHIP"] = "true"
    if args.session_ms is not None:
        env["RDV_RENDEZVOUS_SESSION_TIMEOUT_MS"] = str(args.session_ms)
        env["RDV_RENDEZVOUS_HEARTBEAT_INTERVAL_MS"] = str(args.session_ms // 3)
    return ProcessSpec(
        name=name,
        command=["python", "-m", "services.rendezvous"],
        env=env,
        ready=f"http://127.0.0.1:{ops}/readyz",
    )


def accepting(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--scenario", choices=["replica", "broker"], default="replica")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--client-config", default="{}", help="JSON, RDV_KAFKA_CLIENT_CONFIG")
    parser.add_argument("--static", action="store_true", help="group.instance.id per replica")
    parser.add_argument(
        "--session-ms", type=int, help="session timeout (heartbeat a third); default: the service's"
    )
    parser.add_argument("--after-s", type=float, default=12.0, help="load after the fault")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}))
    with tempfile.TemporaryDirectory(prefix="rdv-failover-") as tmp:
        run_dir = Path(tmp)
        (run_dir / "policy.yaml").write_text(POLICY)
        port = free_port()
        broker = LocalBroker(port=port, state_dir=run_dir / "kafka")
        broker.start(timeout_s=180)
        kafka = KafkaSettings(  # the load's clients get the same client config
            bootstrap=broker.bootstrap,
            topic_prefix=f"fo{uuid.uuid4().hex[:6]}.",
            client_config=json.loads(args.client_config),
        )
        topics = load_topics(prefix=kafka.topic_prefix)
        topics.ensure(Admin(admin_config(kafka)))
        env = {
            **os.environ,
            "RDV_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RDV_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "RDV_RENDEZVOUS_POLICIES": str(run_dir / "policy.yaml"),
            "RDV_RENDEZVOUS_LOG_LEVEL": "WARNING",
        }
        names = ("rendezvous-1", "rendezvous-2")
        specs = [rendezvous(n, free_port(), args) for n in names]
        load: Load | None = None
        try:
            for spec in specs:
                start(spec, env, run_dir)
            load = Load(kafka, topics, args.rate)
            load.start()
            settled = time.monotonic() + 60  # warm-up: the group settles with both members
            while time.monotonic() < settled:
                time.sleep(1)
                made = now_ms() - DEADLINE_MS - 2 * LATE_MS  # answered or late by now
                if len(load.sent) > 3 * args.rate and not load.degraded(made - 2000, made):
                    break  # two seconds of good answers
            t0 = now_ms()
            time.sleep(3)  # steady state before the fault
            fault_ms = now_ms()
            back_ms: float | None = None
            ready_ms = 0.0
            if args.scenario == "replica":
                pid = pid_of(specs[1], run_dir)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                time.sleep(args.after_s)
            else:
                pid = broker.pid()
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                time.sleep(5)  # the outage
                restarted = threading.Thread(target=broker.start, kwargs={"timeout_s": 180})
                restarted.start()
                while not accepting(port):
                    time.sleep(0.01)  # polling the port: the moment it accepts is measured
                back_ms = now_ms()
                restarted.join(180)
                ready_ms = now_ms()  # start() returned: the broker answers metadata
                time.sleep(args.after_s)
            load.drain.set()
            time.sleep((DEADLINE_MS + 500) / 1000)  # the last requests reach their deadline
        finally:
            if load is not None:
                load.stop()
            for spec in specs:
                stop(spec, run_dir)
            broker.stop()
    assert load is not None
    bad = load.degraded(t0)
    before = [c for c in bad if c < fault_ms]
    after = [c for c in bad if c >= fault_ms]
    doubles = sum(1 for answers in load.got.values() if len(answers) > 1)
    origin = fault_ms if back_ms is None else back_ms  # the timeline's zero
    result: dict[str, object] = {
        "scenario": args.scenario,
        "client_config": json.loads(args.client_config),
        "static": args.static,
        "session_ms": args.session_ms,
        "rate": args.rate,
        "requests": sum(1 for c in load.created.values() if c >= t0),
        "degraded_before_fault": len(before),
        "degraded_after_fault": len(bad) - len(before),
        # span of creation times of the degraded requests made after the fault
        "degraded_s": round((bad[-1] - after[0]) / 1000, 2) if after else 0.0,
        "double_replies": doubles,
        # degraded requests per half second of creation time, from the fault on (the
        # broker scenario: from the broker accepting connections again)
        "timeline": [
            sum(1 for c in bad if origin + i * 500 <= c < origin + (i + 1) * 500)
            for i in range(int(args.after_s * 2))
        ],
    }
    if back_ms is not None:
        good = load.first_good_after(back_ms)
        result["first_good_after_accepting_s"] = (
            round((good - back_ms) / 1000, 2) if good is not None else None
        )
        result["broker_ready_after_accepting_s"] = round((ready_ms - back_ms) / 1000, 2)
        result["outage_s"] = round((back_ms - fault_ms) / 1000, 2)
        late = [c for c in bad if c >= back_ms]  # requests made once the broker was back
        result["degraded_after_accepting_s"] = (
            round((late[-1] - back_ms) / 1000, 2) if late else 0.0
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
