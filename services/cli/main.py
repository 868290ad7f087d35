"""``rdv`` entry point: parse arguments, run one command, map errors to exit codes."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence

from services.cli.args import build_parser
from services.common.errors import RendezvousError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, _, function = args.run.partition(":")
    try:
        command = getattr(importlib.import_module(f"services.cli.{module}"), function)
        code = int(command(args))
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except RendezvousError as exc:
        print(f"rdv: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """The reader of stdout left (``rdv ps | head``): end quietly, as a shell tool does.
    Stdout goes to /dev/null so that the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
