"""The compare service as a real process (``python -m services.compare``) over an archive
folder: not ready until the archive exists, ``GET /v1/experiments/compare`` answers the
known figures (400 for bad parameters), the drift monitor raises its gauge on a shift,
SIGTERM stops it cleanly, bad settings are exit code 2. It needs no broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.compare_archives import write_pairs, write_signals
from tests.integration.stack import REPO, Proc, free_port, wait_for


def compare_proc(root: Path, log: Path, **env: str) -> Proc:
    """``python -m services.compare`` reading the archive under ``root``; ``env`` adds
    RDV_COMPARE_<KEY> settings."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RDV_")}
    base |= {"RDV_COMPARE_ARCHIVE_DIR": str(root), "RDV_COMPARE_OPS_PORT": str(port)}
    env_vars = base | {f"RDV_COMPARE_{k.upper()}": v for k, v in env.items()}
    argv = [sys.executable, "-m", "services.compare"]
    return Proc("compare", argv, env_vars, f"http://127.0.0.1:{port}", log)


@pytest.fixture
def compares() -> Iterator[list[Proc]]:
    """Compare processes a test started; any still running is killed at teardown."""
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        if proc.alive and proc.popen is not None:
            proc.popen.kill()
            proc.popen.wait(10)


def started(proc: Proc, procs: list[Proc]) -> Proc:
    """``proc`` spawned and answering /healthz (ready or not)."""
    procs.append(proc)
    proc.spawn()
    wait_for(lambda: proc.alive and proc.probe("/healthz"), 60, lambda: proc.problem("not up"))
    return proc


def gauge(proc: Proc, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{proc.url}/metrics", timeout=5.0).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def test_the_compare_process_serves_reports_and_drift_and_stops_cleanly(
    tmp_path: Path, compares: list[Proc]
) -> None:
    root = tmp_path / "archive"
    window_s = 2000
    proc = started(
        compare_proc(
            root,
            tmp_path / "compare.log",
            drift_interval_s="0.2",
            drift_window_s=str(window_s),
            drift_reference_s=str(window_s),
            policies=str(REPO / "deploy" / "policies"),
        ),
        compares,
    )
    assert not proc.probe("/readyz"), "ready without an archive to read"
    # quiet outputs in the reference window, shifted ones in the window that ends now
    write_signals(root, int(time.time() * 1000) - window_s * 1000)
    write_pairs(root)
    wait_for(lambda: proc.probe("/readyz"), 30, lambda: proc.problem("not ready"))

    url = f"{proc.url}/v1/experiments/compare"
    query = {"champion": "champ", "challenger": "chall", "endpoint": "demo"}
    report = httpx.get(url, params=query, timeout=30)
    assert report.status_code == 200, report.text
    assert report.headers["content-type"] == "application/json"
    data = report.json()
    assert data["paired"] == 400
    assert data["models"]["chall"]["error_rate"]["value"] == pytest.approx(0.1)
    assert data["models"]["champ"]["would_choose"]["value"] == 0.0  # the demo policy's models
    bad = httpx.get(url, params={"champion": "champ", "since": "soon"}, timeout=30)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_request"

    def alert() -> float | None:
        return gauge(proc, "rdv_compare_drift_alert", signal="detector:ood")

    wait_for(lambda: alert() == 1.0, 30, lambda: f"drift alert {alert()}")
    assert gauge(proc, "rdv_compare_reports_total", status="200") == 1.0
    assert gauge(proc, "rdv_compare_reports_total", status="400") == 1.0
    assert (gauge(proc, "rdv_compare_drift_checks_total", outcome="ok") or 0) >= 1

    assert proc.popen is not None
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait_stopped() is None
    assert proc.popen.returncode == 0


@pytest.mark.parametrize(
    ("env", "says"),
    [({"RDV_COMPARE_OPS_PORT": "-1"}, "invalid settings"), ({}, "takes no arguments")],
)
def test_bad_settings_or_arguments_exit_2_with_one_line(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    argv = [sys.executable, "-m", "services.compare"] + ([] if env else ["--port", "1"])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RDV_")}
    out = subprocess.run(
        argv, cwd=REPO, env=clean | env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 2
    assert says in out.stderr
