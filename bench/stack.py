"""The local stack as separate processes for benchmarks, under a fresh topic prefix, on
the broker named by RDV_KAFKA_BOOTSTRAP or a local one started (and stopped) here."""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from bench.cost import STATS_CONFIG, CostMeter
from services.common.codec import decode
from services.common.errors import BrokerSetupError, MessageError
from services.common.kafka import Admin, admin_config, consumer_config, read_since
from services.common.messages import Decision, RequestEnvelope, Score
from services.common.settings import KafkaSettings
from services.common.topics import load_topics
from services.devstack.broker import LocalBroker
from services.devstack.stack import ProcessSpec, start, stop

DEADLINE_MS = 250
POLICY = f"""
endpoint: bench
deadline_ms: {DEADLINE_MS}
models: [champ, chall, shadow]
stages:
  - {{until_ms: 100, accept: [champ]}}
  - {{until_ms: deadline, accept: any}}
"""
"""The benchmarks' endpoint: champ first, then whichever model answers by the deadline."""
ECHO = "echo:name={name},role={role},endpoints=bench,latency_ms=0"
ECHO_MODELS = {
    name: ECHO.format(name=name, role=role)
    for name, role in (("champ", "champion"), ("chall", "challenger"), ("shadow", "canary"))
}
"""Three instant workers for POLICY's models, for ``BenchStack.start_workers``."""
BODY = {"inputs": {"text": "hello"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BenchStack:
    """Broker, topics, policy file; workers and front (rendezvous, gateway) on demand."""

    def __init__(
        self,
        policy_yaml: str,
        *,
        max_in_flight: int = 256,
        max_loop_lag_ms: float | None = None,
        env: dict[str, str] | None = None,
        jvm_options: list[str] | None = None,
        broker_props: dict[str, str] | None = None,
    ) -> None:
        """``max_loop_lag_ms``: the gateway's shedding limit; None leaves its default.
        ``env``: more environment for every process (RDV_KAFKA_CLIENT_CONFIG's entries
        are merged into the bench's); ``jvm_options``: the broker's GC flags;
        ``broker_props``: broker properties over LocalBroker's defaults."""
        self.extra_env = dict(env or {})
        self.jvm_options = jvm_options
        self.broker_props = broker_props
        self._tmp = tempfile.TemporaryDirectory(prefix="rdv-bench-")
        self.dir = Path(self._tmp.name)
        self.policy = self.dir / "policy.yaml"
        self.policy.write_text(policy_yaml)
        self.max_in_flight = max_in_flight
        self.max_loop_lag_ms = max_loop_lag_ms
        self.broker: LocalBroker | None = None
        self.kafka = KafkaSettings()
        self.specs: dict[str, ProcessSpec] = {}
        self.gateway_port = 0

    def __enter__(self) -> BenchStack:
        bootstrap = os.environ.get("RDV_KAFKA_BOOTSTRAP")
        if not bootstrap:
            self.broker = self._start_broker()
            bootstrap = self.broker.bootstrap
        self.kafka = KafkaSettings(
            bootstrap=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}."
        )
        self.topics = load_topics(prefix=self.kafka.topic_prefix)
        self.topics.ensure(Admin(admin_config(self.kafka)))
        client_config = (
            json.loads(os.environ.get("RDV_KAFKA_CLIENT_CONFIG") or "{}")
            | STATS_CONFIG
            | json.loads(self.extra_env.pop("RDV_KAFKA_CLIENT_CONFIG", "{}"))
        )
        self.env = {
            **os.environ,
            "RDV_KAFKA_BOOTSTRAP": bootstrap,
            "RDV_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "RDV_RENDEZVOUS_POLICIES": str(self.policy),
            "RDV_GATEWAY_POLICIES": str(self.policy),
            "RDV_RENDEZVOUS_LOG_LEVEL": "WARNING",
            "RDV_WORKER_LOG_LEVEL": "WARNING",
            "RDV_GATEWAY_LOG_LEVEL": "WARNING",
            # the Kafka request counts, reported often (bench.cost); the user's own
            # client settings, if any, still apply
            "RDV_KAFKA_CLIENT_CONFIG": json.dumps(client_config),
            **self.extra_env,
        }
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException], BaseException, TracebackType] | None
    ) -> None:
        for spec in reversed(list(self.specs.values())):
            stop(spec, self.dir)
        if self.broker is not None:
            self.broker.stop()
        self._tmp.cleanup()

    def _start_broker(self, attempts: int = 3) -> LocalBroker:
        """A broker on a free pair of ports; another process may take a port between
        our probe and the broker's bind, so a failed start is tried on fresh ports."""
        for _ in range(attempts - 1):
            broker = self._new_broker()
            try:
                broker.start()
            except BrokerSetupError:
                broker.stop()
                continue
            return broker
        broker = self._new_broker()
        broker.start()  # the last try's error is the caller's
        return broker

    def _new_broker(self) -> LocalBroker:
        port = free_port()
        while _taken(port + 1):
            port = free_port()
        return LocalBroker(
            port=port,
            state_dir=self.dir / f"kafka-{port}",
            jvm_options=self.jvm_options,
            server_props=self.broker_props,
        )

    def _run(self, spec: ProcessSpec) -> None:
        if spec.name in self.specs:
            stop(self.specs[spec.name], self.dir)
        self.specs[spec.name] = spec
        start(spec, self.env, self.dir)

    def start_workers(self, models: dict[str, str], *, cohost: bool = False) -> None:
        """(Re)start one worker process per model name, from inline specs; with
        ``cohost``, one process that hosts them all (services.workers.cohost)."""
        groups = (
            {"cohost": list(models.values())} if cohost else {n: [m] for n, m in models.items()}
        )
        for name, specs in groups.items():
            port = free_port()
            flags = [arg for spec in specs for arg in ("--model", spec)]
            self._run(
                ProcessSpec(
                    name=f"worker-{name}",
                    command=["python", "-m", "services.workers", *flags, "--ops-port", str(port)],
                    ready=f"http://127.0.0.1:{port}/readyz",
                )
            )

    def start_front(self) -> None:
        ops, self.gateway_port = free_port(), free_port()
        gateway_env = {
            "RDV_GATEWAY_PORT": str(self.gateway_port),
            "RDV_GATEWAY_MAX_IN_FLIGHT": str(self.max_in_flight),
        }
        if self.max_loop_lag_ms is not None:
            gateway_env["RDV_GATEWAY_MAX_LOOP_LAG_MS"] = str(self.max_loop_lag_ms)
        self._run(
            ProcessSpec(
                name="rendezvous",
                command=["python", "-m", "services.rendezvous"],
                env={"RDV_RENDEZVOUS_OPS_PORT": str(ops)},
                ready=f"http://127.0.0.1:{ops}/readyz",
            )
        )
        self._run(
            ProcessSpec(
                name="gateway",
                command=["python", "-m", "services.gateway"],
                env=gateway_env,
                ready=f"http://127.0.0.1:{self.gateway_port}/readyz",
            )
        )

    def meter(self) -> CostMeter:
        """Readings of every process started here and of the broker (when started here)."""
        pids = {name: int((self.dir / f"{name}.pid").read_text()) for name in self.specs}
        if self.broker is not None and (pid := self.broker.pid()) is not None:
            pids["broker"] = pid
        urls = {n: s.ready.replace("/readyz", "/metrics") for n, s in self.specs.items()}
        return CostMeter(pids, urls)

    @staticmethod
    def clock_mark() -> int:
        return int(time.time() * 1000)

    def hops(self, since_ms: int, model: str = "champ") -> dict[str, float]:
        """Median time per hop for requests since ``since_ms``, from the timestamps the
        records carry (one clock: every process runs on this machine)."""
        conf = consumer_config(self.kafka, "unused", "bench-hops")
        parts = range(self.topics.partitions("requests"))
        reqs = _decoded(read_since(conf, self.topics.requests, parts, since_ms), RequestEnvelope)
        scores = {
            s.request_id: s
            for s in _decoded(read_since(conf, self.topics.scores, parts, since_ms), Score)
            if s.model == model
        }
        created = {r.request_id: r.created_ms for r in reqs}
        rows: dict[str, list[float]] = {
            k: []
            for k in (
                "gateway_to_worker",
                "predict",
                "worker_to_rendezvous",
                "gateway_to_rendezvous",
                "rendezvous_decides",
                "created_to_decided",
            )
        }
        for d in _decoded(read_since(conf, self.topics.decisions, parts, since_ms), Decision):
            score, made = scores.get(d.request_id), created.get(d.request_id)
            if score is None or made is None or model not in d.latencies_ms:
                continue
            arrived = d.decided_ms - d.elapsed_ms  # the request at the rendezvous
            score_in = arrived + d.latencies_ms[model]
            t = score.timings
            rows["gateway_to_worker"].append(t.received_ms - made)
            rows["predict"].append(t.finished_ms - t.started_ms)
            rows["worker_to_rendezvous"].append(score_in - t.finished_ms)
            rows["gateway_to_rendezvous"].append(arrived - made)
            rows["rendezvous_decides"].append(d.decided_ms - score_in)
            rows["created_to_decided"].append(d.decided_ms - made)
        return {k: round(statistics.median(v), 3) if v else float("nan") for k, v in rows.items()}


def _decoded(records: list, kind: type) -> list:  # type: ignore[type-arg]
    out = []
    for rec in records:
        try:
            out.append(decode(rec.value, kind))
        except MessageError:
            continue
    return out


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
