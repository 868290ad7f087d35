"""The real chat stack for bench.chat_e2e: a broker, the gateway and the rendezvous with
the repo's chat policy, and the chat workers as deploy/local/stack.yaml runs them; the
openai client streaming at a given concurrency, and each request's hops read back from
the records' timestamps."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import openai

from bench.chat_e2e_stats import Marks, Stream
from bench.cost import cpu_ms, kafka_requests, settle_kafka_counts
from bench.stack import BenchStack, free_port
from services.common.codec import decode, decode_reply_record
from services.common.errors import MessageError
from services.common.kafka import consumer_config, read_since
from services.common.messages import Decision, Delta, RequestEnvelope, Score, StreamGrant
from services.common.spec import load_spec
from services.devstack.stack import PROJECT_ROOT, ProcessSpec, load_stack, start, stop

CHAT_POLICY = PROJECT_ROOT / "deploy" / "policies" / "chat.yaml"
CHAMPION, CHALLENGER, DETECTOR = "smol", "smol-tight", "ood"
WORKERS = (DETECTOR, CHAMPION, CHALLENGER)
"""The chat endpoint's workers, under their names in deploy/local/stack.yaml."""


def local_worker(name: str) -> ProcessSpec:
    """Worker ``name`` as deploy/local/stack.yaml runs it, on a free ops port."""
    found = [p for p in load_stack() if p.name == name]
    if not found:
        raise SystemExit(f"deploy/local/stack.yaml has no process {name!r}")
    command, port = list(found[0].command), free_port()
    if "--ops-port" not in command:
        raise SystemExit(f"deploy/local/stack.yaml: {name} has no --ops-port")
    command[command.index("--ops-port") + 1] = str(port)
    return ProcessSpec(
        name=f"worker-{name}",
        command=command,
        env=dict(found[0].env),
        ready=f"http://127.0.0.1:{port}/readyz",
    )


def deployed_env(name: str) -> dict[str, str]:
    """The environment deploy/local/stack.yaml gives process ``name``."""
    return dict(local_worker(name).env)


def detector_artifact() -> Path:
    """The OOD artifact the detector's spec reads; a clear exit when it is missing."""
    spec = load_spec(str(PROJECT_ROOT / "models" / "specs" / f"{DETECTOR}.yaml"))
    artifact = PROJECT_ROOT / str(spec.params["artifact"])
    if not (artifact / "artifact.json").is_file():
        raise SystemExit(f"no OOD artifact at {artifact}: run `make ood-artifact` first")
    return artifact


class ChatStack:
    """BenchStack with the chat policy; the chat workers started, restarted or stopped
    one by one (a worker's own environment, e.g. RDV_WORKER_NICE, per start)."""

    def __init__(self) -> None:
        detector_artifact()
        self.bench = BenchStack(CHAT_POLICY.read_text())

    def __enter__(self) -> ChatStack:
        self.bench.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bench.__exit__(*exc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.bench.gateway_port}"

    def worker(self, name: str, env: dict[str, str] | None = None) -> None:
        """(Re)start worker ``name`` and wait until it is ready."""
        self.drop(name)
        spec = local_worker(name)
        spec = spec.model_copy(update={"env": spec.env | (env or {})})
        self.bench.specs[spec.name] = spec  # BenchStack stops it on exit
        start(spec, self.bench.env, self.bench.dir, timeout_s=300.0)

    def drop(self, name: str) -> None:
        if (spec := self.bench.specs.pop(f"worker-{name}", None)) is not None:
            stop(spec, self.bench.dir)

    def front(self) -> None:
        self.bench.start_front()

    def cpu(self) -> dict[str, float]:
        """CPU ms so far of every process here, the broker's and this bench's own."""
        meter = self.bench.meter()
        return meter.cpu() | {"bench_client": cpu_ms(os.getpid())}

    def produce_requests(self, name: str) -> float:
        """The Produce requests worker ``name``'s clients sent so far (librdkafka)."""
        spec = self.bench.specs[f"worker-{name}"]
        return kafka_requests(spec.ready.replace("/readyz", "/metrics")).get("Produce", 0.0)


async def drive(
    url: str, texts: list[str], concurrency: int, count: int, max_tokens: int
) -> tuple[list[Stream], dict[str, int], float]:
    """``count`` streamed chat completions through the gateway, ``concurrency`` in
    flight (closed loop, all clients start at once); the streams, the failures by HTTP
    status (or error type), and the wall time (s). No retries: a 503 counts."""
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120.0
    )
    streams: list[Stream] = []
    failed: dict[str, int] = {}
    taken = iter(range(count))

    async def one(i: int) -> None:
        sent, times, tokens, rid = time.time(), [], 0, ""
        try:
            stream = await client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": texts[i % len(texts)]}],
                temperature=0,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                rid = chunk.id.removeprefix("chatcmpl-")
                if chunk.choices and chunk.choices[0].delta.content:
                    times.append(time.time())
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
        except openai.APIError as exc:
            kind = str(getattr(exc, "status_code", "") or type(exc).__name__)
            failed[kind] = failed.get(kind, 0) + 1
            return
        streams.append(Stream(sent, tuple(times), tokens, rid))

    async def client_loop() -> None:
        for i in taken:
            await one(i)

    began = time.time()
    try:
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    finally:
        await client.close()
    return streams, failed, time.time() - began


