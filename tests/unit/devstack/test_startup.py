"""``rdv up``'s progress: what a starting process is doing, from its state and last log line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from services.devstack import stack, startup
from services.devstack.stack import ProcessSpec


def _log_line(msg: str, at: float) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + ".000Z"
    return json.dumps({"ts": ts, "level": "info", "msg": msg}) + "\n"


def test_progress_says_what_a_starting_process_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    spec = ProcessSpec(name="fast", command=["python", "-m", "x"], ready="http://127.0.0.1:1/")
    now = time.time()
    assert startup.doing(spec, None) == "waiting for the process before it"
    assert startup.doing(spec, now) == "starting the interpreter, importing"
    log = tmp_path / "fast.log"
    log.write_text(_log_line("model loaded", now - 600))  # an earlier run's line
    assert startup.doing(spec, now) == "starting the interpreter, importing"
    log.write_text(log.read_text() + _log_line("ops server listening", now) + "not json\n")
    assert startup.doing(spec, now) == "loading the model"
    log.write_text(log.read_text() + _log_line("GETPID " + "x" * 100, now))
    assert startup.doing(spec, now) == "last log: GETPID " + "x" * 50 + "..."


def test_progress_names_the_gguf_conversion_while_the_cache_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    cache = tmp_path / "cache"
    model = tmp_path / "chat.yaml"
    model.write_text(f"name: chat\nruntime: llama-chat\nparams: {{cache_root: {cache}}}\n")
    spec = ProcessSpec(
        name="chat", command=["python", "-m", "w", "--model", str(model)], ready="http://x/"
    )
    now = time.time()
    (tmp_path / "chat.log").write_text(_log_line("ops server listening", now))
    assert startup.doing(spec, now) == "converting the GGUF weights: first start only"
    (cache / "0123").mkdir(parents=True)
    (cache / "0123" / "rendezvous-entry.json").write_text("{}")
    assert startup.doing(spec, now) == "loading the model"
