"""librdkafka's statistics as ``rdv_kafka_requests_total``: summed over a client's broker
connections, kept per client, and only asked for when the config turns them on."""

from __future__ import annotations

import json
import time

import confluent_kafka
from prometheus_client import CollectorRegistry, generate_latest

from services.common.kafka.stats import RequestCounts, request_totals, stats_callback


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
    producer = confluent_kafka.Producer(
        {**config, "stats_cb": lambda raw: (seen.append(raw), extra["stats_cb"](raw))}
    )
    until = time.monotonic() + 10
    while not seen and time.monotonic() < until:
        producer.poll(0.1)  # librdkafka delivers statistics from poll
    assert seen, "no statistics report within 10 s"
    assert json.loads(seen[0])["name"].startswith("rdkafka#producer")
    assert stats_callback({"statistics.interval.ms": "0"}) == {}
    assert stats_callback({}) == {}
