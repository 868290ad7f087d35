"""The conversion cache: one folder per GGUF file *content*, written once, atomically.

A GGUF file is keyed by the SHA-256 of its bytes. Hashing reads the whole file, so an
index remembers ``path -> (size, mtime_ns, sha256)`` and a later load of an unchanged
file never opens it. An entry is a ``save_pretrained`` folder plus a marker, written
last, that lists every file with its size: an entry without a marker, or whose files
do not match it, is corrupt and gets rebuilt. Entries are built in a temporary folder
and renamed into place, so readers never see half an entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT = 1
MARKER = "rendezvous-entry.json"
INDEX = "index.json"


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes (reads all of it)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


class ConversionCache:
    """Converted checkpoints under ``root``: ``<root>/<sha256[:32]>/``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def key(self, source: Path) -> str:
        """The content hash of ``source``, from the index when the file is unchanged."""
        resolved = str(source.resolve())
        stat = source.stat()
        seen = self._index().get(resolved)
        if (
            isinstance(seen, dict)
            and seen.get("size") == stat.st_size
            and seen.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(seen.get("sha256"), str)
        ):
            return str(seen["sha256"])
        digest = file_sha256(source)
        index = self._index()
        index[resolved] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json(self.root / INDEX, index)
        return digest

    def entry(self, key: str) -> Path:
        return self.root / key[:32]

    def is_complete(self, entry: Path) -> bool:
        """True when the marker exists and every file it lists has its recorded size."""
        try:
            marker = json.loads((entry / MARKER).read_text())
            files = marker["files"]
            return marker.get("format") == FORMAT and all(
                (entry / name).stat().st_size == size for name, size in files.items()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def build(self, key: str, write: Callable[[Path], None], source: Path) -> Path:
        """Write an entry with ``write(folder)``, mark it complete, rename it into place."""
        entry = self.entry(key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{key[:16]}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            write(tmp)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            marker = {"format": FORMAT, "sha256": key, "source": str(source), "files": files}
            _write_json(tmp / MARKER, marker)
            self.discard(entry)
            try:
                tmp.rename(entry)
            except OSError:
                if not self.is_complete(entry):  # not a concurrent builder that won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return entry

    def discard(self, entry: Path) -> None:
        """Remove an entry (a corrupt one, before it is rebuilt)."""
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()

    def _index(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / INDEX).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
