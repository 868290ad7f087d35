"""Does a producer's linger put two records for two topics in one produce request? The
rendezvous sends each request's reply and decision together; this sends such pairs
(a 200-byte record to one partition of the replies topic, a 400-byte one keyed to the
decisions topic, 10 ms apart) with the platform's producer settings at linger.ms 0
(the baseline, today's setting), 0.1, 0.5 and 1, on a local broker; then, as a control
that the count can fall, both records of each pair to one partition at 1 ms.

    python -m bench.produce_pairs            # about 30 s
    python -m bench.produce_pairs --pairs 50 # a smoke run

Per linger: produce requests per pair (librdkafka's statistics) and the time from the
pair's produce calls to the first acknowledgement (p50, p90). The machine is printed
first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial

import confluent_kafka

from bench.chaos_report import cpu_times, machine
from bench.stack import POLICY, BenchStack
from services.common.kafka import producer_config

LINGERS = ("0", "0.1", "0.5", "1")


def produce_requests(stats: dict[str, int]) -> int:
    return stats.get("Produce", 0)


def run_linger(
    stack: BenchStack, linger: str, pairs: int, *, one_partition: bool = False
) -> dict[str, float]:
    """``one_partition``: both records of a pair to the replies topic's partition 0, the
    control that shows the count can fall below 2 when linger has batches to merge."""
    seen: dict[str, int] = {}

    def on_stats(text: str) -> None:
        brokers = json.loads(text).get("brokers", {}).values()
        seen["Produce"] = sum(int(b.get("req", {}).get("Produce", 0)) for b in brokers)

    config = producer_config(stack.kafka, f"bench-pairs-{linger}") | {
        "linger.ms": linger,
        "statistics.interval.ms": "100",
    }
    producer = confluent_kafka.Producer({**config, "stats_cb": on_stats})
    replies = stack.topics.replies
    decisions = replies if one_partition else stack.topics.decisions
    part = 0 if one_partition else -1  # -1: the partitioner picks by key
    for _ in range(20):  # connect and learn the partitions before counting
        producer.produce(replies, b"warm", partition=0)
        producer.produce(decisions, b"warm", key=b"warm", partition=part)
        producer.flush(10)
    time.sleep(0.3)  # the next statistics report: requests sent so far
    producer.poll(0)
    before = produce_requests(seen)
    first_ack: list[float] = []
    for i in range(pairs):
        acks: list[int] = []
        acked = partial(_note, acks)
        start = time.perf_counter()
        producer.produce(replies, b"r" * 200, partition=0, on_delivery=acked)
        producer.produce(
            decisions, b"d" * 400, key=str(i).encode(), on_delivery=acked, partition=part
        )
        while not acks:
            producer.poll(0.001)
        first_ack.append((time.perf_counter() - start) * 1000.0)
        producer.flush(10)
        time.sleep(0.01)
    time.sleep(0.3)
    producer.poll(0)
    ordered = sorted(first_ack)
    return {
        "linger_ms": float(linger),
        "one_partition": one_partition,
        "produce_requests_per_pair": round((produce_requests(seen) - before) / pairs, 3),
        "first_ack_p50_ms": round(statistics.median(ordered), 3),
        "first_ack_p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
    }


def _note(acks: list[int], _err: object, _msg: object) -> None:
    acks.append(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.produce_pairs")
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args(argv)
    steal0 = cpu_times()
    print("machine:", json.dumps(machine()), flush=True)
    rows = []
    with BenchStack(POLICY) as stack:
        runs = [(linger, False) for linger in LINGERS] + [("1", True)]
        for linger, one in runs:
            row = run_linger(stack, linger, args.pairs, one_partition=one)
            rows.append(row)
            what = "both to one partition (control)" if one else "reply + decision"
            print(
                f"{what:<32} linger {row['linger_ms']:>4} ms: "
                f"{row['produce_requests_per_pair']:.2f} "
                f"produce requests per pair, first ack p50 {row['first_ack_p50_ms']:.2f} ms "
                f"p90 {row['first_ack_p90_ms']:.2f} ms",
                flush=True,
            )
    print(json.dumps({"pairs": args.pairs, "rows": rows, "machine": machine(steal0)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
