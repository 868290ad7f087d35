"""Fixtures of the gateway's unit tests: settings, topics, an in-memory bus, a client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.topics import Topics, load_topics
from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, endpoint_settings, running, unit_settings


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    return unit_settings(tmp_path)


@pytest.fixture
def chat_settings(tmp_path: Path) -> GatewaySettings:
    """Endpoint chat (5 s) with the roster smol, smol-tight."""
    return endpoint_settings(tmp_path, "chat", ["smol", "smol-tight"])


@pytest.fixture
def topics() -> Topics:
    return load_topics(prefix="unit.")


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


@pytest.fixture
def client(settings: GatewaySettings, bus: FakeBus, topics: Topics) -> Iterator[httpx.Client]:
    with running(build_app(settings, bus=bus, topics=topics)) as c:
        yield c
