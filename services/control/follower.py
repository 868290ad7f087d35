"""Following the control topic live: a background thread that reads it from the start,
folds every record into a ControlState and calls back on each model or policy change.
``start`` returns once everything written before it has been applied, so a service
starts with the policies in force.

A record that cannot be used (not a control entry, an entry the state refuses, or a
callback that fails on it) is logged with its position and counted in
``rdv_control_unusable_records_total``; it never stops the follower nor the service's
start. It is not dead-lettered: every process follows the control topic from its start
on every start, so a dead letter per reader would repeat it without end. The control
API writes only valid entries; anything else on the topic is an operator's to remove.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from prometheus_client import Counter

from services.common.codec import decode_control
from services.common.errors import KafkaUnavailableError, MessageError
from services.common.kafka import (
    Consumer,
    Record,
    assigned_reader,
    consumer_config,
    retry_transient,
)
from services.common.messages import ControlEntry
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.control.state import ControlState

log = logging.getLogger("rdv.control")

UNUSABLE = Counter(
    "rdv_control_unusable_records_total",
    "Control records that could not be applied (unreadable, refused, failing callback)",
    ["reason"],
)

OnChange = Callable[[ControlState, str, ControlEntry | None], None]
Check = Callable[[ControlEntry], None]
"""Raises for an entry the service would refuse (e.g. a policy its parser rejects): the
record is then counted as refused and not folded in, like one the state refuses."""


class ControlFollower:
    """Applies control records as they come; ``on_change(state, kind, entry)``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Topics,
        on_change: OnChange,
        poll_s: float = 0.2,
        check: Check | None = None,
    ) -> None:
        self.state = ControlState()
        self._on_change = on_change
        self._check = check
        self._topic = topics.control
        self._partitions = topics.partitions("control")
        self._poll_s = poll_s
        config = consumer_config(
            kafka,
            f"rdv-control-{uuid.uuid4().hex}",
            "rdv-control-follower",
            {"enable.auto.commit": "false"},
            defaults=assigned_reader(),
        )
        self._consumer = Consumer(config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="control-follower")
        self.applied = 0

    def start(self, timeout_s: float = 30.0) -> ControlFollower:
        """Read everything up to the current end, then follow in the background."""
        until = time.monotonic() + timeout_s
        ends = retry_transient(
            lambda: self._consumer.end_offsets(self._topic, self._partitions, timeout_s),
            f"read the end of {self._topic}",
            until,
        )
        self._consumer.assign_from(self._topic, dict.fromkeys(range(self._partitions), 0))
        left = {p: end for p, end in ends.items() if end > 0}
        while left:
            if time.monotonic() > until:
                raise KafkaUnavailableError(f"could not read {self._topic} to its end")
            for rec in self._consumer.consume(500, self._poll_s):
                self._apply(rec)
                if rec.offset + 1 >= left.get(rec.partition, 0):
                    left.pop(rec.partition, None)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                records = self._consumer.consume(100, self._poll_s)
            except Exception:  # the follower must outlive a transport error
                log.exception("control follower error")
                self._stop.wait(self._poll_s)
                continue
            for rec in records:
                self._apply(rec)

    def _apply(self, rec: Record) -> None:
        """Apply one record; never raises (see the module docstring)."""
        where = {"partition": rec.partition, "offset": rec.offset}
        try:
            entry = decode_control(rec.value)
        except MessageError as exc:
            UNUSABLE.labels("unreadable").inc()
            log.warning("unreadable control record", extra={"error": str(exc), **where})
            return
        try:
            if entry is not None and self._check is not None:
                self._check(entry)
            kind = self.state.apply(rec.key, entry)
        except Exception as exc:  # noqa: BLE001 - one entry, not the follower
            UNUSABLE.labels("refused").inc()
            log.warning("control record refused", extra={"error": str(exc), **where})
            return
        self.applied += 1
        if kind is None:
            return
        try:
            self._on_change(self.state, kind, entry)
        except Exception:
            UNUSABLE.labels("callback").inc()
            log.exception("control change callback failed", extra=where)
