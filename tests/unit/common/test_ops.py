"""The ops server: probes and routes over real HTTP; a prober that hangs up is no error."""

from __future__ import annotations

import socket
import struct
import threading
import urllib.request

import pytest

from services.common.ops import OpsServer


def test_probes_answer_by_state() -> None:
    ready = threading.Event()
    server = OpsServer("127.0.0.1", 0, ready=ready.is_set).start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{url}/readyz", timeout=5)
        assert not_ready.value.code == 503
        not_ready.value.close()  # an HTTPError holds the response open
        ready.set()
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            assert resp.read() == b"ok\n"
    finally:
        server.close()


def test_a_prober_that_hangs_up_before_the_answer_is_not_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    hung_up = threading.Event()
    handlers: list[threading.Thread] = []

    def slow(_query: dict[str, str]) -> tuple[int, bytes, str]:
        handlers.append(threading.current_thread())
        assert hung_up.wait(10)
        return 200, b"x" * 4_000_000, "text/plain"  # more than any socket buffer takes

    server = OpsServer("127.0.0.1", 0, ready=lambda: True, routes={"/slow": slow}).start()
    try:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        # close with a reset (linger 0), as a prober whose timeout expired does
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        hung_up.set()
        # the server is still up and answers the next probe
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200
        assert len(handlers) == 1
        handlers[0].join(10)  # its write to the closed socket has failed (or not) by now
        assert not handlers[0].is_alive()
    finally:
        server.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "Exception occurred" not in err
