"""One writer per run folder: an operating-system lock held for the life of a command.

``ssl3d run``, ``tune`` and ``ablate`` write cells, checkpoints and logs under ``--out``; two of
them on one folder interleave their files and rename files under each other. Each takes
``OUT/.ssl3d.lock`` with ``fcntl.flock`` before it writes anything and holds it until it ends.
The file names the holder (command, host, pid, start time), so a second command is refused
within a second with a message that says who holds the folder. The operating system releases a
lock when its process dies however it dies (``kill -9`` included), so a lock left by a killed
run is simply taken over; its stale holder is logged. Ray workers run under their driver's lock.

``flock`` is local to one machine: two hosts sharing a folder over NFS are not kept apart (the
lock names its host so that a user can see it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmark.errors import UserError

LOCK_NAME = ".ssl3d.lock"

# Folders this process holds, with how many nested holders: `ssl3d run` holds its folder around
# the grid and the report, and run_grid takes it again (flock would refuse a second open file).
_held: dict[Path, list] = {}


class RunFolderInUseError(UserError):
    """Another ssl3d command is writing into this run folder."""


@contextmanager
def run_folder_lock(
    out: Path, command: str, log: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold ``OUT/.ssl3d.lock`` while the block runs; refuse if another process holds it."""
    out = Path(out).absolute()
    if out in _held:
        _held[out][1] += 1
        try:
            yield
        finally:
            _held[out][1] -= 1
        return
    handle = _open(out)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            handle.close()
            raise
        handle.seek(0)
        holder = _describe(handle.read())
        handle.close()
        raise RunFolderInUseError(
            f"{out} is in use by {holder}; wait until it ends, or use another --out"
        ) from None
    previous = handle.read().strip()
    if previous and log:
        log(f"taking over {out / LOCK_NAME}, left by {_describe(previous)} (no longer running)")
    _write(handle, command)
    _held[out] = [handle, 1]
    try:
        yield
    finally:
        _held.pop(out)
        handle.seek(0)
        handle.truncate()  # an idle folder's lock file is empty: nothing names a finished run
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _open(out: Path):
    path = out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the lock
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out}: a file is in the way; give a folder") from None
    except PermissionError:
        raise UserError(
            f"--out {out}: no permission to write there; give a writable folder"
        ) from None
    handle.seek(0)
    return handle


def _write(handle, command: str) -> None:
    handle.seek(0)
    handle.truncate()
    holder = {
        "command": command,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    handle.write(json.dumps(holder))
    handle.flush()


def _describe(text: str) -> str:
    try:
        holder = json.loads(text.strip())
        return (
            f"`{holder['command']}` (pid {holder['pid']} on {holder['host']}, "
            f"since {holder['started']})"
        )
    except (ValueError, KeyError, TypeError):
        return "another ssl3d command"
