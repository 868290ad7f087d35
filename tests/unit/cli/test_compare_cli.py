"""``rdv compare`` over a real archive folder (Parquet files written by the archive's own
store, duplicates included): the known figures come out, as a table, JSON and a chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.archive.schema import ROW_BUILDERS, to_table
from services.archive.store import PartStore, hour_of
from services.cli.main import main
from services.common.archive_files import FEEDBACK
from services.common.errors import ConfigError
from services.common.kafka import Record
from services.common.messages import Feedback
from services.compare.experiments import compare_route
from services.compare.monitor import DriftMonitor
from services.compare.run import drift_spans, parse_time, window_from
from tests.compare_archives import write_pairs, write_signals

NOW = 1_795_000_000_000.0


def test_rdv_compare_reports_the_known_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pairs(tmp_path / "archive")
    chart = tmp_path / "chart.html"
    argv = ["compare", "--champion", "champ", "--challenger", "chall", "--endpoint", "demo"]
    argv += ["--archive", str(tmp_path / "archive"), "--policies", "deploy/policies"]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["paired"] == 400
    champ, chall = data["models"]["champ"], data["models"]["chall"]
    assert champ["latency_ms"]["p50"] == pytest.approx(149.5, rel=0.02)
    assert chall["latency_ms"]["p99"] == pytest.approx(59, rel=0.02)
    assert chall["error_rate"]["value"] == pytest.approx(0.1)
    assert champ["chosen"]["value"] == 1.0
    assert data["agreement"]["exact"]["value"] == 1.0
    # demo's policy: fast until 300 ms, then fast or slow: neither model is on it
    assert champ["would_choose"]["value"] == 0.0
    assert main([*argv, "--chart", str(chart)]) == 0
    table = capsys.readouterr().out
    assert "latency p50: chall is faster" in table
    assert "error rate: champ is ahead" in table
    assert chart.read_text().count("<svg") == 2


def test_a_missing_archive_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["compare", "--champion", "a", "--challenger", "b", "--archive", str(tmp_path / "x")]
    )
    assert code == 2
    assert "no archive at" in capsys.readouterr().err


def test_times_and_windows_from_strings() -> None:
    assert parse_time("1767225600000", NOW) == 1_767_225_600_000
    assert parse_time("2h", NOW) == NOW - 7_200_000
    assert parse_time("2026-01-01T00:00:00", NOW) == 1_767_225_600_000
    assert parse_time("2026-01-01T01:00:00+01:00", NOW) == 1_767_225_600_000
    with pytest.raises(ConfigError, match="cannot read the time"):
        parse_time("yesterday", NOW)
    window = window_from({"champion": "a", "challenger": "b", "since": "30m"}, NOW)
    assert window.since_ms == NOW - 1_800_000
    assert window.until_ms is None
    with pytest.raises(ConfigError, match="challenger"):
        window_from({"champion": "a"}, NOW)
    with pytest.raises(ConfigError, match="two different"):
        window_from({"champion": "a", "challenger": "a"}, NOW)


def test_a_shift_to_out_of_scope_traffic_raises_the_drift_signal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = 1_795_000_000_000
    write_signals(tmp_path / "archive", base)
    argv = [
        "compare",
        "--champion",
        "a",
        "--challenger",
        "b",
        "--archive",
        str(tmp_path / "archive"),
    ]
    shifted = ["--since", str(base), "--until", str(base + 2_000_000)]
    # both halves of the quiet period: the first as the reference of the second
    quiet = ["--since", str(base - 1_000_000), "--until", str(base)]
    assert main([*argv, *shifted, "--json"]) == 0  # reference: the 2,000 s before
    drift = json.loads(capsys.readouterr().out)["drift"]
    assert drift["detector:ood"]["alert"] is True
    assert drift["canary:canary"]["alert"] is True
    assert drift["detector:ood"]["ks"] > 0.7

    assert main([*argv, *quiet, "--json"]) == 0
    calm = json.loads(capsys.readouterr().out)["drift"]
    assert calm["detector:ood"]["alert"] is False
    assert calm["canary:canary"]["psi"] < 0.1


def test_the_http_route_answers_json_and_400_for_bad_parameters(tmp_path: Path) -> None:
    write_pairs(tmp_path / "archive")
    handle = compare_route(tmp_path / "archive", None)
    status, body, ctype = handle({"champion": "champ", "challenger": "chall"})
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body)["paired"] == 400
    status, body, _ = handle({"champion": "champ"})
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_request"
    status, body, _ = handle({"champion": "a", "challenger": "b", "since": "soon"})
    assert status == 400
    assert "cannot read the time" in json.loads(body)["error"]["message"]


def test_feedback_gives_off_policy_estimates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "archive"
    write_pairs(root, n=200)
    rows = []
    for i in range(200):
        given = Feedback(request_id=f"r{i}", reward=float(i % 2), received_ms=NOW + i)
        rec = Record("rdv.feedback", 0, i, b"k", b"v", timestamp_ms=int(NOW))
        rows.append(ROW_BUILDERS[FEEDBACK](given, rec, int(NOW)))
        if i < 10:  # a redelivered copy: counted once
            rows.append(ROW_BUILDERS[FEEDBACK](given, rec, int(NOW)))
    PartStore(root).write(FEEDBACK, hour_of(int(NOW)), to_table(FEEDBACK, rows))
    argv = ["compare", "--champion", "champ", "--challenger", "chall", "--archive", str(root)]
    assert main([*argv, "--json"]) == 0
    estimates = {e["model"]: e for e in json.loads(capsys.readouterr().out)["off_policy"]}
    champ, chall = estimates["champ"], estimates["chall"]
    assert champ["matched"] == 200  # the champion answered every request, propensity 1
    assert champ["snips"]["value"] == pytest.approx(0.5)
    assert champ["snips"]["low"] < 0.5 < champ["snips"]["high"]
    assert chall["matched"] == 0
    assert chall["snips"]["value"] is None  # never chosen: no estimate, not a zero


def test_the_compare_service_exports_drift_as_metrics(tmp_path: Path) -> None:
    base = 1_795_000_000_000
    write_signals(tmp_path / "archive", base)
    monitor = DriftMonitor(tmp_path / "archive", interval_s=60, window_s=2000, reference_s=2000)
    found = monitor.check(base + 2_000_000)  # the shifted hour against the quiet one
    assert set(found) == {"detector:ood", "canary:canary"}
    assert REGISTRY.get_sample_value("rdv_compare_drift_alert", {"signal": "detector:ood"}) == 1.0
    quiet = DriftMonitor(tmp_path / "archive", interval_s=60, window_s=1000, reference_s=1000)
    assert set(quiet.check(base)) == {"detector:ood", "canary:canary"}  # two quiet halves
    assert REGISTRY.get_sample_value("rdv_compare_drift_alert", {"signal": "detector:ood"}) == 0.0
    assert DriftMonitor(tmp_path / "none", interval_s=1, window_s=1, reference_s=1).check(0) == {}


@pytest.mark.parametrize("text", ["²", "9" * 400 + "h", "1" * 40, "99999999999999999d"])
def test_times_that_are_no_epoch_ms_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="cannot read the time"):
        parse_time(text, NOW)
    with pytest.raises(ConfigError, match="cannot read the time"):
        window_from({"champion": "a", "challenger": "b", "since": text}, NOW)
    window = window_from({"champion": "a", "challenger": "b", "since": "1h"}, NOW)
    with pytest.raises(ConfigError, match="cannot read the time"):
        drift_spans(window, {"reference_since": text}, NOW)


def test_a_bad_reference_time_is_a_400_and_a_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pairs(tmp_path / "archive")
    handle = compare_route(tmp_path / "archive", None)
    for bad in ({"since": "1h", "reference_since": "²"}, {"since": "1" * 40}):
        status, body, _ = handle({"champion": "champ", "challenger": "chall", **bad})
        assert status == 400
        assert "cannot read the time" in json.loads(body)["error"]["message"]
    argv = ["compare", "--champion", "a", "--challenger", "b", "--since", "1h"]
    assert main([*argv, "--reference-since", "²", "--archive", str(tmp_path / "archive")]) == 2
    assert "cannot read the time" in capsys.readouterr().err


def test_a_missing_policies_folder_only_leaves_out_would_choose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pairs(tmp_path / "archive")
    handle = compare_route(tmp_path / "archive", tmp_path / "no-policies")
    query = {"champion": "champ", "challenger": "chall", "endpoint": "demo"}
    status, body, _ = handle(query)
    assert status == 200
    assert json.loads(body)["models"]["champ"]["would_choose"] is None
    argv = ["compare", "--champion", "champ", "--challenger", "chall", "--endpoint", "demo"]
    argv += ["--archive", str(tmp_path / "archive"), "--policies", str(tmp_path / "none")]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"]["champ"]["would_choose"] is None


def test_the_archive_defaults_to_the_archive_service_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RDV_ARCHIVE_DIR", str(tmp_path / "elsewhere"))
    assert main(["compare", "--champion", "a", "--challenger", "b"]) == 2
    assert f"no archive at {tmp_path / 'elsewhere'}" in capsys.readouterr().err


def test_a_negative_sample_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--champion", "a", "--challenger", "b", "--sample", "-1"])
    assert exit_.value.code == 2
    assert "--sample: must be 0 or more" in capsys.readouterr().err
