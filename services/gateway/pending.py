"""Requests waiting for their reply: request id -> asyncio future.

Only the event loop's thread touches the table. The reply listener thread hands each
record to ``deliver`` (which decodes it there) and the result crosses to the loop with
``call_soon_threadsafe``. A reply that matches no waiting request is counted and
dropped; it never reaches another request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from services.common.codec import decode
from services.common.errors import MessageError, RendezvousError
from services.common.messages import Reply
from services.gateway.metrics import DROPPED_REPLIES, IN_FLIGHT

log = logging.getLogger("rdv.gateway.replies")

RECENT = 10_000
"""How many finished request ids are remembered to tell a late or duplicate reply
(reason ``finished``) from one that was never ours (reason ``unknown``)."""


class PendingReplies:
    """The table of waiting requests, bound to the event loop that serves them."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop that runs the routes (from the app's lifespan)."""
        self._loop = loop

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self, request_id: str) -> asyncio.Future[Reply]:
        """A future that gets the reply to ``request_id`` (loop thread only)."""
        if self._loop is None:
            raise RuntimeError("PendingReplies is not bound to an event loop")
        if request_id in self._waiting:
            raise ValueError(f"request {request_id} is waiting already")
        fut: asyncio.Future[Reply] = self._loop.create_future()
        self._waiting[request_id] = fut
        IN_FLIGHT.inc()
        return fut

    def close(self, request_id: str) -> None:
        """Stop waiting for ``request_id`` (loop thread only); later replies are dropped."""
        fut = self._waiting.pop(request_id, None)
        if fut is None:
            return
        IN_FLIGHT.dec()
        fut.cancel()  # no-op when done; keeps an unawaited exception from being logged
        self._finished[request_id] = None
        if len(self._finished) > RECENT:
            self._finished.popitem(last=False)

    def deliver(self, value: bytes | None) -> None:
        """Hand over one record of the reply partition (any thread). Raises
        ``MessageError`` for bytes that are no reply (counted; the bus dead-letters it)."""
        try:
            reply = decode(value, Reply)
        except MessageError as exc:
            DROPPED_REPLIES.labels("undecodable").inc()
            log.warning("undecodable reply dropped", extra={"error": exc.message})
            raise
        self._call(self._resolve, reply)

    def fail(self, request_id: str, exc: RendezvousError) -> None:
        """Fail the waiting request ``request_id`` with ``exc`` (any thread)."""
        self._call(self._fail, request_id, exc)

    def cancel_all(self) -> None:
        """Stop waiting for everything (shutdown, loop thread only)."""
        for request_id in list(self._waiting):
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

    def _resolve(self, reply: Reply) -> None:
        fut = self._waiting.get(reply.request_id)
        if fut is None or fut.done():
            finished = fut is not None or reply.request_id in self._finished
            reason = "finished" if finished else "unknown"
            DROPPED_REPLIES.labels(reason).inc()
            log.info("reply dropped", extra={"request_id": reply.request_id, "reason": reason})
            return
        fut.set_result(reply)

    def _fail(self, request_id: str, exc: RendezvousError) -> None:
        fut = self._waiting.get(request_id)
        if fut is not None and not fut.done():
            fut.set_exception(exc)
