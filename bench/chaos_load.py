"""The chaos harness's load: an open-loop HTTP load on the gateway, in a background
thread, that runs until told to stop. Requests leave on a fixed schedule whatever the
server does; each is recorded with its wall-clock due time, its status (0 when no HTTP
response came), its latency from the due time and the request id the gateway gave it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

NO_RESPONSE = 0  # a connection was made (or reused) but no HTTP response came back
REFUSED = -1  # no connection could be made (nothing listening)


@dataclass(frozen=True)
class Sent:
    """One request: when it was due (wall s), how it ended, how long it took."""

    due: float
    status: int  # HTTP status, NO_RESPONSE or REFUSED
    latency_ms: float
    request_id: str = ""


@dataclass
class Load:
    """Sends ``rate`` requests/s to ``url`` with ``body`` from ``start()`` to ``stop()``."""

    host: str
    port: int
    path: str
    body: dict[str, object]
    rate: float
    timeout_s: float = 10.0
    results: list[Sent] = field(default_factory=list)
    max_lag_ms: float = 0.0  # how far the generator itself fell behind its schedule
    pending: set[float] = field(default_factory=set)  # due times of requests in flight
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def raw(self) -> bytes:
        payload = json.dumps(self.body).encode()
        return (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
        ).encode() + payload

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self) -> list[Sent]:
        """Stop sending, wait for the answers still due; returns every result so far."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.results

    async def _run(self) -> None:
        pool, raw = _Pool(self.host, self.port), self.raw
        loop = asyncio.get_running_loop()
        start_mono, start_wall = loop.time() + 0.05, time.time() + 0.05
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while not self._stop.is_set():
            due = start_mono + i / self.rate
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the schedule itself, not synchronisation
            else:
                self.max_lag_ms = max(self.max_lag_ms, -wait * 1000.0)
            task = asyncio.ensure_future(self._one(pool, raw, due, start_wall + i / self.rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.gather(*tasks)
        pool.close()

    async def _one(self, pool: _Pool, raw: bytes, due_mono: float, due_wall: float) -> None:
        loop = asyncio.get_running_loop()
        self.pending.add(due_wall)
        try:
            status, rid = await asyncio.wait_for(pool.send(raw), self.timeout_s)
        except (
            TimeoutError,
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            IndexError,
        ) as exc:
            status, rid = (REFUSED if isinstance(exc, ConnectionRefusedError) else NO_RESPONSE), ""
        latency = (loop.time() - due_mono) * 1000.0
        self.results.append(Sent(due_wall, status, latency, rid))
        self.pending.discard(due_wall)

    def oldest_pending(self) -> float | None:
        """The due time of the oldest request still waiting for its answer."""
        return min(self.pending.copy(), default=None)


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Pool:
    """Keep-alive HTTP/1.1 connections to one host: one request at a time on each, a new
    connection when none is idle. An idle connection the server has closed is dropped
    before use; a request is never sent twice (a POST the server may have received and
    then lost counts as no response)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Conn] = []

    async def send(self, raw: bytes) -> tuple[int, str]:
        conn = None
        while self.idle and conn is None:
            conn = self.idle.pop()
            if conn[0].at_eof() or conn[1].is_closing():  # closed by the server meanwhile
                conn[1].close()
                conn = None
        if conn is None:
            conn = await asyncio.open_connection(self.host, self.port)
        try:
            head = await self._exchange(conn, raw)
        except BaseException:  # failed, or cancelled (timed out): never reuse it
            conn[1].close()
            raise
        status = int(head[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head[1:])}
        if headers.get("connection", "").lower() == "close":
            conn[1].close()
        else:
            self.idle.append(conn)
        return status, headers.get("x-rdv-request-id", "")

    @staticmethod
    async def _exchange(conn: Conn, raw: bytes) -> list[str]:
        reader, writer = conn
        writer.write(raw)
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        return head

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
