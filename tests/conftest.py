"""Shared fixtures. Integration tests get one real Kafka broker per test session:
the one named by RDV_KAFKA_BOOTSTRAP, or a local broker started here and stopped at
the end. Every test gets its own topic prefix, so tests never see each other's data."""

from __future__ import annotations

import io
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.kafka import Admin, admin_config, wait_for_broker
from services.common.logs import JsonFormatter
from services.common.settings import KafkaSettings
from services.common.topics import Topics, load_topics
from services.devstack.broker import LocalBroker

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def free_port_pair() -> int:
    """A port p with p and p+1 free (client and controller listeners)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port + 1)) != 0:
                return port
    raise RuntimeError("no free pair of ports found")


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | None]:
    """The broker this test session started, or None when RDV_KAFKA_BOOTSTRAP is set."""
    if os.environ.get("RDV_KAFKA_BOOTSTRAP"):
        yield None
        return
    broker = LocalBroker(port=free_port_pair(), state_dir=tmp_path_factory.mktemp("kafka"))
    took = broker.start(timeout_s=120)
    print(f"\nlocal Kafka broker on {broker.bootstrap} ready in {took:.1f} s")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker | None) -> str:
    if local_broker is not None:
        return local_broker.bootstrap
    external = os.environ["RDV_KAFKA_BOOTSTRAP"]
    wait_for_broker(external, timeout_s=60)
    return external


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.")


@pytest.fixture
def topics(kafka_settings: KafkaSettings) -> Topics:
    """The repo's topics under this test's prefix, created on the broker."""
    catalog = load_topics(prefix=kafka_settings.topic_prefix)
    catalog.ensure(Admin(admin_config(kafka_settings)))
    return catalog


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every log line of the process at DEBUG, as the services' JSON formatter writes it
    (for tests that a secret never reaches a log)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
