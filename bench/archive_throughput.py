"""How fast the archive records, against a plain consumer of the same records, on the
real broker; and whether it keeps up beside the full stack under load.

    python -m bench.archive_throughput            # about 3 minutes
    python -m bench.archive_throughput --quick    # a smoke run, under a minute

Drain phase: N records (per request: the request, three scores, one decision) are
produced once; then, ``repeats`` times, in turn:

- **baseline, consume only**: a fresh consumer group reads all N with the project's
  Consumer wrapper (batches of 2,000), decoding nothing;
- **consume + decode**: the same, each record decoded into its message (pydantic), as
  every service does;
- **archive**: ``python -m services.archive`` with a fresh group and directory drains
  the N records; its rate is N over the time from its first consumed record to the
  moment every row is durable (written, fsynced, renamed), read from its /metrics.

Stack phase (skipped with --no-stack): the gateway, the rendezvous and three echo
models as separate processes under open-loop HTTP load at --rate for --duration
seconds, first without the archive (the baseline), then with it (its default
settings, started once it has recorded the backlog). With it, the records it has not
yet made durable and committed are sampled every second: no growing lag means the
last third of the samples peaks no higher than the first third (a flush every 5 s, its
max_age, makes the lag a sawtooth), and the lag is gone soon after the load stops.

Rates are medians over the repeats. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import measure, summary
from bench.stack import BODY, ECHO_MODELS, POLICY, BenchStack, free_port
from services.common.archive_files import connect
from services.common.codec import decode, encode, message_key
from services.common.kafka import Consumer, Outbound, Producer, consumer_config, producer_config
from services.common.messages import (
    Decision,
    RequestEnvelope,
    ReturnAddress,
    Role,
    Score,
    ScoreStatus,
    Timings,
)
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.devstack.stack import ProcessSpec, start, stop

KINDS = ("requests", "scores", "decisions")


def traffic(topics: Topics, requests: int) -> list[Outbound]:
    """Per request: the request, three ok scores and the decision, as the stack writes."""
    out = []
    for i in range(requests):
        now = time.time() * 1000
        rid = uuid.uuid4().hex
        req = RequestEnvelope(
            request_id=rid,
            endpoint="bench",
            payload={"inputs": {"text": f"hello number {i}"}},
            return_address=ReturnAddress(topic=topics.replies, partition=0),
            deadline_epoch_ms=int(now) + 250,
            created_ms=int(now),
            trace_id=rid,
        )
        out.append(Outbound(topics.requests, message_key(req), encode(req)))
        for model in ("champ", "chall", "shadow"):
            score = Score(
                request_id=rid,
                endpoint="bench",
                model=model,
                model_version="1",
                role=Role.CHAMPION if model == "champ" else Role.CHALLENGER,
                status=ScoreStatus.OK,
                output={"text": f"hello number {i}"},
                timings=Timings(received_ms=now + 1, started_ms=now + 1, finished_ms=now + 1.1),
            )
            out.append(Outbound(topics.scores, message_key(score), encode(score)))
        decision = Decision(
            request_id=rid,
            endpoint="bench",
            chosen_model="champ",
            reason="champion_in_time",
            in_time=["champ", "chall", "shadow"],
            late=[],
            latencies_ms={"champ": 2.1, "chall": 2.3, "shadow": 2.4},
            elapsed_ms=2.2,
            decided_ms=now + 2.2,
        )
        out.append(Outbound(topics.decisions, message_key(decision), encode(decision)))
    return out


def produce(kafka: KafkaSettings, records: list[Outbound]) -> None:
    producer = Producer(producer_config(kafka, "bench-archive"))
    errors: list[str] = []
    for out in records:
        while True:
            try:
                producer.produce(out, on_delivery=lambda e: errors.append(e) if e else None)
                break
            except Exception:  # noqa: BLE001 - the local queue is full: let it drain
                producer.poll(0.05)
    if producer.flush(60) or errors:
        raise RuntimeError(f"produce failed: {errors[:3]}")


def consume_rate(kafka: KafkaSettings, topics: Topics, total: int, *, decoding: bool) -> float:
    """Records/s of a fresh group reading ``total`` records from the three topics."""
    decoders = {topics.requests: RequestEnvelope, topics.scores: Score, topics.decisions: Decision}
    consumer = Consumer(
        consumer_config(
            kafka, f"bench-base-{uuid.uuid4().hex}", "bench", {"auto.offset.reset": "earliest"}
        )
    )
    consumer.subscribe(list(decoders))
    seen, first = 0, 0.0
    try:
        until = time.monotonic() + 300
        while seen < total and time.monotonic() < until:
            batch = consumer.consume(2000, 0.5)
            if batch and not seen:
                first = time.monotonic()
            if decoding:
                for rec in batch:
                    decode(rec.value, decoders[rec.topic])
            seen += len(batch)
        took = time.monotonic() - first
    finally:
        consumer.close()
    if seen < total:
        raise RuntimeError(f"baseline read {seen} of {total} records")
    return total / took


def metric_sum(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def archive_spec(name: str, root: Path, **env: str) -> tuple[ProcessSpec, int, str]:
    """The archive process with its own directory, ops port and group (returned)."""
    port, group = free_port(), f"bench-{name}-{uuid.uuid4().hex[:6]}"
    spec = ProcessSpec(
        name=name,
        command=["python", "-m", "services.archive"],
        env={
            "RDV_ARCHIVE_DIR": str(root),
            "RDV_ARCHIVE_OPS_PORT": str(port),
            "RDV_ARCHIVE_GROUP_ID": group,
            "RDV_ARCHIVE_LOG_LEVEL": "WARNING",
            **env,
        },
        ready=f"http://127.0.0.1:{port}/readyz",
    )
    return spec, port, group


def archive_rate(stack: BenchStack, total: int, name: str) -> dict[str, float]:
    """The archive process draining ``total`` records: records/s until all are durable."""
    root = stack.dir / name
    # a drained backlog's last partial buffers wait for max_age_s: 1 s, not 5, here
    spec, port, _ = archive_spec(name, root, RDV_ARCHIVE_MAX_AGE_S="1")
    start(spec, stack.env, stack.dir)
    try:
        first = consumed = last = 0.0
        until = time.monotonic() + 300
        while time.monotonic() < until:
            now = time.monotonic()
            records = metric_sum(port, "rdv_stream_records_total")
            if not first and records > 0:
                first = now
            if not consumed and records >= total:
                consumed = now
            if metric_sum(port, "rdv_archive_rows_total") >= total:
                last = now
                break
            time.sleep(0.05)  # polling another process's metrics
        if not last:
            raise RuntimeError(f"{name} did not write {total} rows in time")
        flush_s = metric_sum(port, "rdv_archive_flush_seconds_sum")
        files = metric_sum(port, "rdv_archive_files_total")
    finally:
        stop(spec, stack.dir)
    con = connect(root)
    rows = sum(con.sql(f"SELECT count(*) FROM {k}").fetchall()[0][0] for k in KINDS)
    con.close()
    if rows != total:
        raise RuntimeError(f"{name}: {rows} rows in the views, {total} records produced")
    size = sum(f.stat().st_size for f in root.rglob("*.parquet"))
    return {
        "records_per_s": total / (last - first),
        "consumed_per_s": total / (consumed - first),
        "flush_share": flush_s / (last - first),
        "files": files,
        "bytes_per_record": size / total,
    }


def drain_phase(stack: BenchStack, requests: int, repeats: int) -> dict[str, object]:
    records = traffic(stack.topics, requests)
    total = len(records)
    value_bytes = sum(len(r.value) for r in records) / total
    produce(stack.kafka, records)
    print(f"produced {total} records ({value_bytes:.0f} bytes each on average)")
    runs: dict[str, list[float]] = {"consume_only": [], "consume_decode": [], "archive": []}
    details = []
    for i in range(repeats):
        runs["consume_only"].append(consume_rate(stack.kafka, stack.topics, total, decoding=False))
        runs["consume_decode"].append(consume_rate(stack.kafka, stack.topics, total, decoding=True))
        details.append(archive_rate(stack, total, f"archive-{i}"))
        runs["archive"].append(details[-1]["records_per_s"])
        print(
            f"repeat {i + 1}: consume only {runs['consume_only'][-1]:,.0f}/s  "
            f"consume+decode {runs['consume_decode'][-1]:,.0f}/s  "
            f"archive {runs['archive'][-1]:,.0f}/s  ({json.dumps(details[-1])})"
        )
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "records": total,
        "value_bytes": round(value_bytes),
        "runs": runs,
        "median_records_per_s": med,
        "archive_vs_consume_only": med["archive"] / med["consume_only"],
        "archive_vs_consume_decode": med["archive"] / med["consume_decode"],
        "archive_details": details,
    }


def uncommitted(stack: BenchStack, probe: Consumer, group_topics: list[tuple[str, int]]) -> int:
    """Records on the three topics the archive's group has not committed (= not durable)."""
    total = 0
    for topic, parts in group_topics:
        done = probe.committed(topic, parts)
        end = probe.end_offsets(topic, parts)
        total += sum(end[p] - max(done[p], 0) for p in range(parts))
    return total


