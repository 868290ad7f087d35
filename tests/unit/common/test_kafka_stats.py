"""librdkafka's statistics as ``rdv_kafka_requests_total``: summed over a client's broker
connections, kept per client, and only asked for when the config turns them on; and as
``rdv_kafka_consumer_lag``: the assigned partitions of each group consumer, series
removed when a partition is revoked or its consumer stops reporting."""

from __future__ import annotations

import json
import time

import confluent_kafka
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest

from services.common.kafka.stats import (
    ConsumerLags,
    RequestCounts,
    partition_lags,
    request_totals,
    stats_callback,
)


def _report(name: str, **brokers: dict[str, int]) -> str:
    return json.dumps({"name": name, "brokers": {b: {"req": req} for b, req in brokers.items()}})


def test_request_totals_sum_over_broker_connections_and_skip_zeros() -> None:
    stats = json.loads(
        _report(
            "w#consumer-1",
            **{"127.0.0.1:9092/1": {"Fetch": 40, "Metadata": 2, "Produce": 0}},
            GroupCoordinator={"Heartbeat": 5, "OffsetCommit": 3, "Fetch": 0},
        )
    )
    assert request_totals(stats) == {"Fetch": 40, "Metadata": 2, "Heartbeat": 5, "OffsetCommit": 3}


def test_each_clients_last_report_is_one_counter_series() -> None:
    counts = RequestCounts()
    counts.on_stats(_report("gw#producer-1", b1={"Produce": 10}))
    counts.on_stats(_report("gw#consumer-2", b1={"Fetch": 7}))
    counts.on_stats(_report("gw#producer-1", b1={"Produce": 12}))  # cumulative: replaces
    counts.on_stats("not json")  # ignored
    counts.on_stats(json.dumps({"brokers": {}}))  # no name: ignored
    registry = CollectorRegistry()
    registry.register(counts)
    text = generate_latest(registry).decode()
    assert 'rdv_kafka_requests_total{client="gw#producer-1",request="Produce"} 12.0' in text
    assert 'rdv_kafka_requests_total{client="gw#consumer-2",request="Fetch"} 7.0' in text


def test_a_real_client_reports_its_requests_through_the_callback() -> None:
    config = {"bootstrap.servers": "127.0.0.1:1", "statistics.interval.ms": "100"}
    extra = stats_callback(config)
    seen: list[str] = []

    def on_stats(raw: str) -> None:
        seen.append(raw)
        extra["stats_cb"](raw)

    producer = confluent_kafka.Producer({**config, "stats_cb": on_stats})
    until = time.monotonic() + 10
    while not seen and time.monotonic() < until:
        producer.poll(0.1)  # librdkafka delivers statistics from poll
    assert seen, "no statistics report within 10 s"
    assert json.loads(seen[0])["name"].startswith("rdkafka#producer")
    assert stats_callback({"statistics.interval.ms": "0"}) == {}
    assert stats_callback({}) == {}


# --- rdv_kafka_consumer_lag -----------------------------------------------------------


def _partition(
    partition: int,
    fetch_state: str = "active",
    *,
    committed: int = -1001,
    hi: int = -1001,
    lag: int = -1,
    desired: bool = True,
) -> dict[str, object]:
    """One partition of a consumer's report, with every field librdkafka 2.x writes
    (values as a real consumer reported them, see ``_consumer_report``)."""
    return {
        "partition": partition,
        "broker": 1 if partition >= 0 else -1,
        "leader": 1 if partition >= 0 else -1,
        "desired": desired,
        "unknown": False,
        "msgq_cnt": 0,
        "msgq_bytes": 0,
        "xmit_msgq_cnt": 0,
        "xmit_msgq_bytes": 0,
        "fetchq_cnt": 0,
        "fetchq_size": 0,
        "fetch_state": fetch_state,
        "query_offset": -2,
        "next_offset": hi,
        "app_offset": -1001,
        "stored_offset": -1001,
        "stored_leader_epoch": -1,
        "commited_offset": committed,
        "committed_offset": committed,
        "committed_leader_epoch": 0,
        "eof_offset": hi,
        "lo_offset": 0 if hi >= 0 else -1001,
        "hi_offset": hi,
        "ls_offset": hi,
        "consumer_lag": lag,
        "consumer_lag_stored": -1,
        "leader_epoch": 0,
        "txmsgs": 0,
        "txbytes": 0,
        "rxmsgs": 20,
        "rxbytes": 54,
        "msgs": 20,
        "rx_ver_drops": 0,
        "msgs_inflight": 0,
        "next_ack_seq": 0,
        "next_err_seq": 0,
        "acked_msgid": 0,
    }


def _consumer_report(name: str, topic: str, *partitions: dict[str, object]) -> dict[str, object]:
    """A consumer's statistics report shaped as librdkafka 2.x writes it (captured from
    a consumer of a 4-partition topic on the local broker, trimmed to one broker):
    besides the assigned partitions the topic lists the ones another member owns
    (``none``), the ones just revoked (``stopped``) and the internal partition -1."""
    return {
        "name": name,
        "client_id": name.partition("#")[0],
        "type": "consumer",
        "ts": 5016483227792,
        "time": 1527060869,
        "age": 24956000,
        "replyq": 0,
        "msg_cnt": 0,
        "msg_size": 0,
        "msg_max": 100000,
        "msg_size_max": 1073741824,
        "simple_cnt": 0,
        "metadata_cache_cnt": 1,
        "brokers": {"127.0.0.1:29392/1": {"name": "127.0.0.1:29392/1", "req": {"Fetch": 90}}},
        "topics": {
            topic: {
                "topic": topic,
                "age": 24000,
                "metadata_age": 3000,
                "batchsize": {"min": 0, "max": 0, "avg": 0, "cnt": 0},
                "batchcnt": {"min": 0, "max": 0, "avg": 0, "cnt": 0},
                "partitions": {str(p["partition"]): p for p in partitions},
            }
        },
        "cgrp": {
            "state": "up",
            "stateage": 24956,
            "join_state": "steady",
            "rebalance_age": 7736,
            "rebalance_cnt": 5,
            "rebalance_reason": "",
            "assignment_size": sum(1 for p in partitions if p["fetch_state"] == "active"),
        },
    }


