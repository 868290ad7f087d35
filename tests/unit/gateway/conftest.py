"""Fixtures of the gateway's unit tests: settings, topics, an in-memory bus, a client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.topics import Topics, load_topics
from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, running, unit_settings


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    return unit_settings(tmp_path)


@pytest.fixture
def chat_settings(tmp_path: Path) -> GatewaySettings:
    """Endpoint chat (5 s) with the roster smol, smol-tight."""
    policies = tmp_path / "chat-policies"
    policies.mkdir()
    (policies / "chat.yaml").write_text(
        "endpoint: chat\ndeadline_ms: 5000\nmodels: [smol, smol-tight]\n"
        "stages: [{until_ms: deadline, accept: any}]\n"
    )
    return GatewaySettings(policies=policies, max_body_bytes=65536, max_loop_lag_ms=60_000)


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
