"""Structured logs: one JSON object per line, extras as keys, root handlers replaced."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from services.common.logs import JsonFormatter, configure_logging

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def restore_root() -> Iterator[logging.Logger]:
    """Give the test the root logger and put its handlers and level back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger whose records are formatted by JsonFormatter into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("gateway"))
    logger = logging.getLogger("rdv.test.logs")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_record_with_extras_is_one_json_line(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("request accepted", extra={"request_id": "req-1", "models": 3, "ok": True})
    [line] = _lines(stream)
    assert line == {
        "ts": line["ts"],
        "level": "info",
        "service": "gateway",
        "logger": "rdv.test.logs",
        "msg": "request accepted",
        "request_id": "req-1",
        "models": 3,
        "ok": True,
    }
    assert TS.match(line["ts"]), line["ts"]
    assert "exc" not in line


@pytest.mark.parametrize(
    ("method", "level"),
    [("debug", "debug"), ("info", "info"), ("warning", "warning"), ("error", "error")],
)
def test_level_is_lower_case(
    capture: tuple[logging.Logger, io.StringIO], method: str, level: str
) -> None:
    logger, stream = capture
    getattr(logger, method)("event")
    assert _lines(stream)[0]["level"] == level


def test_message_arguments_are_interpolated(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("took %d ms on %s", 12, "p3")
    assert _lines(stream)[0]["msg"] == "took 12 ms on p3"


def test_standard_record_attributes_are_left_out(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.info("plain")
    line = _lines(stream)[0]
    assert set(line) == {"ts", "level", "service", "logger", "msg"}


def test_values_json_cannot_encode_are_written_as_strings(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.info("odd values", extra={"where": frozenset({"a"}), "obj": object()})
    line = _lines(stream)[0]
    assert line["where"] == "frozenset({'a'})"
    assert line["obj"].startswith("<object object at")


def test_each_record_is_exactly_one_line(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("multi\nline message", extra={"note": "a\nb"})
    logger.info("second")
    lines = _lines(stream)
    assert [line["msg"] for line in lines] == ["multi\nline message", "second"]
    assert lines[0]["note"] == "a\nb"


def test_exception_adds_an_exc_field(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    try:
        raise RuntimeError("model exploded")
    except RuntimeError:
        logger.exception("batch failed", extra={"records": 4})
    [line] = _lines(stream)
    assert line["level"] == "error"
    assert line["msg"] == "batch failed"
    assert line["records"] == 4
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: model exploded" in line["exc"]


def test_formatter_can_be_used_directly() -> None:
    record = logging.makeLogRecord(
        {
            "name": "rdv.x",
            "msg": "hello %s",
            "args": ("you",),
            "levelname": "WARNING",
            "created": 0.0,
            "msecs": 5.0,
            "shard": 2,
        }
    )
    line = json.loads(JsonFormatter("worker").format(record))
    assert line == {
        "ts": "1970-01-01T00:00:00.005Z",
        "level": "warning",
        "service": "worker",
        "logger": "rdv.x",
        "msg": "hello you",
        "shard": 2,
    }


def test_configure_logging_replaces_root_handlers(
    restore_root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    old = logging.NullHandler()
    restore_root.addHandler(old)
    configure_logging("rendezvous", level="debug")
    assert old not in restore_root.handlers
    assert len(restore_root.handlers) == 1
    [handler] = restore_root.handlers
    assert isinstance(handler, logging.StreamHandler)
    assert isinstance(handler.formatter, JsonFormatter)
    assert restore_root.level == logging.DEBUG

    logging.getLogger("rdv.some.module").debug("decided", extra={"winner": "m2"})
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = [json.loads(text) for text in captured.err.splitlines()]
    assert line["service"] == "rendezvous"
    assert line["logger"] == "rdv.some.module"
    assert line["level"] == "debug"
    assert line["winner"] == "m2"


def test_configure_logging_twice_keeps_one_handler(restore_root: logging.Logger) -> None:
    configure_logging("a")
    configure_logging("b", level="WARNING")
    assert len(restore_root.handlers) == 1
    formatter = restore_root.handlers[0].formatter
    assert isinstance(formatter, JsonFormatter)
    assert formatter.service == "b"
    assert restore_root.level == logging.WARNING


def test_configure_logging_level_filters_records(
    restore_root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("control", level="warning")
    log = logging.getLogger("rdv.filter")
    log.info("dropped")
    log.warning("kept")
    msgs = [json.loads(text)["msg"] for text in capsys.readouterr().err.splitlines()]
    assert msgs == ["kept"]


def test_extras_cannot_replace_the_fixed_fields(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.warning("hello", extra={"level": "fake", "service": "other", "loop": "x"})
    [line] = _lines(stream)
    assert (line["level"], line["loop"]) == ("warning", "x")
    assert line["service"] != "other"
