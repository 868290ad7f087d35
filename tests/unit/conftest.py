"""Fixtures of the unit tests that touch the local broker's code without a broker."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack import broker


@pytest.fixture
def isolated_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No external broker, and broker state and jar cache under tmp_path, not the repo."""
    monkeypatch.delenv("RDV_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("RDV_KAFKA_PORT", raising=False)
    monkeypatch.setattr(broker, "PROJECT_ROOT", tmp_path / "project")
    monkeypatch.setattr(broker, "CACHE", tmp_path / "cache")


@pytest.fixture
def no_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another program (this socket) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])
