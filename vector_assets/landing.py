"""The landing directory: JSONL export files, indexed by tenant and day.

Users drop export files (like those in ``../shared/data``) into the landing directory. Reading
one tenant-day must not parse the whole directory, so :class:`LandingIndex` keeps a SQLite index
of every line: file, byte offset, length, tenant, day and a hash of the line. Refreshing the
index re-reads only files whose size or modification time changed, and reports which
tenant-days changed (lines added, removed or edited), which the new-data sensor and
incremental backfills use.

Lines that cannot be placed in a tenant-day (malformed JSON, no tenant, no timestamp) are kept
in the index with their reason and listed by :meth:`LandingIndex.unattributed`; they are never
dropped silently.

Local git repositories are exported with ``git log`` into JSONL files of the same layout as
``git_commits.jsonl`` (:func:`export_git_repository`), then indexed like any landing file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .records import LocatedRecord, RecordError, record_tenant, record_timestamp

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, lines INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lines (
    path TEXT NOT NULL, line INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    tenant TEXT, day TEXT, digest TEXT NOT NULL, reason TEXT,
    PRIMARY KEY (path, line)
);
CREATE INDEX IF NOT EXISTS lines_by_partition ON lines (tenant, day);
CREATE TABLE IF NOT EXISTS partitions_seen (tenant TEXT NOT NULL, day TEXT NOT NULL, PRIMARY KEY (tenant, day));
CREATE TABLE IF NOT EXISTS synced (
    model TEXT NOT NULL, tenant TEXT NOT NULL, day TEXT NOT NULL, fingerprint TEXT NOT NULL, rows INTEGER NOT NULL,
    PRIMARY KEY (model, tenant, day)
);
"""


@dataclass
class RefreshReport:
    """What a refresh of the index found.

    ``changed_partitions``: ``{(tenant, day)}`` whose lines were added, removed or edited;
    ``files_scanned``: files re-read; ``files_removed``: files gone since the last refresh;
    ``lines_scanned``: lines parsed.
    """

    changed_partitions: set[tuple[str, str]] = field(default_factory=set)
    files_scanned: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    lines_scanned: int = 0


