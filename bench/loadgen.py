"""An open-loop HTTP load generator: requests leave on a fixed schedule whatever the
server does, and each latency is measured from the request's *scheduled* time, so a
stalled server shows up in the figures instead of slowing the generator down (no
coordinated omission). Plain asyncio streams and HTTP/1.1 keep-alive: cheap enough to
share two cores with the system under test."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


@dataclass
class Result:
    """One request: when it was due, how it ended, how long it took from then."""

    due_s: float
    status: int  # HTTP status; 0 = connection error or timeout
    latency_ms: float
    model: str = ""


@dataclass
class Run:
    rate: float
    duration_s: float
    results: list[Result] = field(default_factory=list)
    max_lag_ms: float = 0.0  # how far the generator itself fell behind its schedule

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out


class _Pool:
    """Keep-alive connections to one host; opens more when all are busy."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.sem = asyncio.Semaphore(limit)

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A connection and whether it is a reused one (the server may have closed it)."""
        await self.sem.acquire()
        if self.idle:
            return (*self.idle.pop(), True)
        return (*await asyncio.open_connection(self.host, self.port), False)

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            self.idle.append(conn)
        self.sem.release()

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _request(pool: _Pool, raw: bytes, timeout_s: float) -> tuple[int, str]:
    reader, writer, reused = await pool.get()
    keep: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        for attempt in (1, 2):
            try:
                writer.write(raw)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
                break
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                # a keep-alive connection the server closed while it sat idle: like any
                # HTTP client, send again once on a fresh connection
                if not reused or attempt == 2 or getattr(exc, "partial", b""):
                    raise
                writer.close()
                reader, writer = await asyncio.open_connection(pool.host, pool.port)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        await reader.readexactly(int(headers.get("content-length", "0")))
        keep = (reader, writer) if headers.get("connection", "").lower() != "close" else None
        return status, headers.get("x-rdv-model", "")
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        writer.close()
        return 0, ""
    finally:
        pool.put(keep)


async def run_open_loop(
    url_host: str,
    port: int,
    path: str,
    body: dict[str, object],
    *,
    rate: float,
    duration_s: float,
    connections: int = 512,
    timeout_s: float = 10.0,
) -> Run:
    """Send ``rate`` requests per second for ``duration_s``; wait for every answer."""
    payload = json.dumps(body).encode()
    raw = (
        f"POST {path} HTTP/1.1\r\nhost: {url_host}:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    pool = _Pool(url_host, port, connections)
    run = Run(rate, duration_s)
    count = int(rate * duration_s)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def one(due: float) -> None:
        status, model = await _request(pool, raw, timeout_s)
        run.results.append(Result(due - start, status, (loop.time() - due) * 1000.0, model))

    tasks = []
    for i in range(count):
        due = start + i / rate
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)  # the schedule itself, not synchronisation
        else:
            run.max_lag_ms = max(run.max_lag_ms, -wait * 1000.0)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    await pool.close()
    return run


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def summary(run: Run) -> dict[str, float]:
    """A run's figures, as the HTTP benches print them: ``p50``, ``p99`` and ``p999``
    latency in ms of the requests answered with a 200, ``ok_share`` (the share of all
    requests answered with a 200) and ``max_lag_ms`` (how far the generator itself fell
    behind its schedule)."""
    ok = [r.latency_ms for r in run.results if r.status == 200]
    return {
        "p50": quantile(ok, 0.5),
        "p99": quantile(ok, 0.99),
        "p999": quantile(ok, 0.999),
        "ok_share": len(ok) / max(len(run.results), 1),
        "max_lag_ms": run.max_lag_ms,
    }


def measure(
    host: str,
    port: int,
    path: str,
    body: dict[str, object],
    *,
    rate: float,
    duration_s: float,
    connections: int = 512,
) -> Run:
    """Synchronous wrapper (a fresh event loop per run)."""
    return asyncio.run(
        run_open_loop(
            host, port, path, body, rate=rate, duration_s=duration_s, connections=connections
        )
    )
