"""Paired figures, the counterfactual choice and the report, over DuckDB tables shaped
like the archive's views, on synthetic runs whose figures are known."""

from __future__ import annotations

import json
import random

import duckdb
import pytest

from services.common.policy import parse_policy
from services.compare.counterfactual import replay_decision, would_choose
from services.compare.paired import Window, paired_figures
from services.compare.report import Report
from tests.unit.compare.compare_tables import Archive

CHAT = parse_policy(
    {
        "endpoint": "chat",
        "deadline_ms": 1000,
        "models": ["champ", "chall"],
        "stages": [
            {"until_ms": 200, "accept": ["champ"]},
            {"until_ms": "deadline", "accept": ["champ", "chall"]},
        ],
    },
    "test",
)


def _run(n: int = 2000, seed: int = 5) -> Archive:
    """champ: 100..199 ms, never fails; chall: ~3x faster but fails 10% of the time and
    answers "other" on every 4th request; every 20th request flagged by the gate."""
    rng = random.Random(seed)
    archive = Archive()
    for i in range(n):
        rid = f"r{i}"
        archive.request(rid, at=i * 10)
        archive.score(rid, "champ", 100 + i % 100, at=i * 10)
        status = "error" if rng.random() < 0.1 else "ok"
        text = "other" if i % 4 == 0 else "answer"
        archive.score(rid, "chall", 33 + i % 33, at=i * 10, status=status, text=text)
        archive.decision(rid, "champ", ood="flagged" if i % 20 == 0 else "clear")
    archive.request("lonely")
    archive.score("lonely", "champ", 10)
    archive.request("other-endpoint", endpoint="demo")
    return archive


def test_paired_figures_count_what_was_archived() -> None:
    p = paired_figures(_run().connect(), Window("champ", "chall"))
    assert (p.paired, p.only_champion, p.only_challenger) == (2000, 1, 0)
    assert p.champion.ok == 2000
    assert p.champion.errors == 0
    assert 150 < p.challenger.errors < 250  # 10% of 2000
    assert p.challenger.ok + p.challenger.errors == 2000
    assert p.champion.within_deadline == 2000
    assert p.champion.chosen == 2000
    assert p.challenger.chosen == 0
    assert p.both_ok == p.challenger.ok
    assert p.challenger_faster == p.both_ok  # 33..65 ms against 100..199 ms
    assert p.exact_agreement == pytest.approx(0.75 * p.both_ok, rel=0.05)
    assert (p.ood_checked, p.ood_flagged) == (2000, 100)
    assert p.champion.mean_output_chars == len("answer")


def test_latency_quantiles_match_the_known_distribution() -> None:
    p = paired_figures(_run().connect(), Window("champ", "chall"))
    # champ latencies are 100..199 ms, 20 of each: p50 ~ 149.5, p99 ~ 198
    assert p.champion.latency.quantile(0.5) == pytest.approx(149.5, rel=0.02)
    assert p.champion.latency.quantile(0.99) == pytest.approx(198, rel=0.02)
    assert p.challenger.latency.quantile(0.5) == pytest.approx(49, rel=0.05)


def test_the_window_filters_by_endpoint_and_time() -> None:
    con = _run().connect()
    from tests.unit.compare.compare_tables import T0  # noqa: PLC0415 - the archive's epoch

    later = paired_figures(con, Window("champ", "chall", since_ms=T0 + 10_000))
    assert later.paired == 1000
    none = paired_figures(con, Window("champ", "chall", endpoint="demo"))
    assert none.paired == 0
    with pytest.raises(ValueError, match="two different"):
        Window("champ", "champ")


def test_the_policy_replay_follows_the_schedule() -> None:
    fast_chall = (("champ", "ok", 150.0), ("chall", "ok", 50.0))
    slow_champ = (("champ", "ok", 400.0), ("chall", "ok", 50.0))
    failed_champ = (("champ", "error", 20.0), ("chall", "ok", 50.0))
    both_failed = (("champ", "error", 20.0), ("chall", "skipped", 30.0))
    assert replay_decision(CHAT, "r", 1000, fast_chall) == "champ"  # champ in its window
    assert replay_decision(CHAT, "r", 1000, slow_champ) == "chall"  # chall at 200 ms
    assert replay_decision(CHAT, "r", 1000, failed_champ) == "chall"
    assert replay_decision(CHAT, "r", 1000, both_failed) is None
    assert replay_decision(CHAT, "r", 100, slow_champ) == "chall"  # a 100 ms deadline


def test_would_choose_shares_under_the_policy() -> None:
    shares = would_choose(_run().connect(), Window("champ", "chall"), CHAT, sample=500)
    assert shares["champ"].value == 1.0  # champ always answers inside its 200 ms window
    assert shares["chall"].value == 0.0
    assert shares["champ"].n == 500


def test_the_report_says_who_is_ahead() -> None:
    con = _run().connect()
    window = Window("champ", "chall")
    report = Report(paired_figures(con, window), would_choose(con, window, CHAT, sample=200))
    verdict = report.verdict()
    assert verdict[0].startswith("latency p50: chall is faster")
    assert any(line.startswith("error rate: champ is ahead") for line in verdict)
    assert any(line.startswith("within the deadline: champ is ahead") for line in verdict)
    data = json.loads(json.dumps(report.as_dict()))  # JSON-serialisable
    assert data["paired"] == 2000
    assert data["models"]["champ"]["would_choose"]["value"] == 1.0
    assert data["ood"]["flagged"]["value"] == pytest.approx(0.05)
    table = report.table()
    assert "latency p99 (ms)" in table
    assert "verdict:" in table


def test_an_empty_window_reports_no_data() -> None:
    report = Report(paired_figures(Archive().connect(), Window("a", "b")))
    assert report.verdict() == ["no request was scored by both models in this window"]
    assert report.as_dict()["models"]["a"]["latency_ms"]["p50"] is None
    assert "paired requests: 0" in report.table()


def test_the_counterfactual_sample_reads_the_pairs_the_figures_read() -> None:
    con = _run().connect()
    window = Window("champ", "chall")
    fresh = would_choose(_run().connect(), window, CHAT, sample=300)
    paired_figures(con, window)
    con.execute("DROP TABLE scores")  # the archive views are not read again
    assert would_choose(con, window, CHAT, sample=300) == fresh
    with pytest.raises(duckdb.CatalogException):  # another window: read afresh
        would_choose(con, Window("champ", "chall", endpoint="chat"), CHAT)
