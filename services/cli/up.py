"""``rdv up`` / ``rdv down`` / ``rdv ps``: the whole platform on this machine, supervised."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import yaml

from services.cli import stack
from services.cli.localkafka import LocalBroker
from services.cli.supervision import read_state, state_path
from services.common.errors import BrokerSetupError, RendezvousError
from services.common.kafka import Admin, admin_config
from services.common.settings import KafkaSettings
from services.common.topics import load_topics

DEMO = (
    "curl -s -X POST http://127.0.0.1:8080/v1/infer/demo "
    '-H \'content-type: application/json\' -d \'{"inputs": {"text": "hello"}}\''
)
CHAT = (
    "curl -s http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' "
    '-d \'{"model": "chat", "messages": [{"role": "user", "content": "How do I make lasagna?"}]}\''
)
WIDTH = 14  # the name column
PROGRESS_EVERY_S = 5.0
START_TIMEOUT_S = 300.0  # a chat worker's first start converts its weights
DOING = {
    "worker starting": "creating topics, loading the model",
    "ops server listening": "loading the model",
    "model loaded": "joining the consumer group",
}
"""What a process is doing, by the message of its last log line."""


def _broker(port: int) -> LocalBroker | None:
    return None if os.environ.get("RDV_KAFKA_BOOTSTRAP") else LocalBroker(port=port)


def up(port: int, stack_file: Path = stack.STACK_FILE) -> int:
    specs = stack.load_stack(stack_file)
    broker = _broker(port)
    if broker is not None:
        took = broker.start()
        print(f"{'kafka':<{WIDTH}} ready on {broker.bootstrap} in {took:.1f} s", flush=True)
        bootstrap = broker.bootstrap
    else:
        bootstrap = os.environ["RDV_KAFKA_BOOTSTRAP"]
        print(f"{'kafka':<{WIDTH}} using RDV_KAFKA_BOOTSTRAP={bootstrap}", flush=True)
    settings = KafkaSettings(bootstrap=bootstrap)
    created = load_topics(prefix=settings.topic_prefix).ensure(Admin(admin_config(settings)))
    print(f"{'topics':<{WIDTH}} ready ({len(created)} created)", flush=True)
    supervisor: subprocess.Popen[bytes] | None = None
    if stack.supervisor_pid() is None:
        left = [name for name, was in stack.stop_all(specs).items() if was]
        if left:
            print(f"{'':<{WIDTH}} stopped unsupervised processes of an earlier run: {left}")
        for spec in specs:  # an earlier run's restarts and exits are not this one's
            state_path(stack.RUN_DIR, spec.name).unlink(missing_ok=True)
        env = {**os.environ, "RDV_KAFKA_BOOTSTRAP": bootstrap}
        supervisor = stack.start_supervisor(stack_file, env)
    try:
        for spec in specs:
            pid, took = _wait_ready(spec, fresh=supervisor is not None)
            print(
                f"{spec.name:<{WIDTH}} ready in {took:.1f} s (pid {pid}, log {_log(spec)})",
                flush=True,
            )
    except (RendezvousError, KeyboardInterrupt):
        if supervisor is not None:
            _stop_everything(specs)
            supervisor.wait()
        raise
    print(
        f"\nThe platform answers on http://127.0.0.1:8080; a supervisor (pid "
        f"{stack.supervisor_pid()}, log {_shown(stack.RUN_DIR / 'supervisor.log')}) restarts "
        f"what exits. Try:\n  {DEMO}\n  {CHAT}\n"
        "Stop it with: make down"
    )
    return 0


def _wait_ready(
    spec: stack.ProcessSpec, fresh: bool, timeout_s: float = START_TIMEOUT_S
) -> tuple[int, float]:
    """Wait until ``spec`` answers on its readiness URL, printing progress; a process that
    exits while starting under a supervisor this command started is an error."""
    began = time.monotonic()
    baseline = 0 if fresh else _restarts(spec)
    said = began
    while True:
        state = read_state(stack.RUN_DIR, spec.name)
        if state is not None and state.pid is not None and stack.ready(spec.ready):
            started = state.started_at or time.time()
            return state.pid, max(0.0, time.time() - started)
        if state is not None and (state.status == "backoff" or state.restarts > baseline):
            raise BrokerSetupError(
                f"{spec.name} exited during start-up ({state.last_exit}"
                f"{': ' + state.last_reason if state.last_reason else ''}); last lines of "
                f"{_log(spec)}:\n{stack.tail(stack.RUN_DIR / f'{spec.name}.log')}"
            )
        if time.monotonic() - began > timeout_s:
            raise BrokerSetupError(
                f"{spec.name} was not ready at {spec.ready} within {timeout_s:.0f} s; last "
                f"lines of {_log(spec)}:\n{stack.tail(stack.RUN_DIR / f'{spec.name}.log')}"
            )
        if time.monotonic() - said >= PROGRESS_EVERY_S:
            said = time.monotonic()
            since = state.started_at if state is not None else None
            up_s = time.time() - since if since is not None else time.monotonic() - began
            doing = _doing(spec, since)
            print(f"{spec.name:<{WIDTH}} starting... {up_s:.0f} s ({doing})", flush=True)
        time.sleep(0.2)  # polling another process's readiness URL


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(stack.PROJECT_ROOT))
    except ValueError:
        return str(path)


def _log(spec: stack.ProcessSpec) -> str:
    return _shown(stack.RUN_DIR / f"{spec.name}.log")


def _restarts(spec: stack.ProcessSpec) -> int:
    state = read_state(stack.RUN_DIR, spec.name)
    return 0 if state is None else state.restarts


def _doing(spec: stack.ProcessSpec, since: float | None) -> str:
    """What the process is doing, from its last JSON log line since ``since``."""
    if since is None:
        return "waiting for the process before it"
    message = _last_message(stack.RUN_DIR / f"{spec.name}.log", since)
    if message is None:
        return "starting the interpreter, importing"
    if message in ("worker starting", "ops server listening") and _converts_gguf(spec):
        return "converting the GGUF weights: first start only"
    if message in DOING:
        return DOING[message]
    return f"last log: {message if len(message) <= 60 else message[:57] + '...'}"


def _last_message(path: Path, since: float) -> str | None:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
            at = datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        return str(record.get("msg")) if at >= since - 1 else None
    return None


def _converts_gguf(spec: stack.ProcessSpec) -> bool:
    """A chat worker (llama-chat runtime) whose conversion cache is still empty."""
    if "--model" not in spec.command:
        return False
    model = stack.PROJECT_ROOT / spec.command[spec.command.index("--model") + 1]
    try:
        data = yaml.safe_load(model.read_text())
        runtime, params = data.get("runtime"), data.get("params") or {}
        cache = Path(params.get("cache_root") or stack.PROJECT_ROOT / ".rdv/cache/models")
    except (OSError, yaml.YAMLError, AttributeError, TypeError):
        return False
    return runtime == "llama-chat" and not any(cache.glob("*/rendezvous-entry.json"))


def _stop_everything(specs: list[stack.ProcessSpec]) -> dict[str, bool]:
    """Supervisor first (nothing is restarted), then whatever it left running."""
    live = {spec.name: stack.pid_of(spec) is not None for spec in specs}
    stack.stop_supervisor()
    left = stack.stop_all(specs)
    return {name: was or left[name] for name, was in live.items()}


def down(port: int, stack_file: Path = stack.STACK_FILE) -> int:
    began = time.monotonic()
    for name, was in _stop_everything(stack.load_stack(stack_file)).items():
        print(f"{name:<{WIDTH}} {'stopped' if was else 'was not running'}")
    broker = _broker(port)
    if broker is not None:
        print(f"{'kafka':<{WIDTH}} {'stopped' if broker.stop() else 'was not running'}")
    print(f"{'':<{WIDTH}} down in {time.monotonic() - began:.1f} s")
    return 0


def ps(port: int, stack_file: Path = stack.STACK_FILE) -> int:
    broker = _broker(port)
    if broker is not None:
        pid = broker.pid()
        print(f"{'kafka':<{WIDTH}} {f'running (pid {pid})' if pid else 'stopped'}")
    sup = stack.supervisor_pid()
    print(f"{'supervisor':<{WIDTH}} {f'running (pid {sup})' if sup else 'stopped'}")
    rows = stack.status(stack.load_stack(stack_file))
    for name, state in rows:
        print(f"{name:<{WIDTH}} {state}")
    return 0 if all(s.startswith("ready") for _, s in rows) else 3
