"""Run an app with uvicorn on a background thread, in this process (end-to-end tests,
benchmarks). Production uses ``python -m services.gateway``, which owns the signals."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


@contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (``http://host:port``).

    The socket listens before the block starts, so a request made while the app's
    lifespan is still starting waits in the backlog instead of failing. Leaving the
    block runs the lifespan's shutdown (like SIGTERM does) and joins the thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="gateway-http", daemon=True
        )
        thread.start()
        try:
            yield f"http://{host}:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join()
    finally:
        sock.close()
