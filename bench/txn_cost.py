"""What Kafka transactions cost the rendezvous's loop turn, on the real broker.

    python -m bench.txn_cost                 # about 1 minute on a local broker
    python -m bench.txn_cost --records 2000  # quicker

Each turn takes up to ``batch`` input records and writes two outputs per record (a
reply to a one-partition return topic, a decision keyed by request id), as the
rendezvous does. Two modes, same consumer, same records:

- **baseline** (what the loop does today): produce, wait for the broker's acks
  (the reply is then visible), store the offsets (auto-committed every second);
- **transaction**: begin, produce, send the offsets to the transaction, commit (the
  reply is visible to read_committed readers only then).

Per-turn time runs from records in hand to outputs visible. Prints p50/p99 per turn,
records/s, and the broker's CPU per 1,000 records when the broker was started here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.stack import free_port
from services.common.kafka import (
    Admin,
    Consumer,
    Outbound,
    Producer,
    admin_config,
    consumer_config,
    producer_config,
)
from services.common.kafka.transactions import TransactionalProducer, transactional_config
from services.common.settings import KafkaSettings
from services.devstack.broker import LocalBroker

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, object]:
    """CPU model, logical cores and the vector flags that matter, from /proc/cpuinfo."""
    model, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("sse4_2", "avx2", "avx512f", "avx512_bf16", "amx_tile")
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def broker_ticks(broker: LocalBroker | None) -> int | None:
    pid = broker.pid() if broker is not None else None
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def fill(kafka: KafkaSettings, topic: str, records: int) -> None:
    producer = Producer(producer_config(kafka, "txn-cost-fill"))
    for i in range(records):
        key = f"req-{i:08d}".encode()
        producer.produce(Outbound(topic, key, b'{"kind":"request","pad":"' + b"x" * 300 + b'"}'))
        if i % 5000 == 0:
            producer.poll(0)
    if producer.flush(30):
        raise RuntimeError("input records not acknowledged")


def run_mode(
    kafka: KafkaSettings,
    names: dict[str, str],
    *,
    transactional: bool,
    batch: int,
    records: int,
    broker: LocalBroker | None,
) -> dict[str, object]:
    group = f"txn-cost-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(
        consumer_config(kafka, group, "txn-cost", {"auto.offset.reset": "earliest"})
    )
    base = producer_config(kafka, "txn-cost")
    producer: Producer
    if transactional:
        txn = TransactionalProducer(transactional_config(base, f"txn-cost-{group}"))
        txn.init()
        producer = txn
    else:
        producer = Producer(base)
    consumer.subscribe([names["in"]])
    turns: list[float] = []
    done = 0
    failures: list[str] = []

    def acked(error: str | None) -> None:
        if error is not None:
            failures.append(error)

    ticks0, began = broker_ticks(broker), time.monotonic()
    try:
        while done < records and time.monotonic() - began < 300:
            got = consumer.consume(min(batch, records - done), 1.0)
            if not got:
                continue
            start = time.perf_counter()
            if transactional:
                txn.begin()
            for rec in got:
                key = rec.key or b""
                producer.produce(Outbound(names["replies"], key, b"r" * 200, partition=0), acked)
                producer.produce(Outbound(names["decisions"], key, b"d" * 300), acked)
            nxt = {}
            for rec in got:
                nxt[(rec.topic, rec.partition)] = max(
                    nxt.get((rec.topic, rec.partition), 0), rec.offset + 1
                )
            if transactional:
                txn.send_offsets(consumer, nxt)
                txn.commit()
            else:
                producer.flush(30)
                consumer.store_offsets(nxt)
            turns.append((time.perf_counter() - start) * 1000)
            done += len(got)
        took = time.monotonic() - began
        ticks1 = broker_ticks(broker)
    finally:
        consumer.close()
        producer.flush(10)
    if failures:
        raise RuntimeError(f"{len(failures)} outputs failed, first: {failures[0]}")
    turns.sort()
    out: dict[str, object] = {
        "mode": "transaction" if transactional else "baseline",
        "batch": batch,
        "records": done,
        "turns": len(turns),
        "turn_p50_ms": round(statistics.median(turns), 2),
        "turn_p99_ms": round(turns[min(len(turns) - 1, int(len(turns) * 0.99))], 2),
        "records_per_s": round(done / took),
    }
    if ticks0 is not None and ticks1 is not None:
        out["broker_cpu_ms_per_1k_records"] = round(
            (ticks1 - ticks0) / CLK_TCK * 1000 / done * 1000, 1
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.txn_cost")
    parser.add_argument("--records", type=int, default=6000, help="per mode and batch size")
    parser.add_argument("--batches", default="1,16,256", help="records per turn at most")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}))
    with tempfile.TemporaryDirectory(prefix="rdv-txn-cost-") as tmp:
        broker: LocalBroker | None = None
        bootstrap = os.environ.get("RDV_KAFKA_BOOTSTRAP")
        if not bootstrap:
            broker = LocalBroker(port=free_port(), state_dir=Path(tmp) / "kafka")
            broker.start()
            bootstrap = broker.bootstrap
        try:
            kafka = KafkaSettings(bootstrap=bootstrap, topic_prefix=f"txn{uuid.uuid4().hex[:8]}.")
            names = {n: kafka.topic_prefix + n for n in ("in", "replies", "decisions")}
            specs = [(names["in"], 4), (names["replies"], 1), (names["decisions"], 4)]
            Admin(admin_config(kafka)).create_topics([(n, p, 1, {}) for n, p in specs])
            fill(kafka, names["in"], args.records)
            rows = []
            for batch in (int(b) for b in args.batches.split(",")):
                for transactional in (False, True):  # baseline first, then the same work
                    row = run_mode(
                        kafka,
                        names,
                        transactional=transactional,
                        batch=batch,
                        records=args.records,
                        broker=broker,
                    )
                    rows.append(row)
                    print(json.dumps(row))
        finally:
            if broker is not None:
                broker.stop()
    by = {(r["mode"], r["batch"]): r for r in rows}
    ratios = {
        f"batch_{b}": round(
            float(by[("transaction", b)]["turn_p50_ms"])  # type: ignore[arg-type]
            / max(float(by[("baseline", b)]["turn_p50_ms"]), 1e-6),  # type: ignore[arg-type]
            2,
        )
        for (_, b) in by
    }
    print(json.dumps({"turn_p50_ratio_transaction_to_baseline": ratios}))


if __name__ == "__main__":
    main()
