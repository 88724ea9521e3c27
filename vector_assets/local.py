"""This machine: whether a process runs, and a lock its processes share.

The bottom layer with :mod:`vector_assets.settings`: imported by the state database (its SQLite
lock), the Milvus store (the local server's lock and pid), the API key file and the run
bookkeeping of :mod:`vector_assets.instance`; it imports nothing of the package.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs. A zombie counts as gone: a killed process whose parent
    died too stays a zombie where PID 1 does not reap orphans (containers), and ``kill(pid, 0)``
    still succeeds for it (seen: a killed backfill's run was never failed in CI)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: what kill said


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``path`` (created with its folder if missing) until
    the block ends, waiting for it. It serialises the processes of this machine only: state
    shared across machines is locked in its database (:func:`vector_assets.state.exclusive`).
    Raises OSError when ``path`` cannot be created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
