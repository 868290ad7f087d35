"""Streamed chat completions (``stream: true``): a streaming request's deltas, grant and
reply become OpenAI ``chat.completion.chunk`` server-sent events.

The route waits for the rendezvous's grant (or the reply, whichever comes first)
before it answers, so every error until then is a plain HTTP error, as without
streaming, and the headers can name the granted model. Deltas that come before the
grant wait (bounded, ``MAX_EARLY_DELTAS``); the granted model's are then sent, in
order of their place in the answer, and every other model's are dropped. The reply
ends the stream: the text it has beyond what was streamed, a chunk with the finish
reason (and the ``rdv`` extension: model, reason, the model's own finish reason),
the usage chunk when ``stream_options.include_usage`` asked for it, and
``data: [DONE]``. A reply that does not extend the streamed text wins: it is logged
and counted (``rdv_gateway_stream_mismatches_total``) and its text past the length
already streamed is sent, since sent text cannot be taken back. An error reply, or
no reply by the deadline, once streaming has started, is an ``error`` event with the
JSON body a non-streamed request would get.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.common.decide import OOD_SAFE_REPLY
from services.common.errors import RendezvousError
from services.common.messages import Delta, Reply, StreamGrant
from services.gateway.errors import NoAnswerError, ReplyError, error_body
from services.gateway.metrics import (
    DROPPED_STREAM_RECORDS,
    LATENCY,
    STREAM_MISMATCHES,
    STREAMS,
)
from services.gateway.openai.schemas import (
    ChunkChoice,
    ChunkDelta,
    FinishReason,
    FunctionCall,
    OpenAIChatChunk,
    StreamEnd,
    ToolCallDelta,
    Usage,
    chat_output,
    finish_of,
    usage_of,
)
from services.gateway.pending import StreamInbox, StreamItem
from services.gateway.service import Gateway

log = logging.getLogger("rdv.gateway")

MAX_EARLY_DELTAS = 4096
"""Deltas kept per request while no model is granted; more are dropped (counted)."""

DONE = "data: [DONE]\n\n"


@dataclass
class StreamedText:
    """The text a streaming client was sent, built from its request's deltas and grant."""

    granted: StreamGrant | None = None
    sent: str = ""
    early: list[Delta] = field(default_factory=list)

    def feed(self, item: Delta | StreamGrant) -> str:
        """Take a delta or the grant; returns the text to send now."""
        if isinstance(item, StreamGrant):
            if self.granted is not None:
                return ""  # a grant again (a rendezvous restart): the first one stands
            self.granted = item
            early = sorted((d for d in self.early if d.model == item.model), key=_place)
            self.early.clear()
            return "".join(self._append(d) for d in early)
        if self.granted is None:
            if len(self.early) >= MAX_EARLY_DELTAS:
                DROPPED_STREAM_RECORDS.labels("delta", "overflow").inc()
            else:
                self.early.append(item)
            return ""
        return self._append(item) if item.model == self.granted.model else ""

    def finish(self, text: str) -> tuple[str, bool]:
        """The final answer's text: what remains to send, and whether it extends the text
        sent so far (if not, its part past the length already sent)."""
        return text[len(self.sent) :], text.startswith(self.sent)

    def _append(self, delta: Delta) -> str:
        """The part of ``delta`` past what was sent (nothing after a gap, or for a delta
        that disagrees with the text it overlaps: the reply settles those)."""
        known = len(self.sent)
        if delta.offset > known or delta.offset + len(delta.text) <= known:
            return ""
        overlap = self.sent[delta.offset :]
        if not delta.text.startswith(overlap):
            return ""
        new = delta.text[len(overlap) :]
        self.sent += new
        return new


def _place(delta: Delta) -> tuple[int, int]:
    return delta.offset, delta.seq