def stream_level(
    stack: ChatStack, texts: list[str], concurrency: int, count: int, max_tokens: int
) -> dict[str, Any]:
    """One load level through the stack: the streams, the hop marks, and what it cost
    (CPU per process, the champion's deltas per Produce request)."""
    cpu0, produce0 = stack.cpu(), stack.produce_requests(CHAMPION)
    since = int(time.time() * 1000)
    streams, failed, took = asyncio.run(drive(stack.url, texts, concurrency, count, max_tokens))
    cpu1 = stack.cpu()
    settle_kafka_counts()  # the Produce counts; the decisions are written by then too
    marks, counts = read_marks(stack, since, streams)
    produce = stack.produce_requests(CHAMPION) - produce0
    cpu_pct = {k: round((cpu1[k] - cpu0[k]) / took / 10.0, 1) for k in cpu0 if k in cpu1}
    counts["champion_produce_requests"] = int(produce)
    return {
        "streams": streams,
        "took_s": took,
        "failed": failed,
        "marks": marks,
        "counts": counts,
        "cpu_pct_of_core": cpu_pct,
    }


def read_marks(
    stack: ChatStack, since_ms: int, streams: Iterable[Stream]
) -> tuple[list[Marks], dict[str, int]]:
    """Each stream's moments from the requests, scores, decisions and replies topics
    (records since ``since_ms``); counts of what was found (grants, OOD outcomes,
    the champion's deltas)."""
    bench = stack.bench
    conf = consumer_config(bench.kafka, "unused", "bench-chat-e2e")
    topics = bench.topics

    def records(topic: str, name: str) -> list[Any]:
        return read_since(conf, topic, range(topics.partitions(name)), since_ms)

    requests = _decoded(records(topics.requests, "requests"), RequestEnvelope)
    reqs = {r.request_id: r for r in requests}
    scores = {(s.request_id, s.model): s for s in _decoded(records(topics.scores, "scores"), Score)}
    decisions = {
        d.request_id: d for d in _decoded(records(topics.decisions, "decisions"), Decision)
    }
    grants: dict[str, StreamGrant] = {}
    first: dict[tuple[str, str], float] = {}
    deltas = 0
    for rec in records(topics.replies, "replies"):
        try:
            msg = decode_reply_record(rec.value)
        except MessageError:
            continue
        if isinstance(msg, StreamGrant):
            grants.setdefault(msg.request_id, msg)
        elif isinstance(msg, Delta):
            deltas += msg.model == CHAMPION
            key = (msg.request_id, msg.model)
            first[key] = min(first.get(key, float(rec.timestamp_ms)), float(rec.timestamp_ms))
    marks = []
    for s in streams:
        rid = s.request_id
        req, grant, dec = reqs.get(rid), grants.get(rid), decisions.get(rid)
        ood = scores.get((rid, DETECTOR))
        if req is None or grant is None or dec is None or ood is None or not s.texts_s:
            continue
        champ = scores.get((rid, grant.model))
        delta = first.get((rid, grant.model))
        if champ is None or delta is None or DETECTOR not in dec.latencies_ms:
            continue
        arrived = dec.decided_ms - dec.elapsed_ms  # the request at the rendezvous
        marks.append(
            Marks(
                sent=s.sent_s * 1000,
                created=req.created_ms,
                ood_received=ood.timings.received_ms,
                ood_started=ood.timings.started_ms,
                ood_finished=ood.timings.finished_ms,
                ood_in=arrived + dec.latencies_ms[DETECTOR],
                granted=grant.granted_ms,
                champ_received=champ.timings.received_ms,
                first_delta=delta,
                first_text=s.texts_s[0] * 1000,
            )
        )
    ood_status = [d.ood.status for d in decisions.values() if d.ood is not None]
    counts = {
        "grants": len(grants),
        "ood_clear": ood_status.count("clear"),
        "ood_flagged": ood_status.count("flagged"),
        "ood_unknown": ood_status.count("unknown"),
        "champion_deltas": deltas,
    }
    return marks, counts


def _decoded(records: list[Any], kind: type) -> list[Any]:
    out: list[Any] = []
    for rec in records:
        try:
            out.append(decode(rec.value, kind))
        except MessageError:
            continue
    return out