def test_lag_is_reported_for_the_assigned_partitions_only() -> None:
    report = _consumer_report(
        "w#consumer-1",
        "rdv.requests",
        _partition(0, committed=10, hi=14, lag=4),
        _partition(1, committed=10, hi=10, lag=0),
        _partition(2, "stopped", hi=10, desired=False),  # revoked a moment ago
        _partition(3, "none", desired=False),  # another member's
        _partition(-1, "none", desired=False),  # librdkafka's unassigned partition
    )
    assert partition_lags(report) == {("rdv.requests", 0): 4, ("rdv.requests", 1): 0}


def test_unknown_lag_is_left_out_and_a_commit_past_the_known_end_is_zero() -> None:
    report = _consumer_report(
        "w#consumer-1",
        "rdv.requests",
        _partition(0, hi=10),  # assigned, nothing committed yet: lag unknown
        _partition(1, "offset-query", committed=10, hi=-1001),  # end not known yet
        _partition(2, committed=12, hi=11),  # committed after librdkafka last saw the end
        _partition(3, "offset-wait", committed=3, hi=8, lag=5),
    )
    assert partition_lags(report) == {("rdv.requests", 2): 0, ("rdv.requests", 3): 5}
    producer = {"name": "w#producer-2", "type": "producer", "topics": report["topics"]}
    assert partition_lags(producer) == {}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lag_gauge() -> tuple[Gauge, CollectorRegistry]:
    registry = CollectorRegistry()
    gauge = Gauge(
        "rdv_kafka_consumer_lag", "lag", ["group", "topic", "partition"], registry=registry
    )
    return gauge, registry


def _series(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["group"], s.labels["topic"], s.labels["partition"]): s.value
        for metric in registry.collect()
        for s in metric.samples
    }


def test_a_revoked_partition_loses_its_series_at_the_next_report() -> None:
    gauge, registry = _lag_gauge()
    lags = ConsumerLags(gauge, FakeClock())
    both = (_partition(0, committed=5, hi=9, lag=4), _partition(1, committed=5, hi=5, lag=0))
    lags.record("rdv.model.fast", _consumer_report("w#consumer-1", "req", *both), 15.0)
    assert _series(registry) == {
        ("rdv.model.fast", "req", "0"): 4.0,
        ("rdv.model.fast", "req", "1"): 0.0,
    }
    revoked = (_partition(0, committed=9, hi=9, lag=0), _partition(1, "stopped", hi=5))
    lags.record("rdv.model.fast", _consumer_report("w#consumer-1", "req", *revoked), 15.0)
    assert _series(registry) == {("rdv.model.fast", "req", "0"): 0.0}


def test_a_partition_taken_over_in_the_process_stays_with_its_new_owner() -> None:
    gauge, registry = _lag_gauge()
    lags = ConsumerLags(gauge, FakeClock())
    group = "rdv.rendezvous"
    lags.record(
        group, _consumer_report("a#consumer-1", "s", _partition(0, committed=1, hi=3, lag=2)), 15
    )
    lags.record(
        group, _consumer_report("b#consumer-2", "s", _partition(0, committed=2, hi=3, lag=1)), 15
    )
    # a's next report no longer shows partition 0: b's series must stay
    lags.record(group, _consumer_report("a#consumer-1", "s", _partition(0, "stopped")), 15)
    assert _series(registry) == {(group, "s", "0"): 1.0}
    assert lags.published() == {(group, "s", "0"): "b#consumer-2"}


def test_a_consumer_that_stops_reporting_loses_its_series() -> None:
    gauge, registry = _lag_gauge()
    clock = FakeClock()
    lags = ConsumerLags(gauge, clock)
    report = _consumer_report("w#consumer-1", "req", _partition(0, committed=5, hi=7, lag=2))
    lags.record("g", report, stale_after_s=15.0)
    clock.now += 15.0
    lags.sweep()
    assert _series(registry) == {("g", "req", "0"): 2.0}  # three intervals: not gone yet
    clock.now += 0.1
    lags.sweep()  # e.g. from the process's producer's report
    assert _series(registry) == {}
    assert lags.published() == {}


def test_a_group_consumers_callback_publishes_its_lag_under_its_group() -> None:
    group = f"test-{time.monotonic_ns()}"
    extra = stats_callback({"statistics.interval.ms": "1000", "group.id": group})
    report = _consumer_report("t#consumer-9", "rdv.scores", _partition(3, committed=2, hi=9, lag=7))
    extra["stats_cb"](json.dumps(report))
    text = generate_latest(REGISTRY).decode()
    assert f'rdv_kafka_consumer_lag{{group="{group}",partition="3",topic="rdv.scores"}} 7.0' in text
    assert 'request="Fetch"' in text  # the same report also counts requests
    gone = _consumer_report("t#consumer-9", "rdv.scores", _partition(3, "stopped"))
    extra["stats_cb"](json.dumps(gone))
    assert group not in generate_latest(REGISTRY).decode()