class ChatStream:
    """One streamed completion: waits for its start, then yields its events."""

    def __init__(
        self,
        gateway: Gateway,
        inbox: StreamInbox,
        *,
        request_id: str,
        endpoint: str,
        due_ms: float,
        deadline_ms: int,
        started_ms: float,
        include_usage: bool,
        tool: tuple[str, str] | None = None,
    ) -> None:
        self._gateway = gateway
        self._inbox = inbox
        self.request_id = request_id
        self._endpoint = endpoint
        self._due_ms = due_ms
        self._deadline_ms = deadline_ms
        self._started_ms = started_ms
        self._include_usage = include_usage
        self._tool = tool  # (function name, call id): the text streams as its arguments
        self._created = int(time.time())
        self.text = StreamedText()
        self.reply: Reply | None = None
        self._ready = ""  # text taken in before the first event
        self._backlog: list[StreamItem] = []

    @property
    def model(self) -> str:
        """The model the chunks name: the granted one, else the one that answered."""
        if self.text.granted is not None:
            return self.text.granted.model
        return (self.reply.model if self.reply else None) or self._endpoint

    async def start(self) -> None:
        """Wait for the grant or the reply; raises what a non-streamed request would
        (no answer by the deadline, an error reply). The caller closes the request
        when this raises; afterwards ``events`` does."""
        while self.text.granted is None and self.reply is None:
            items = await self._take()
            taken = 0
            while taken < len(items) and self.text.granted is None and self.reply is None:
                self._ready += self._take_in(items[taken])
                taken += 1
            self._backlog = items[taken:]  # for events(), one chunk each
        if self.reply is not None and self.reply.error is not None:
            raise _reply_error(self.reply)

    async def events(self) -> AsyncIterator[str]:
        """The server-sent events, until the reply (or an error, or the deadline)."""
        outcome = "disconnected"
        try:
            if self.reply is not None and self.reply.reason == OOD_SAFE_REPLY:
                self._tool = None  # the gate's safe reply is text, not a call
            yield self._chunk(self._delta(self._ready, first=True), first=True)
            while self.reply is None:
                for item in await self._take():
                    if text := self._take_in(item):
                        yield self._chunk(self._delta(text))
            if self.reply.error is not None:
                raise _reply_error(self.reply)
            for event in self._ending(self.reply):
                yield event
            outcome = "done"
        except RendezvousError as exc:
            outcome = "error"
            yield error_event(exc)
        finally:
            self._gateway.pending.close(self.request_id)
            STREAMS.labels(self._endpoint, outcome).inc()
            LATENCY.labels(self._endpoint).observe(
                (self._gateway.now_ms() - self._started_ms) / 1000.0
            )

    async def _take(self) -> list[StreamItem]:
        if self._backlog:
            items, self._backlog = self._backlog, []
            return items
        try:
            return await self._inbox.take((self._due_ms - self._gateway.now_ms()) / 1000.0)
        except TimeoutError:
            raise NoAnswerError(f"no answer by the deadline ({self._deadline_ms} ms)") from None

    def _take_in(self, item: StreamItem) -> str:
        """Apply what arrived; the text to send. Raises a failure that arrived."""
        if self.reply is not None:
            return ""  # the reply ended it
        if isinstance(item, RendezvousError):
            raise item
        if isinstance(item, Reply):
            self.reply = item
            return ""
        return self.text.feed(item)

    def _ending(self, reply: Reply) -> list[str]:
        out = chat_output(reply.output)
        rest, agreed = self.text.finish(out.text)
        if not agreed:
            STREAM_MISMATCHES.labels(self._endpoint).inc()
            log.warning(
                "the answer does not extend the streamed text",
                extra={
                    "request_id": self.request_id,
                    "model": reply.model,
                    "granted": None if self.text.granted is None else self.text.granted.model,
                    "streamed_chars": len(self.text.sent),
                    "answer_chars": len(out.text),
                },
            )
        events = [self._chunk(self._delta(rest))] if rest else []
        finish: FinishReason = finish_of(out)
        if finish == "stop" and self._tool is not None:
            finish = "tool_calls"
        end = StreamEnd(model=reply.model, reason=reply.reason, finish_reason=out.finish_reason)
        events.append(self._chunk(ChunkDelta(), finish=finish, end=end))
        if self._include_usage:
            events.append(self._event(self._body([], usage=usage_of(out))))
        events.append(DONE)
        return events

    def _delta(self, text: str, *, first: bool = False) -> ChunkDelta:
        """``text`` as content, or as the tool call's arguments (the first chunk names
        the call)."""
        role: Literal["assistant"] | None = "assistant" if first else None
        if self._tool is None:
            return ChunkDelta(role=role, content=text)
        name, call_id = self._tool
        call = ToolCallDelta(
            id=call_id if first else None,
            type="function" if first else None,
            function=FunctionCall(name=name if first else None, arguments=text),
        )
        return ChunkDelta(role=role, tool_calls=[call])

    def _chunk(
        self,
        delta: ChunkDelta,
        *,
        first: bool = False,
        finish: FinishReason | None = None,
        end: StreamEnd | None = None,
    ) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return self._event(self._body([choice], end=end, ood=first))

    def _body(
        self,
        choices: list[ChunkChoice],
        *,
        usage: Usage | None = None,
        end: StreamEnd | None = None,
        ood: bool = False,
    ) -> OpenAIChatChunk:
        grant, reply = self.text.granted, self.reply
        return OpenAIChatChunk(
            id=f"chatcmpl-{self.request_id}",
            created=self._created,
            model=self.model,
            choices=choices,
            usage=usage,
            ood=None if not ood else grant.ood if grant else reply.ood if reply else None,
            rdv=end,
        )

    @staticmethod
    def _event(body: BaseModel) -> str:
        return f"data: {body.model_dump_json(exclude_none=True)}\n\n"


class EventStream(StreamingResponse):
    """``text/event-stream`` that runs ``on_close`` however the response ends, even when
    the client left before the first event (then the events never start)."""

    def __init__(
        self, events: AsyncIterator[str], *, on_close: Callable[[], None], headers: dict[str, str]
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def error_event(exc: Exception) -> str:
    """An SSE ``error`` event with the JSON body the error gets without streaming."""
    _, body = error_body(exc)
    return f"event: error\ndata: {json.dumps(body)}\n\n"


def _reply_error(reply: Reply) -> ReplyError:
    assert reply.error is not None
    return ReplyError(
        reply.error.code, reply.error.message, model=reply.model, reason=reply.reason, ood=reply.ood
    )
