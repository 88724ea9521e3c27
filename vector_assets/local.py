"""This machine: whether a process runs, a lock its processes share, and this process's
garbage collector.

The bottom layer with :mod:`vector_assets.settings`: imported by the state database (its SQLite
lock), the Milvus store (the local server's lock and pid), the API key file and the run
bookkeeping of :mod:`vector_assets.instance`; it imports nothing of the package.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
from pathlib import Path
from typing import Iterator


_frozen_at_start = False


def freeze_startup_objects() -> bool:
    """Move the objects alive now (imported modules, resources, the instance) into the garbage
    collector's permanent generation, once per process; later calls do nothing. Returns whether
    this call froze them.

    Why: a run's step process holds about 820,000 objects that the collector tracks (Dagster,
    torch, Great Expectations, pymilvus), none of them garbage. Every full collection walks all
    of them: in a run over 1,000 empty tenant-days on Postgres (``benchmarks/pipeline.py
    recording``'s run), one full collection took 0.39-0.51 s of a 2.4-2.8 s run; frozen, it
    took 0.01 s (2026-12-02, ``gc.callbacks`` timing). The cost: a cycle of those objects that
    becomes garbage later is never freed; they are the process's start-up state, kept to its
    end anyway. Python's own advice for the same case: ``gc.freeze`` (Python 3.7+).
    """
    global _frozen_at_start
    if _frozen_at_start:
        return False
    gc.freeze()
    _frozen_at_start = True
    return True


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
