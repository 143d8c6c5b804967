"""Atomic file writes: a reader, or the next run after a kill, never sees half a file.

Every file ssl3d writes into a run folder (run.yaml, cells, splits, tables, pretrain.json,
manifests) goes through here: the content is written to a temporary file in the same folder,
flushed to disk, then renamed over the target, which POSIX makes atomic.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write ``content`` to ``path`` all at once (temporary file + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = not isinstance(content, bytes)
    with tempfile.NamedTemporaryFile(
        "w" if text else "wb",
        encoding="utf-8" if text else None,
        dir=path.parent,
        prefix=f".{path.name}.",
        suffix=".tmp",
        delete=False,
    ) as stream:
        stream.write(content)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(stream.name, path)
    return path
