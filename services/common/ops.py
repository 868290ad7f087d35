"""Health, readiness and Prometheus metrics over HTTP for services without a web app
(workers, rendezvous). ``/healthz``: the process loop is alive; ``/readyz``: it owns
partitions and can do its work; ``/metrics``: the Prometheus registry. A service may add
GET routes of its own (``routes``: path -> handler of the query parameters, returning
status, body and content type)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Route = Callable[[dict[str, str]], tuple[int, bytes, str]]


class OpsServer:
    """A small threaded HTTP server; ``port=0`` picks a free port (see ``.port``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ready: Callable[[], bool],
        healthy: Callable[[], bool] = lambda: True,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        checks = {"/healthz": healthy, "/readyz": ready}
        extra = dict(routes or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path in extra:
                    self._send(*extra[path](dict(parse_qsl(query))))
                elif path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif path in checks:
                    ok = checks[path]()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the prober gave up waiting (a busy process): not an error

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would drown the structured logs

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="ops-http"
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