def _locate_line(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """(tenant, day, reason) of one raw JSONL line; reason is None when it can be placed."""
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, None, f"malformed JSON: {err.msg if hasattr(err, 'msg') else err}"
    if not isinstance(record, dict):
        return None, None, "line is not a JSON object"
    try:
        tenant = record_tenant(record)
        day = record_timestamp(record).date().isoformat()
    except RecordError as err:
        return None, None, err.reason
    return tenant, day, None


class LandingIndex:
    """SQLite index of the JSONL files under a landing directory (and exported git repos).

    Args:
        landing_dir: folder scanned recursively for ``*.jsonl`` files.
        index_path: the SQLite file (created if missing).
        extra_files: further JSONL files to index (git exports).

    Refreshes are serialised across processes by an ``fcntl`` lock beside the index file.
    """

    def __init__(self, landing_dir: str | Path, index_path: str | Path, extra_files: Iterable[str | Path] = ()):
        self.landing_dir = Path(landing_dir)
        self.index_path = Path(index_path)
        self.extra_files = [Path(p) for p in extra_files]
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.index_path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            yield db
            db.commit()
        finally:
            db.close()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(str(self.index_path) + ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def files(self) -> list[Path]:
        """Every JSONL file to index, sorted; raises FileNotFoundError if the landing dir is missing."""
        if not self.landing_dir.is_dir():
            raise FileNotFoundError(f"landing directory {self.landing_dir} does not exist")
        found = sorted(p.resolve() for p in self.landing_dir.rglob("*.jsonl") if p.is_file())
        return found + [p.resolve() for p in self.extra_files if p.is_file()]

    def refresh(self) -> RefreshReport:
        """Re-index files whose size or mtime changed, drop files that are gone.

        Returns a :class:`RefreshReport`; unchanged files are not opened.
        """
        report = RefreshReport()
        with self._lock(), self._connect() as db:
            known = {row[0]: (row[1], row[2]) for row in db.execute("SELECT path, size, mtime_ns FROM files")}
            current = self.files()
            for path in current:
                stat = path.stat()
                key = str(path)
                if known.get(key) == (stat.st_size, stat.st_mtime_ns):
                    continue
                self._scan_file(db, path, stat, report)
            gone = set(known) - {str(p) for p in current}
            for key in sorted(gone):
                report.changed_partitions.update(
                    (t, d) for t, d in db.execute("SELECT DISTINCT tenant, day FROM lines WHERE path=? AND tenant IS NOT NULL", (key,))
                )
                db.execute("DELETE FROM lines WHERE path=?", (key,))
                db.execute("DELETE FROM files WHERE path=?", (key,))
                report.files_removed.append(key)
            db.executemany("INSERT OR IGNORE INTO partitions_seen VALUES (?, ?)", sorted(report.changed_partitions))
        return report

    def _scan_file(self, db: sqlite3.Connection, path: Path, stat: os.stat_result, report: RefreshReport) -> None:
        key = str(path)
        # Keyed by line digest, not line number: a line that only moved is not a change.
        old: dict[str, list[tuple[str | None, str | None]]] = {}
        for digest, tenant, day in db.execute("SELECT digest, tenant, day FROM lines WHERE path=?", (key,)):
            old.setdefault(digest, []).append((tenant, day))
        rows = []
        offset = 0
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                length = len(raw)
                if raw.strip():
                    digest = hashlib.blake2b(raw, digest_size=12).hexdigest()
                    prior = old[digest].pop() if old.get(digest) else None
                    if prior is not None:
                        tenant, day, reason = prior[0], prior[1], None
                        if tenant is None:
                            tenant, day, reason = _locate_line(raw)
                    else:
                        tenant, day, reason = _locate_line(raw)
                        if tenant is not None:
                            report.changed_partitions.add((tenant, day))
                        report.lines_scanned += 1
                    rows.append((key, number, offset, length, tenant, day, digest, reason))
                offset += length
        # Lines that disappeared or changed: their old partitions changed too.
        report.changed_partitions.update((t, d) for gone in old.values() for (t, d) in gone if t is not None)
        db.execute("DELETE FROM lines WHERE path=?", (key,))
        db.executemany("INSERT INTO lines VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (key, stat.st_size, stat.st_mtime_ns, len(rows))
        )
        report.files_scanned.append(key)

    # ---- queries -------------------------------------------------------------------------

    def tenants(self) -> list[str]:
        """Tenants with at least one placeable line, sorted."""
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT tenant FROM lines WHERE tenant IS NOT NULL ORDER BY tenant")]

    def partitions(self, tenants: Iterable[str] | None = None, start: str | None = None, end: str | None = None, include_emptied: bool = True) -> list[tuple[str, str]]:
        """Sorted ``(tenant, day)`` pairs that hold lines now, or held lines once
        (``include_emptied``: their Milvus rows must be deleted), filtered by tenant and by the
        inclusive ``start``/``end`` days (``YYYY-MM-DD``)."""
        sql = "SELECT DISTINCT tenant, day FROM lines WHERE tenant IS NOT NULL"
        if include_emptied:
            sql = f"SELECT tenant, day FROM ({sql} UNION SELECT tenant, day FROM partitions_seen)"
        args: list = []
        clauses = []
        tenants = list(tenants or [])
        if tenants:
            clauses.append("tenant IN (%s)" % ",".join("?" * len(tenants)))
            args += tenants
        if start:
            clauses.append("day >= ?")
            args.append(start)
        if end:
            clauses.append("day <= ?")
            args.append(end)
        if clauses:
            sql = f"SELECT tenant, day FROM ({sql}) WHERE " + " AND ".join(clauses)
        with self._connect() as db:
            return sorted(set(db.execute(sql, args)))

    def read_partitions(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[LocatedRecord]]:
        """Parsed records of each ``(tenant, day)``, in file and line order.

        Reads only the indexed byte ranges of those partitions. Returns an empty list for a
        partition with no lines.
        """
        keys = list(keys)
        out: dict[tuple[str, str], list[LocatedRecord]] = {k: [] for k in keys}
        with self._connect() as db:
            db.execute("CREATE TEMP TABLE wanted (tenant TEXT, day TEXT)")
            db.executemany("INSERT INTO wanted VALUES (?, ?)", keys)
            located = db.execute(
                "SELECT l.tenant, l.day, l.path, l.line, l.offset, l.length FROM lines l "
                "JOIN wanted w ON l.tenant = w.tenant AND l.day = w.day ORDER BY l.path, l.line"
            ).fetchall()
        handle = None
        current = None
        try:
            for tenant, day, path, line, offset, length in located:
                if path != current:
                    if handle:
                        handle.close()
                    handle, current = open(path, "rb"), path
                handle.seek(offset)
                raw = handle.read(length)
                out[(tenant, day)].append(LocatedRecord(path, line, json.loads(raw)))
        finally:
            if handle:
                handle.close()
        return out

    def fingerprints(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """A fingerprint of each tenant-day's current lines (BLAKE2b of their sorted digests;
        ``""`` for a partition without lines). Equal fingerprints mean equal input."""
        keys = list(keys)
        digests: dict[tuple[str, str], list[str]] = {k: [] for k in keys}
        with self._connect() as db:
            db.execute("CREATE TEMP TABLE fp_wanted (tenant TEXT, day TEXT)")
            db.executemany("INSERT INTO fp_wanted VALUES (?, ?)", keys)
            for tenant, day, digest in db.execute(
                "SELECT l.tenant, l.day, l.digest FROM lines l JOIN fp_wanted w ON l.tenant = w.tenant AND l.day = w.day"
            ):
                digests[(tenant, day)].append(digest)
        return {k: hashlib.blake2b("".join(sorted(v)).encode(), digest_size=12).hexdigest() if v else "" for k, v in digests.items()}

    def mark_synced(self, model: str, synced: dict[tuple[str, str], tuple[str, int]]) -> None:
        """Record that Milvus holds ``model``'s rows of these tenant-days as of their
        fingerprints: ``{(tenant, day): (fingerprint, rows)}``."""
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO synced VALUES (?, ?, ?, ?, ?)",
                [(model, t, d, fp, rows) for (t, d), (fp, rows) in synced.items()],
            )

    def unsynced_partitions(self, model: str, start: str | None = None, end: str | None = None) -> list[tuple[str, str]]:
        """Tenant-days (with lines now, or emptied since) in ``[start, end]`` whose ``model``
        rows were never written or were written from other input than the current lines."""
        keys = self.partitions(start=start, end=end)
        current = self.fingerprints(keys)
        with self._connect() as db:
            done = {(t, d): fp for t, d, fp in db.execute("SELECT tenant, day, fingerprint FROM synced WHERE model=?", (model,))}
        return [k for k in keys if done.get(k) != current[k]]

    def synced_rows(self, model: str, keys: Iterable[tuple[str, str]]) -> int:
        """Rows written for ``model`` in these tenant-days (as recorded at their last write)."""
        wanted = set(keys)
        with self._connect() as db:
            return sum(rows for t, d, rows in db.execute("SELECT tenant, day, rows FROM synced WHERE model=?", (model,)) if (t, d) in wanted)

    def synced_partitions(self, model: str) -> list[tuple[str, str]]:
        """Tenant-days whose ``model`` rows were written (so Milvus is expected to hold them)."""
        with self._connect() as db:
            return sorted((t, d) for t, d in db.execute("SELECT tenant, day FROM synced WHERE model=?", (model,)))

    def unattributed(self) -> list[tuple[str, int, str]]:
        """``(file, line, reason)`` of every line that cannot be placed in a tenant-day."""
        with self._connect() as db:
            return [tuple(r) for r in db.execute("SELECT path, line, reason FROM lines WHERE tenant IS NULL ORDER BY path, line")]

    def line_text(self, path: str, line: int) -> str:
        """The raw text of one indexed line (for quarantine files); ``""`` if not indexed."""
        with self._connect() as db:
            row = db.execute("SELECT offset, length FROM lines WHERE path=? AND line=?", (path, line)).fetchone()
        if not row:
            return ""
        with open(path, "rb") as fh:
            fh.seek(row[0])
            return fh.read(row[1]).decode("utf-8", "replace").rstrip("\n")

    def count_lines(self) -> int:
        """Number of non-blank lines indexed."""
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM lines").fetchone()[0]


# ---- git repositories ----------------------------------------------------------------------

_GIT_FORMAT = "%x1e%H%x1f%P%x1f%aI%x1f%cI%x1f%B%x1f"


def git_head(repo: str | Path) -> str:
    """The commit id of HEAD in ``repo``; raises RuntimeError naming the repo if git fails."""
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git repository {repo}: {proc.stderr.strip() or 'git rev-parse failed'}")
    return proc.stdout.strip()


def export_git_repository(repo: str | Path, tenant: str, out_path: str | Path) -> int:
    """Write the history of ``repo``'s HEAD as JSONL records of source ``git`` to ``out_path``.

    Same fields as ``git_commits.jsonl`` (read with ``git log HEAD --name-only --no-renames
    --date-order``) but without author names, which no feature needs. Returns the number of
    commits written. Raises RuntimeError when git fails.
    """
    proc = subprocess.run(
        ["git", "-C", str(repo), "log", "HEAD", "--name-only", "--no-renames", "--date-order", f"--format={_GIT_FORMAT}"],
        capture_output=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git log in {repo} failed: {proc.stderr.decode(errors='replace').strip()}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for chunk in proc.stdout.decode("utf-8", "replace").split("\x1e")[1:]:
            sha, parents, author_date, committer_date, message, files = chunk.split("\x1f")
            stamp = record_timestamp({"author_date": author_date})
            record = {
                "tenant": tenant,
                "source": "git",
                "sha": sha,
                "parents": parents.split(),
                "is_merge": len(parents.split()) > 1,
                "author_date": author_date,
                "author_date_utc": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "day": stamp.date().isoformat(),
                "committer_date": committer_date,
                "subject": message.strip().split("\n", 1)[0],
                "message": message.strip(),
                "files": [f for f in files.strip().split("\n") if f],
            }
            fh.write(json.dumps(record) + "\n")
            count += 1
    os.replace(tmp, out_path)
    return count
