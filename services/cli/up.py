"""``rdv up`` / ``rdv down`` / ``rdv ps``: the whole platform on this machine."""

from __future__ import annotations

import os

from services.cli import stack
from services.cli.localkafka import LocalBroker
from services.common.errors import RendezvousError
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


def _broker(port: int) -> LocalBroker | None:
    return None if os.environ.get("RDV_KAFKA_BOOTSTRAP") else LocalBroker(port=port)


def up(port: int) -> int:
    broker = _broker(port)
    if broker is not None:
        took = broker.start()
        print(f"kafka        ready on {broker.bootstrap} in {took:.1f} s")
        bootstrap = broker.bootstrap
    else:
        bootstrap = os.environ["RDV_KAFKA_BOOTSTRAP"]
        print(f"kafka        using RDV_KAFKA_BOOTSTRAP={bootstrap}")
    settings = KafkaSettings(bootstrap=bootstrap)
    created = load_topics(prefix=settings.topic_prefix).ensure(Admin(admin_config(settings)))
    print(f"topics       ready ({len(created)} created)")
    env = {**os.environ, "RDV_KAFKA_BOOTSTRAP": bootstrap}
    started: list[stack.ProcessSpec] = []
    try:
        for spec in stack.load_stack():
            started.append(spec)  # stopped again below if it never becomes ready
            pid, took = stack.start(spec, env)
            print(
                f"{spec.name:<12} ready in {took:.1f} s (pid {pid}, log .rdv/run/{spec.name}.log)"
            )
    except RendezvousError:
        for spec in reversed(started):
            stack.stop(spec)
        raise
    print(
        f"\nThe platform answers on http://127.0.0.1:8080. Try:\n  {DEMO}\n  {CHAT}\n"
        "Stop it with: make down"
    )
    return 0


def down(port: int) -> int:
    for spec in reversed(stack.load_stack()):
        print(f"{spec.name:<12} {'stopped' if stack.stop(spec) else 'was not running'}")
    broker = _broker(port)
    if broker is not None:
        print(f"{'kafka':<12} {'stopped' if broker.stop() else 'was not running'}")
    return 0


def ps(port: int) -> int:
    broker = _broker(port)
    if broker is not None:
        pid = broker.pid()
        print(f"{'kafka':<12} {f'running (pid {pid})' if pid else 'stopped'}")
    rows = stack.status(stack.load_stack())
    for name, state in rows:
        print(f"{name:<12} {state}")
    return 0 if all(s.startswith("ready") for _, s in rows) else 3
