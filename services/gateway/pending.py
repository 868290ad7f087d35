"""Requests waiting for their reply: request id -> asyncio future, or for a streaming
request, request id -> ``StreamInbox`` (its deltas, its grant and its reply, in the
order they were read).

Only the event loop's thread touches the table. The reply listener thread hands each
record to ``deliver`` (which decodes it there) and the result crosses to the loop with
``call_soon_threadsafe``. A record that matches no waiting request (or a delta or grant
for a request that does not stream) is counted and dropped; it never reaches another
request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable

from services.common.codec import decode_reply_record, kind_of
from services.common.errors import MessageError, RendezvousError
from services.common.messages import Delta, Reply, ReplyRecord
from services.gateway.errors import OverloadedError
from services.gateway.metrics import (
    DROPPED_REPLIES,
    DROPPED_STREAM_RECORDS,
    IN_FLIGHT,
    PENDING_BYTES,
    SHED,
)

log = logging.getLogger("rdv.gateway.replies")

RECENT = 10_000
"""How many finished request ids are remembered to tell a late or duplicate reply
(reason ``finished``) from one that was never ours (reason ``unknown``)."""


MAX_QUEUED_DELTAS = 4096
"""Deltas a streaming request's inbox holds before its reader takes them; more are
dropped (counted): the reply still carries the whole answer."""

StreamItem = ReplyRecord | RendezvousError


class StreamInbox:
    """What reached a streaming request, oldest first (loop thread only)."""

    def __init__(self) -> None:
        self._items: deque[StreamItem] = deque()
        self._deltas = 0
        self._ready = asyncio.Event()

    def put(self, item: StreamItem) -> None:
        if isinstance(item, Delta):
            if self._deltas >= MAX_QUEUED_DELTAS:
                DROPPED_STREAM_RECORDS.labels("delta", "overflow").inc()
                return
            self._deltas += 1
        self._items.append(item)
        self._ready.set()

    async def take(self, timeout_s: float) -> list[StreamItem]:
        """Everything queued, once there is something; TimeoutError after ``timeout_s``."""
        if not self._items:
            self._ready.clear()
            await asyncio.wait_for(self._ready.wait(), max(timeout_s, 0.0))
        items = list(self._items)
        self._items.clear()
        self._deltas = 0
        return items


class PendingReplies:
    """The table of waiting requests, bound to the event loop that serves them."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        self.max_bytes = max_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._streams: dict[str, StreamInbox] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of the requests waiting now (as given to ``open``)."""
        return self._bytes

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop that runs the routes (from the app's lifespan)."""
        self._loop = loop

    def __len__(self) -> int:
        return len(self._waiting) + len(self._streams)

    def open(self, request_id: str, size: int = 0) -> asyncio.Future[Reply]:
        """A future that gets the reply to ``request_id``, a request of ``size`` bytes
        (loop thread only). OverloadedError when the byte budget would be passed."""
        if self._loop is None:
            raise RuntimeError("PendingReplies is not bound to an event loop")
        self._check_new(request_id, size)
        fut: asyncio.Future[Reply] = self._loop.create_future()
        self._waiting[request_id] = fut
        self._take(request_id, size)
        return fut

    def open_stream(self, request_id: str, size: int = 0) -> StreamInbox:
        """The inbox of a streaming request (loop thread only); close it with ``close``.
        OverloadedError when the byte budget would be passed."""
        if self._loop is None:
            raise RuntimeError("PendingReplies is not bound to an event loop")
        self._check_new(request_id, size)
        inbox = StreamInbox()
        self._streams[request_id] = inbox
        self._take(request_id, size)
        return inbox

    def _take(self, request_id: str, size: int) -> None:
        self._sizes[request_id] = size
        self._bytes += size
        PENDING_BYTES.set(self._bytes)
        IN_FLIGHT.inc()

    def close(self, request_id: str) -> None:
        """Stop waiting for ``request_id`` (loop thread only); later records are dropped."""
        fut = self._waiting.pop(request_id, None)
        inbox = self._streams.pop(request_id, None)
        if fut is None and inbox is None:
            return
        IN_FLIGHT.dec()
        self._bytes -= self._sizes.pop(request_id, 0)
        PENDING_BYTES.set(self._bytes)
        if fut is not None:
            fut.cancel()  # no-op when done; keeps an unawaited exception from being logged
        self._finished[request_id] = None
        if len(self._finished) > RECENT:
            self._finished.popitem(last=False)

    def deliver(self, value: bytes | None) -> None:
        """Hand over one record of the reply partition (any thread). Raises
        ``MessageError`` for bytes that are no reply, delta or grant (counted; the bus
        dead-letters it)."""
        try:
            record = decode_reply_record(value)
        except MessageError as exc:
            DROPPED_REPLIES.labels("undecodable").inc()
            log.warning("undecodable reply dropped", extra={"error": exc.message})
            raise
        self._call(self._resolve, record)

    def fail(self, request_id: str, exc: RendezvousError) -> None:
        """Fail the waiting request ``request_id`` with ``exc`` (any thread)."""
        self._call(self._fail, request_id, exc)

    def cancel_all(self) -> None:
        """Stop waiting for everything (shutdown, loop thread only)."""
        for request_id in [*self._waiting, *self._streams]:
            self.close(request_id)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            DROPPED_REPLIES.labels("unknown").inc()
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed between the check and the call
            DROPPED_REPLIES.labels("unknown").inc()

    def _resolve(self, record: ReplyRecord) -> None:
        inbox = self._streams.get(record.request_id)
        if inbox is not None:
            inbox.put(record)
            return
        if not isinstance(record, Reply):
            self._drop_stream_record(record)
            return
        reply = record
        fut = self._waiting.get(reply.request_id)
        if fut is None or fut.done():
            finished = fut is not None or reply.request_id in self._finished
            reason = "finished" if finished else "unknown"
            DROPPED_REPLIES.labels(reason).inc()
            log.info("reply dropped", extra={"request_id": reply.request_id, "reason": reason})
            return
        fut.set_result(reply)

    def _check_new(self, request_id: str, size: int) -> None:
        if request_id in self._waiting or request_id in self._streams:
            raise ValueError(f"request {request_id} is waiting already")
        if self._bytes + size > self.max_bytes:
            SHED.labels("pending_bytes").inc()
            raise OverloadedError(
                f"requests of {self._bytes} bytes are waiting already (at most "
                f"{self.max_bytes}); retry later"
            )

    def _drop_stream_record(self, record: ReplyRecord) -> None:
        rid = record.request_id
        if rid in self._waiting:
            reason = "not_streaming"
        else:
            reason = "finished" if rid in self._finished else "unknown"
        DROPPED_STREAM_RECORDS.labels(kind_of(type(record)), reason).inc()

    def _fail(self, request_id: str, exc: RendezvousError) -> None:
        if (inbox := self._streams.get(request_id)) is not None:
            inbox.put(exc)
            return
        fut = self._waiting.get(request_id)
        if fut is not None and not fut.done():
            fut.set_exception(exc)
