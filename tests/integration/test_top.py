"""``rdv top`` against a real stack on the session's broker (gateway, rendezvous, three
echo-like workers as processes): known traffic in, the same figures out, and every
group's lag back to 0 once the traffic is drained."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from services.cli.top import read
from services.cli.topfigures import TopFigures, endpoint, figures, model
from tests.integration.stack import (
    GATEWAY,
    RENDEZVOUS,
    Launch,
    Stack,
    Worker,
    launch_stack_fixture,  # noqa: F401 - registers the launch_stack fixture here
    model_spec,
    run_rdv,
    wait_for,
)

DEMO, FAILOVER, UNSERVED = 40, 10, 2  # requests sent to each endpoint
STATS_MS = 1000  # librdkafka statistics (and so lag) every second, not every 5 s
MODELS = ("fast", "broken", "spare")


def policy(endpoint: str, deadline_ms: int, models: list[str], *stages: Any) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "deadline_ms": deadline_ms,
        "models": models,
        "stages": [{"until_ms": until, "accept": accept} for until, accept in stages],
    }


def post_all(stack: Stack, endpoint: str, count: int, body: dict[str, Any]) -> list[int]:
    """``count`` requests, eight at a time; their status codes."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = pool.map(
            lambda i: stack.http.post(f"/v1/infer/{endpoint}", json={**body, "inputs": i}),
            range(count),
        )
        return sorted(r.status_code for r in responses)


def group_lags(figs: TopFigures) -> dict[str, int]:
    """Each group's lag over every topic it reads (the rendezvous reads two)."""
    lags: dict[str, int] = {}
    for g in figs.groups:
        lags[g.group] = lags.get(g.group, 0) + g.lag
    return lags


@pytest.mark.timeout(400)
def test_top_reports_the_known_traffic_of_a_running_stack(
    launch_stack: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RDV_KAFKA_CLIENT_CONFIG", json.dumps({"statistics.interval.ms": STATS_MS}))
    stack = launch_stack(
        policies=[
            policy("demo", 3000, ["fast"], (1000, ["fast"]), ("deadline", "any")),
            policy(
                "failover",
                3000,
                ["broken", "spare"],
                (1500, ["broken"]),
                ("deadline", ["broken", "spare"]),
            ),
            policy("unserved", 1000, ["ghost"], ("deadline", "any")),  # ghost never runs
        ],
        workers=[
            Worker("fast", model_spec("fast", "echo", "champion", ["demo"], max_size=8)),
            Worker("broken", model_spec("broken", "failing", "champion", ["failover"])),
            Worker("spare", model_spec("spare", "echo", "challenger", ["failover"])),
        ],
    )
    targets = {name: f"{proc.url}/metrics" for name, proc in stack.procs.items()}
    before = read(targets)
    assert before.down == {}, before.down

    assert post_all(stack, "demo", DEMO, {}) == [200] * DEMO
    assert post_all(stack, "failover", FAILOVER, {}) == [200] * FAILOVER
    assert post_all(stack, "unserved", UNSERVED, {"deadline_ms": 500}) == [504] * UNSERVED
    # the gateway may answer 504 a moment before the rendezvous counts its decision
    wait_for(
        lambda: (
            stack.metric(
                RENDEZVOUS,
                "rdv_rendezvous_decisions_total",
                endpoint="unserved",
                model="-",
                reason="deadline_exceeded",
            )
            == UNSERVED
        ),
        10,
        lambda: "the rendezvous did not count both deadline misses",
    )
    after = read(targets)
    figs = figures(before, after)

    demo = endpoint(figs, "demo")
    window_s = after.at[GATEWAY] - before.at[GATEWAY]
    assert (demo.requests, demo.statuses) == (DEMO, {"200": DEMO})
    assert demo.requests_per_s * window_s == pytest.approx(DEMO, rel=0.01)
    assert [(a.model, a.reason, a.count) for a in demo.answers] == [
        ("fast", "champion_in_time", DEMO)
    ]
    assert demo.answers[0].per_s > 0
    assert demo.deadline_misses == 0
    assert demo.p50_ms is not None
    assert demo.p99_ms is not None
    assert 0 < demo.p50_ms <= demo.p99_ms < 3000
    failover = endpoint(figs, "failover")
    assert [(a.model, a.reason, a.count) for a in failover.answers] == [
        ("spare", "fallback:1", FAILOVER)
    ]
    unserved = endpoint(figs, "unserved")
    assert (unserved.deadline_misses, unserved.gateway_timeouts) == (UNSERVED, UNSERVED)
    assert [(a.model, a.reason) for a in unserved.answers] == [("-", "deadline_exceeded")]

    fast, broken, spare = (model(figs, name) for name in MODELS)
    assert (fast.scored, fast.errors, fast.in_flight) == (DEMO, 0, 0)
    assert fast.scored_per_s > 0
    assert fast.batch_fill is not None
    assert 0 < fast.batch_fill <= 1.0  # batches of 1 to 8 requests, max_size 8
    assert fast.deadline_left_s is not None
    assert 0 < fast.deadline_left_s <= 3.0
    assert (broken.scored, broken.errors) == (0, FAILOVER)
    assert broken.errors_per_s > 0
    assert (spare.scored, spare.errors) == (FAILOVER, 0)

    # drained: every group commits what it read, and the next statistics report says so
    prefix = stack.kafka.topic_prefix
    groups = {f"{prefix}rdv.model.{name}" for name in MODELS} | {f"{prefix}rdv.rendezvous"}

    def lags_now() -> dict[str, int]:
        snap = read(targets)
        return group_lags(figures(snap, snap))

    def drained() -> bool:
        lags = lags_now()
        return groups <= lags.keys() and all(lags[g] == 0 for g in groups)

    wait_for(drained, 30, lambda: f"lags {lags_now()}, wanted 0 for {sorted(groups)}")

    options = [f"--target={name}={url}" for name, url in targets.items()]
    out = run_rdv(stack.kafka, "top", "--once", "--json", "--interval", "0.5", *options)
    shown = json.loads(out.stdout)
    print(f"\nrdv top --once --json after the traffic:\n{out.stdout}")
    assert shown["down"] == {}
    by_endpoint = {e["endpoint"]: e for e in shown["endpoints"]}
    assert by_endpoint["demo"]["requests"] == DEMO
    assert by_endpoint["demo"]["requests_per_s"] == 0.0  # nothing sent in its window
    assert by_endpoint["unserved"]["deadline_misses"] == UNSERVED
    by_model = {m["model"]: m for m in shown["models"]}
    assert {name: by_model[name]["lag"] for name in MODELS} == dict.fromkeys(MODELS, 0)
    assert {name: by_model[name]["errors"] for name in MODELS} == {
        "fast": 0,
        "broken": FAILOVER,
        "spare": 0,
    }
    partitions = stack.topics.partitions("requests")
    for group in shown["groups"]:
        if group["group"] in groups:
            assert group["lag"] == 0
            assert group["partitions"] == partitions  # each topic's, one member per group