def stack_phase(stack: BenchStack, rate: float, duration_s: float) -> dict[str, object]:
    """The stack at ``rate`` without, then with the archive; the archive's lag with it."""
    stack.start_workers(ECHO_MODELS)
    stack.start_front()
    gw = stack.gateway_port
    measure("127.0.0.1", gw, "/v1/infer/bench", BODY, rate=100, duration_s=2)  # warm
    without = summary(
        measure("127.0.0.1", gw, "/v1/infer/bench", BODY, rate=rate, duration_s=duration_s)
    )
    print(f"stack at {rate:.0f} req/s without the archive: {json.dumps(without)}")

    spec, _port, group = archive_spec("archive-stack", stack.dir / "archive-stack")  # defaults
    start(spec, stack.env, stack.dir)
    probe = Consumer(consumer_config(stack.kafka, stack.kafka.topic_prefix + group, "probe"))
    parts = [(stack.topics.by_role[k], stack.topics.partitions(k)) for k in KINDS]
    try:
        until = time.monotonic() + 300  # first it records the backlog of the runs before
        while uncommitted(stack, probe, parts) and time.monotonic() < until:
            time.sleep(0.5)  # polling the group's committed offsets
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:
            began = time.monotonic()
            while not done.wait(1.0):
                samples.append((time.monotonic() - began, uncommitted(stack, probe, parts)))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            end0 = sum(sum(probe.end_offsets(t, n).values()) for t, n in parts)
            run = measure(
                "127.0.0.1", gw, "/v1/infer/bench", BODY, rate=rate, duration_s=duration_s
            )
            end1 = sum(sum(probe.end_offsets(t, n).values()) for t, n in parts)
        finally:
            done.set()
            sampler.join(30)
        stopped = time.monotonic()
        while uncommitted(stack, probe, parts) and time.monotonic() < stopped + 120:
            time.sleep(0.1)  # polling the group's committed offsets
        caught_up_s = time.monotonic() - stopped
    finally:
        probe.close()
        stop(spec, stack.dir)
    with_archive = summary(run)
    lags = [lag for _, lag in samples]
    third = max(len(lags) // 3, 1)
    out = {
        "rate": rate,
        "duration_s": duration_s,
        "without_archive": without,
        "with_archive": with_archive,
        "messages_per_s": (end1 - end0) / duration_s,
        "uncommitted_max_first_third": max(lags[:third]),
        "uncommitted_max_last_third": max(lags[-third:]),
        "caught_up_after_load_s": caught_up_s,
        "uncommitted_samples": lags,
    }
    print(
        f"stack at {rate:.0f} req/s with the archive: {json.dumps(with_archive)}; "
        f"{out['messages_per_s']:,.0f} messages/s to archive; not yet durable at most "
        f"{out['uncommitted_max_first_third']} (first third) vs "
        f"{out['uncommitted_max_last_third']} (last third); "
        f"all durable {caught_up_s:.1f} s after the load stopped"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.archive_throughput")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--requests", type=int, help="requests in the drain phase (x5 records)")
    parser.add_argument("--repeats", type=int, help="drain repeats (median reported)")
    parser.add_argument("--rate", type=float, default=400.0, help="stack phase req/s")
    parser.add_argument("--duration", type=float, help="stack phase seconds, each run")
    parser.add_argument("--no-stack", action="store_true", help="skip the stack phase")
    args = parser.parse_args(argv)
    requests = args.requests or (5_000 if args.quick else 40_000)
    repeats = args.repeats or (1 if args.quick else 3)
    duration = args.duration or (8.0 if args.quick else 30.0)
    out: dict[str, object] = {"quick": args.quick, "cpus": os.cpu_count()}
    with BenchStack(POLICY, max_in_flight=256) as stack:
        out["drain"] = drain_phase(stack, requests, repeats)
        if not args.no_stack:
            out["stack"] = stack_phase(stack, args.rate, duration)
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
