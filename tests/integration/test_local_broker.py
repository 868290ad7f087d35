"""``rdv kafka start|status|stop`` as a user runs them, from a folder outside the repo."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.devstack.broker import LocalBroker
from tests.conftest import free_port_pair


def rdv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RDV_KAFKA_BOOTSTRAP"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_cli_start_status_stop_from_any_folder(tmp_path: Path) -> None:
    port, state = str(free_port_pair()), str(tmp_path / "broker")
    flags = ("--port", port, "--state-dir", state)

    started = rdv("kafka", "start", *flags, cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stderr
        assert f"ready on 127.0.0.1:{port}" in started.stdout
        status = rdv("kafka", "status", *flags, cwd=tmp_path)
        assert status.returncode == 0
        assert "running" in status.stdout
        again = rdv("kafka", "start", *flags, cwd=tmp_path)  # idempotent
        assert again.returncode == 0
        assert LocalBroker(int(port), Path(state)).pid() is not None
    finally:
        stopped = rdv("kafka", "stop", *flags, cwd=tmp_path)
    assert stopped.returncode == 0
    assert "stopped" in stopped.stdout
    after = rdv("kafka", "status", *flags, cwd=tmp_path)
    assert after.returncode == 3
    assert "stopped" in after.stdout


def test_second_start_of_a_running_broker_is_fast(local_broker: LocalBroker | None) -> None:
    if local_broker is None:
        pytest.skip("RDV_KAFKA_BOOTSTRAP names an external broker; none is managed here")
    pid = local_broker.pid()
    began = time.monotonic()
    local_broker.start()
    assert time.monotonic() - began < 5
    assert local_broker.pid() == pid
