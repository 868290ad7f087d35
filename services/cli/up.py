"""``rdv up`` / ``rdv down`` / ``rdv ps``: the whole platform on this machine, supervised."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable

from services.common.errors import RendezvousError
from services.common.kafka import Admin, admin_config
from services.common.settings import KafkaSettings
from services.common.topics import load_topics
from services.devstack import stack
from services.devstack.broker import LocalBroker
from services.devstack.startup import log_name, shown, stop_everything, wait_ready
from services.devstack.supervision import state_path

DEMO = (
    "curl -s -X POST http://127.0.0.1:8080/v1/infer/demo "
    '-H \'content-type: application/json\' -d \'{"inputs": {"text": "hello"}}\''
)
CHAT = (
    "curl -s http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' "
    '-d \'{"model": "chat", "messages": [{"role": "user", "content": "How do I make lasagna?"}]}\''
)
WIDTH = 14  # the name column


def _broker(port: int) -> LocalBroker | None:
    return None if os.environ.get("RDV_KAFKA_BOOTSTRAP") else LocalBroker(port=port)


def up(args: argparse.Namespace) -> int:
    port, stack_file = args.port, args.stack
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
            pid, took = wait_ready(spec, supervisor is not None, _progress(spec))
            print(
                f"{spec.name:<{WIDTH}} ready in {took:.1f} s (pid {pid}, log {log_name(spec)})",
                flush=True,
            )
    except (RendezvousError, KeyboardInterrupt):
        if supervisor is not None:
            stop_everything(specs)
            supervisor.wait()
        raise
    print(
        f"\nThe platform answers on http://127.0.0.1:8080; a supervisor (pid "
        f"{stack.supervisor_pid()}, log {shown(stack.RUN_DIR / 'supervisor.log')}) restarts "
        f"what exits. Try:\n  {DEMO}\n  {CHAT}\n"
        "Stop it with: make down"
    )
    return 0


def _progress(spec: stack.ProcessSpec) -> Callable[[float, str], None]:
    def say(up_s: float, doing: str) -> None:
        print(f"{spec.name:<{WIDTH}} starting... {up_s:.0f} s ({doing})", flush=True)

    return say


def down(args: argparse.Namespace) -> int:
    port, stack_file = args.port, args.stack
    began = time.monotonic()
    for name, was in stop_everything(stack.load_stack(stack_file)).items():
        print(f"{name:<{WIDTH}} {'stopped' if was else 'was not running'}")
    broker = _broker(port)
    if broker is not None:
        print(f"{'kafka':<{WIDTH}} {'stopped' if broker.stop() else 'was not running'}")
    print(f"{'':<{WIDTH}} down in {time.monotonic() - began:.1f} s")
    return 0


def ps(args: argparse.Namespace) -> int:
    port, stack_file = args.port, args.stack
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
