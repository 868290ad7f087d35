"""Following the control topic live: a background thread that reads it from the start,
folds every record into a ControlState and calls back on each model or policy change.
``start`` returns once everything written before it has been applied, so a service
starts with the policies in force."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from services.common.codec import decode_control
from services.common.errors import KafkaUnavailableError, MessageError
from services.common.kafka import Consumer, consumer_config, retry_transient
from services.common.messages import ControlEntry
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.control.state import ControlState

log = logging.getLogger("rdv.control")

OnChange = Callable[[ControlState, str, ControlEntry | None], None]


class ControlFollower:
    """Applies control records as they come; ``on_change(state, kind, entry)``."""

    def __init__(
        self, kafka: KafkaSettings, topics: Topics, on_change: OnChange, poll_s: float = 0.2
    ) -> None:
        self.state = ControlState()
        self._on_change = on_change
        self._topic = topics.control
        self._partitions = topics.partitions("control")
        self._poll_s = poll_s
        config = consumer_config(kafka, f"rdv-control-{uuid.uuid4().hex}", "rdv-control-follower")
        self._consumer = Consumer(config | {"enable.auto.commit": "false"})
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
                self._apply(rec.key, rec.value)
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
                for rec in self._consumer.consume(100, self._poll_s):
                    self._apply(rec.key, rec.value)
            except Exception:  # the follower must outlive a bad record or a callback bug
                log.exception("control follower error")

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        try:
            entry = decode_control(value)
        except MessageError as exc:
            log.warning("unreadable control record", extra={"error": str(exc)})
            return
        kind = self.state.apply(key, entry)
        self.applied += 1
        if kind is not None:
            self._on_change(self.state, kind, entry)
