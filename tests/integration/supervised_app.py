"""A tiny long-running process for the supervisor's tests: ``/readyz`` on a port, JSON logs.

    python tests/integration/supervised_app.py PORT NAME [--crash-file PATH] [--fail CODE]

``--fail CODE`` logs an error and exits with CODE at once (a process that cannot start);
``--crash-file`` logs an error and exits with code 3 once that file exists; SIGTERM
exits with code 0.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

_LOG_LOCK = threading.Lock()


def log(level: str, msg: str, **fields: object) -> None:
    """One JSON line per call, whole: print() writes the text and the newline apart, so
    two threads logging at once (the crash watcher and the main thread at start) could
    run their lines together, and the supervisor would not read the error."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
    line = json.dumps({"ts": ts, "level": level, "msg": msg, **fields}) + "\n"
    with _LOG_LOCK:
        sys.stderr.write(line)
        sys.stderr.flush()


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def watch(crash_file: Path) -> None:
    while not crash_file.exists():
        time.sleep(0.05)  # polling a file another process creates
    log("error", "app failed", error="crash file found")
    os._exit(3)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("name")
    parser.add_argument("--crash-file", type=Path)
    parser.add_argument("--fail", type=int)
    args = parser.parse_args()
    if args.fail is not None:
        log("error", "app cannot start", error="asked to fail")
        return int(args.fail)
    server = http.server.HTTPServer(("127.0.0.1", args.port), Ready)

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        log("info", "app stopping")
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_term)
    if args.crash_file is not None:
        threading.Thread(target=watch, args=(args.crash_file,), daemon=True).start()
    log("info", "app listening", port=args.port)
    server.serve_forever()
    server.server_close()
    log("info", "app stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
