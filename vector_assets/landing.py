"""The landing directory: JSONL export files, indexed by tenant and day.

Users drop export files (like those in ``../shared/data``) into the landing directory. Reading
one tenant-day must not parse the whole directory, so :class:`LandingIndex` keeps a SQLite index
of every line: file, byte offset, length, tenant, day and a hash of the line. Refreshing the
index re-parses only files whose content hash changed, and reports which
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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .records import BadRecord, LocatedRecord, RecordError, record_identity, record_key, record_tenant, record_timestamp

#: Bumped when the layout below changes; an index of another version is rebuilt from the files.
SCHEMA_VERSION = "4"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, digest TEXT NOT NULL, lines INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lines (
    path TEXT NOT NULL, line INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    tenant TEXT, day TEXT, digest TEXT NOT NULL, reason TEXT,
    pk TEXT, stamp INTEGER, superseded_by TEXT,
    PRIMARY KEY (path, line)
);
CREATE INDEX IF NOT EXISTS lines_by_partition ON lines (tenant, day);
CREATE INDEX IF NOT EXISTS lines_by_pk ON lines (pk);
CREATE TABLE IF NOT EXISTS partitions_seen (tenant TEXT NOT NULL, day TEXT NOT NULL, PRIMARY KEY (tenant, day));
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, day TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS synced (
    store TEXT NOT NULL, tenant TEXT NOT NULL, day TEXT NOT NULL, fingerprint TEXT NOT NULL, rows INTEGER NOT NULL,
    PRIMARY KEY (store, tenant, day)
);
"""

#: Compressed exports are not read (their lines cannot be addressed by byte offset); they are
#: reported instead of being ignored silently.
UNSUPPORTED_SUFFIXES = (".jsonl.gz", ".jsonl.bz2", ".jsonl.xz", ".jsonl.zst", ".jsonl.zip")


class LandingIndexError(RuntimeError):
    """The landing index cannot be read or written (corrupt, or its disk full); the message
    names the file, the cause and the recovery."""


class StaleIndexError(RuntimeError):
    """A file changed after it was indexed: the bytes at an indexed offset are not the indexed line."""


@dataclass
class RefreshReport:
    """What a refresh of the index found.

    ``changed_partitions``: ``{(tenant, day)}`` whose current input changed (lines added,
    removed or edited, or a record superseded by, or no longer superseded by, a newer version);
    ``files_scanned``: files re-read; ``files_removed``: files gone since the last refresh;
    ``lines_scanned``: lines parsed.
    """

    changed_partitions: set[tuple[str, str]] = field(default_factory=set)
    files_scanned: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    lines_scanned: int = 0


@dataclass
class PartitionInput:
    """The current input of one tenant-day, as read from the files.

    ``records``: parsed records, in file and line order, without superseded versions;
    ``superseded``: older versions of record ids that have a newer version elsewhere (reported,
    not written); ``fingerprint``: BLAKE2b of the sorted digests of the lines read (``""`` when
    none): what a write of this input is recorded against.
    """

    records: list[LocatedRecord] = field(default_factory=list)
    superseded: list[BadRecord] = field(default_factory=list)
    fingerprint: str = ""


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _fingerprint(digests: Iterable[str]) -> str:
    digests = sorted(digests)
    return hashlib.blake2b("".join(digests).encode(), digest_size=12).hexdigest() if digests else ""


def file_digest(path: Path) -> str:
    """BLAKE2b of a file's bytes: edits that keep size and modification time still change it."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def json_error_reason(err: json.JSONDecodeError) -> str:
    """A whole sentence for a JSON parse error: the parser's message, the character found (when
    there is one) and where, e.g. ``malformed JSON: Invalid control character '\\t' at
    column 45 (character 44)`` (the parser's own text stops at "at", its position being
    separate fields)."""
    msg = err.msg
    if err.pos >= len(err.doc.rstrip()):
        # The parser reached the end of the line: the line stops inside a value (a truncated
        # export), not at a wrong character.
        return f"malformed JSON: {msg} at the end of the line (column {err.colno}): the line is cut short"
    found = f" {err.doc[err.pos]!r}" if 0 <= err.pos < len(err.doc) and msg.endswith(" at") else ""
    if msg.endswith(" at"):
        msg = msg[: -len(" at")] + found + " at"
    else:
        msg += " at"
    where = f"line {err.lineno} column {err.colno}" if err.lineno > 1 else f"column {err.colno}"
    return f"malformed JSON: {msg} {where} (character {err.pos})"


def _locate_line(raw: bytes) -> tuple[str | None, str | None, str | None, int | None, str | None]:
    """``(tenant, day, pk, stamp, reason)`` of one raw JSONL line; reason is None when the line
    can be placed in a tenant-day. ``pk`` (the record's key across tenants,
    :func:`vector_assets.records.record_key`) and ``stamp`` (Unix
    seconds) are None when the record has no valid kind or id (its tenant-day quarantines it).

    Never raises: any failure to parse or place the line (malformed JSON, nesting too deep for
    the parser, an integer too long to convert, a timestamp out of range) becomes the reason.
    """
    try:
        # Without the line break: a position the parser reports is then within the line.
        record = json.loads(raw.rstrip(b"\r\n") if isinstance(raw, bytes) else raw.rstrip("\r\n"))
    except json.JSONDecodeError as err:
        return None, None, None, None, json_error_reason(err)
    except (ValueError, RecursionError, UnicodeDecodeError, OverflowError) as err:
        return None, None, None, None, f"unparseable JSON: {type(err).__name__}: {str(err)[:200]}"
    if not isinstance(record, dict):
        return None, None, None, None, "line is not a JSON object"
    try:
        tenant = record_tenant(record)
        stamp = record_timestamp(record)
    except RecordError as err:
        return None, None, None, None, err.reason
    try:
        _, kind, rid, _, _ = record_identity(record)
        pk = record_key(kind, rid)  # across tenants: a record moved to another tenant supersedes its old copy
    except (RecordError, ValueError, TypeError, AttributeError, RecursionError, OverflowError):
        pk = None
    return tenant, stamp.date().isoformat(), pk, int(stamp.timestamp()), None


class LandingIndex:
    """SQLite index of the JSONL files under a landing directory (and exported git repos).

    Args:
        landing_dir: folder scanned recursively for ``*.jsonl`` files.
        index_path: the SQLite file (created if missing). One index belongs to one landing
            directory: opening it for another raises ValueError (see
            :meth:`vector_assets.resources.LandingResource.index`, which names the file after
            the directory).
        extra_files: further JSONL files to index (git exports).

    Changes are detected by content (a hash of each file), so edits that keep a file's size
    and modification time are seen; every line read is checked against its indexed digest, so
    a line is never read from a stale offset (:class:`StaleIndexError` leads to a refresh).

    One record id in several lines (across files and days): the latest version wins (greatest
    timestamp; on a tie, the later file path and line); the others are *superseded*, reported
    in their tenant-day and not written.

    Refreshes are serialised across processes by an ``fcntl`` lock beside the index file.
    """

    def __init__(self, landing_dir: str | Path, index_path: str | Path, extra_files: Iterable[str | Path] = ()):
        self.landing_dir = Path(landing_dir)
        self.index_path = Path(index_path)
        self.extra_files = [Path(p) for p in extra_files]
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        landing = str(self.landing_dir.expanduser().resolve())
        with self._lock(), self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if meta.get("schema_version") != SCHEMA_VERSION:
                for table in ("files", "lines", "partitions_seen", "synced", "changes"):
                    db.execute(f"DROP TABLE IF EXISTS {table}")
                meta = {}
            if meta.get("landing_dir", landing) != landing:
                raise ValueError(f"landing index {self.index_path} belongs to landing directory {meta['landing_dir']}, not {landing}")
            db.executescript(SCHEMA)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("schema_version", SCHEMA_VERSION), ("landing_dir", landing)])
            # Names this index's change log: a rebuilt index starts its sequence again.
            db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', ?)", (os.urandom(8).hex(),))

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.index_path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            yield db
            db.commit()
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
                raise
            # "file is not a database", "database disk image is malformed", a full disk:
            # the cause, the file and the recovery in one line (issue #17 item 12).
            raise LandingIndexError(
                f"landing index {self.index_path}: {err}. The index is rebuilt from the landing files when it is removed: "
                f"`rm {self.index_path}*` (vectors in Milvus are kept; the next backfill re-reads every tenant-day and "
                "embeds nothing unchanged); for a full disk, free space and run again"
            ) from err
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

    @property
    def source(self) -> str:
        """The landing source this index reads: the resolved landing directory. A collection
        is bound to one source (:func:`vector_assets.milvus_store.bind_source`)."""
        return str(self.landing_dir.expanduser().resolve())

    def files(self) -> list[Path]:
        """Every JSONL file to index, sorted; raises FileNotFoundError if the landing dir is missing."""
        if not self.landing_dir.is_dir():
            raise FileNotFoundError(f"landing directory {self.landing_dir} does not exist")
        found = sorted(p.resolve() for p in self.landing_dir.rglob("*.jsonl") if p.is_file())
        return found + [p.resolve() for p in self.extra_files if p.is_file()]

    def refreshed_at(self) -> float | None:
        """When the index was last refreshed (Unix seconds), None when never."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM meta WHERE key='refreshed_at'").fetchone()
        return float(row[0]) if row else None

    def stale_files(self) -> list[str]:
        """Files whose content differs from what the index last read (edited, added or
        removed since the last :meth:`refresh`), sorted; empty when the index is current.
        Reads every file (a hash of each); changes nothing."""
        with self._connect() as db:
            known = dict(db.execute("SELECT path, digest FROM files"))
        current = {str(p) for p in self.files()}
        changed = []
        for path in sorted(current):
            try:
                if known.get(path) != file_digest(Path(path)):
                    changed.append(path)
            except FileNotFoundError:
                changed.append(path)
        return sorted(changed + [p for p in known if p not in current])

    def unsupported_files(self) -> list[Path]:
        """Compressed exports under the landing directory (``*.jsonl.gz`` ...), which are not read."""
        if not self.landing_dir.is_dir():
            return []
        return sorted(p.resolve() for p in self.landing_dir.rglob("*") if p.is_file() and p.name.endswith(UNSUPPORTED_SUFFIXES))

    def refresh(self) -> RefreshReport:
        """Re-index files whose content changed (by hash), drop files that are gone, and work
        out which lines are superseded by newer versions of their record.

        Returns a :class:`RefreshReport`; files whose hash is unchanged are read but not parsed.
        """
        report = RefreshReport()
        with self._lock(), self._connect() as db:
            known = dict(db.execute("SELECT path, digest FROM files"))
            superseded = set(db.execute("SELECT tenant, day, digest FROM lines WHERE superseded_by IS NOT NULL"))
            current = self.files()
            for path in current:
                key = str(path)
                try:
                    if known.get(key) == file_digest(path):
                        continue
                    self._scan_file(db, path, report)
                except FileNotFoundError:
                    continue  # removed while refreshing: dropped below
            present = {str(p) for p in current if p.exists()}
            for key in sorted(set(known) - present):
                report.changed_partitions.update(
                    (t, d) for t, d in db.execute("SELECT DISTINCT tenant, day FROM lines WHERE path=? AND tenant IS NOT NULL", (key,))
                )
                db.execute("DELETE FROM lines WHERE path=?", (key,))
                db.execute("DELETE FROM files WHERE path=?", (key,))
                report.files_removed.append(key)
            if report.files_scanned or report.files_removed:
                self._mark_superseded(db, superseded, report)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('refreshed_at', ?)", (str(int(time.time())),))
            db.executemany("INSERT OR IGNORE INTO partitions_seen VALUES (?, ?)", sorted(report.changed_partitions))
            db.executemany("INSERT INTO changes (tenant, day) VALUES (?, ?)", sorted(report.changed_partitions))
        return report

    def change_position(self) -> tuple[str, int]:
        """``(generation, seq)``: where this index's change log stands. Every refresh, whoever
        makes it (a run, a sensor, the CLI), appends the tenant-days whose input it changed; a
        reader that remembers the position reads every change since with :meth:`changed_since`,
        even changes another process's refresh found. ``generation`` changes when the index is
        rebuilt (its sequence starts again)."""
        with self._connect() as db:
            generation = db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
        return (generation[0] if generation else ""), int(seq)

    def changed_since(self, seq: int) -> set[tuple[str, str]]:
        """Tenant-days whose input a refresh changed after position ``seq`` of the change log
        (:meth:`change_position`)."""
        with self._connect() as db:
            return {(t, d) for t, d in db.execute("SELECT DISTINCT tenant, day FROM changes WHERE seq > ?", (seq,))}

    def _scan_file(self, db: sqlite3.Connection, path: Path, report: RefreshReport) -> None:
        key = str(path)
        # Keyed by line digest, not line number: a line that only moved is not a change.
        old: dict[str, list[tuple]] = {}
        for digest, tenant, day, pk, stamp in db.execute("SELECT digest, tenant, day, pk, stamp FROM lines WHERE path=?", (key,)):
            old.setdefault(digest, []).append((tenant, day, pk, stamp))
        rows = []
        offset = 0
        whole = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                whole.update(raw)
                length = len(raw)
                if raw.strip():
                    digest = _digest(raw)
                    prior = old[digest].pop() if old.get(digest) else None
                    if prior is not None and prior[0] is not None:
                        tenant, day, pk, stamp = prior
                        reason = None
                    else:
                        tenant, day, pk, stamp, reason = _locate_line(raw)
                        if prior is None and tenant is not None:
                            report.changed_partitions.add((tenant, day))
                        report.lines_scanned += 1
                    rows.append((key, number, offset, length, tenant, day, digest, reason, pk, stamp, None))
                offset += length
        # Lines that disappeared or changed: their old partitions changed too.
        report.changed_partitions.update((g[0], g[1]) for gone in old.values() for g in gone if g[0] is not None)
        db.execute("DELETE FROM lines WHERE path=?", (key,))
        db.executemany("INSERT INTO lines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (key, whole.hexdigest(), len(rows)))
        report.files_scanned.append(key)

    def _mark_superseded(self, db: sqlite3.Connection, before: set[tuple], report: RefreshReport) -> None:
        """Set ``superseded_by`` on every line whose record has a newer version (the latest
        timestamp wins, then the later file path and line); partitions whose set of current
        lines changed by it (against ``before``, the superseded ``(tenant, day, digest)`` of
        before the refresh) are added to the report."""
        db.execute("UPDATE lines SET superseded_by = NULL WHERE superseded_by IS NOT NULL")
        ranked = db.execute(
            """
            SELECT path, line, winner FROM (
                SELECT path, line, ROW_NUMBER() OVER w AS rank,
                       FIRST_VALUE(path || ':' || line || ' (' || CASE WHEN tenant IS NOT NULL THEN 'tenant ' || tenant || ', ' ELSE '' END || 'day ' || day || ')') OVER w AS winner
                FROM lines
                WHERE pk IN (SELECT pk FROM lines WHERE pk IS NOT NULL GROUP BY pk HAVING COUNT(*) > 1)
                WINDOW w AS (PARTITION BY pk ORDER BY stamp DESC, path DESC, line DESC)
            ) WHERE rank > 1
            """
        ).fetchall()
        db.executemany("UPDATE lines SET superseded_by = ? WHERE path = ? AND line = ?", [(w, p, n) for p, n, w in ranked])
        after = set(db.execute("SELECT tenant, day, digest FROM lines WHERE superseded_by IS NOT NULL"))
        report.changed_partitions.update((t, d) for t, d, _ in before ^ after)

    # ---- queries -------------------------------------------------------------------------

    def tenants(self) -> list[str]:
        """Tenants with at least one placeable line, sorted."""
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT tenant FROM lines WHERE tenant IS NOT NULL ORDER BY tenant")]

    def vanished_tenants(self) -> list[str]:
        """Tenants that had lines once and have none now (their files were removed, or the
        landing directory is empty or not mounted), sorted."""
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT tenant FROM partitions_seen EXCEPT SELECT tenant FROM lines WHERE tenant IS NOT NULL ORDER BY 1")]

    def vanished_among(self, tenants: Iterable[str]) -> set[str]:
        """Those of ``tenants`` without any line in the landing data now, whether the index saw
        their lines once or only the store holds their rows (an index lost or rebuilt): their
        rows are deleted only on request (``--delete-vanished-tenants``; issue #17 item 2)."""
        return set(tenants) - set(self.tenants())

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

    def read_partitions(self, keys: Iterable[tuple[str, str]], attempts: int = 3) -> dict[tuple[str, str], PartitionInput]:
        """The current input of each ``(tenant, day)``: :class:`PartitionInput` (an empty one for
        a partition with no lines).

        Reads only the indexed byte ranges of those partitions and checks each line against
        its indexed digest; a file changed since the last refresh makes the index refresh and
        the read start over (at most ``attempts`` times, then :class:`StaleIndexError`).
        """
        keys = list(keys)
        for attempt in range(attempts):
            try:
                return self._read_partitions(keys)
            except StaleIndexError:
                if attempt == attempts - 1:
                    raise
                self.refresh()
        raise AssertionError("unreachable")

    def _read_partitions(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], PartitionInput]:
        out: dict[tuple[str, str], PartitionInput] = {k: PartitionInput() for k in keys}
        with self._connect() as db:
            db.execute("CREATE TEMP TABLE wanted (tenant TEXT, day TEXT)")
            db.executemany("INSERT INTO wanted VALUES (?, ?)", keys)
            located = db.execute(
                "SELECT l.tenant, l.day, l.path, l.line, l.offset, l.length, l.digest, l.superseded_by FROM lines l "
                "JOIN wanted w ON l.tenant = w.tenant AND l.day = w.day ORDER BY l.path, l.line"
            ).fetchall()
        digests: dict[tuple[str, str], list[str]] = {k: [] for k in keys}
        handle = None
        current = None
        try:
            for tenant, day, path, line, offset, length, digest, superseded_by in located:
                key = (tenant, day)
                if superseded_by is not None:
                    out[key].superseded.append(BadRecord(path, line, f"superseded: the same record id has a newer version at {superseded_by}", ""))
                    continue
                if path != current:
                    if handle:
                        handle.close()
                    current = path
                    try:
                        handle = open(path, "rb")
                    except FileNotFoundError:
                        handle = None
                        raise StaleIndexError(f"{path} was removed after it was indexed") from None
                handle.seek(offset)
                raw = handle.read(length)
                if _digest(raw) != digest:
                    raise StaleIndexError(f"{path}:{line} changed after it was indexed")
                out[key].records.append(LocatedRecord(path, line, json.loads(raw)))
                digests[key].append(digest)
        finally:
            if handle:
                handle.close()
        for key, item in out.items():
            item.fingerprint = _fingerprint(digests[key])
        return out

    def fingerprints(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """A fingerprint of each tenant-day's current lines as indexed (superseded versions left
        out; ``""`` for a partition without lines). Equal fingerprints mean equal input; equal
        to :attr:`PartitionInput.fingerprint` of a read of the same lines."""
        keys = list(keys)
        digests: dict[tuple[str, str], list[str]] = {k: [] for k in keys}
        with self._connect() as db:
            db.execute("CREATE TEMP TABLE fp_wanted (tenant TEXT, day TEXT)")
            db.executemany("INSERT INTO fp_wanted VALUES (?, ?)", keys)
            for tenant, day, digest in db.execute(
                "SELECT l.tenant, l.day, l.digest FROM lines l JOIN fp_wanted w ON l.tenant = w.tenant AND l.day = w.day WHERE l.superseded_by IS NULL"
            ):
                digests[(tenant, day)].append(digest)
        return {k: _fingerprint(v) for k, v in digests.items()}

    def mark_synced(self, store: str, synced: dict[tuple[str, str], tuple[str, int]]) -> None:
        """Record that the Milvus collection ``store`` (see :func:`vector_assets.sync.store_key`)
        holds the rows of these tenant-days as of the input they were read from:
        ``{(tenant, day): (fingerprint of the lines read, rows)}``."""
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO synced VALUES (?, ?, ?, ?, ?)",
                [(store, t, d, fp, rows) for (t, d), (fp, rows) in synced.items()],
            )

    def unsynced_partitions(self, store: str | None, start: str | None = None, end: str | None = None) -> list[tuple[str, str]]:
        """Tenant-days (with lines now, or emptied since) in ``[start, end]`` whose rows in the
        collection ``store`` were never written or were written from other input than the
        current lines (all of them when ``store`` is None: the collection does not exist)."""
        keys = self.partitions(start=start, end=end)
        if store is None:
            return keys
        current = self.fingerprints(keys)
        with self._connect() as db:
            done = {(t, d): fp for t, d, fp in db.execute("SELECT tenant, day, fingerprint FROM synced WHERE store=?", (store,))}
        return [k for k in keys if done.get(k) != current[k]]

    def synced_rows(self, store: str | None, keys: Iterable[tuple[str, str]]) -> int:
        """Records written to the collection ``store`` in these tenant-days (as recorded at their last write; a record of several passages counts once)."""
        wanted = set(keys)
        with self._connect() as db:
            return sum(rows for t, d, rows in db.execute("SELECT tenant, day, rows FROM synced WHERE store=?", (store,)) if (t, d) in wanted)

    def synced_partitions(self, store: str | None) -> list[tuple[str, str]]:
        """Tenant-days whose rows were written to the collection ``store`` (so it is expected to hold them)."""
        with self._connect() as db:
            return sorted((t, d) for t, d in db.execute("SELECT tenant, day FROM synced WHERE store=?", (store,)))

    def unattributed(self) -> list[tuple[str, int, str]]:
        """``(file, line, reason)`` of every line that cannot be placed in a tenant-day."""
        with self._connect() as db:
            return [tuple(r) for r in db.execute("SELECT path, line, reason FROM lines WHERE tenant IS NULL ORDER BY path, line")]

    def lines_outside(self, start: str, end: str) -> list[tuple[str, int, str, str]]:
        """``(file, line, tenant, day)`` of every placed line whose day is outside ``[start, end]``."""
        with self._connect() as db:
            return [tuple(r) for r in db.execute(
                "SELECT path, line, tenant, day FROM lines WHERE tenant IS NOT NULL AND (day < ? OR day > ?) ORDER BY path, line", (start, end)
            )]

    def line_text(self, path: str, line: int) -> str:
        """The raw text of one indexed line (for quarantine files); ``""`` if not indexed."""
        with self._connect() as db:
            row = db.execute("SELECT offset, length FROM lines WHERE path=? AND line=?", (path, line)).fetchone()
        if not row:
            return ""
        with open(path, "rb") as fh:
            fh.seek(row[0])
            return fh.read(row[1]).decode("utf-8", "replace").rstrip("\n")

    def line_counts(self) -> dict[tuple[str, str], int]:
        """``{(tenant, day): lines}`` of every tenant-day that holds lines now (what a run of it
        reads; used to balance runs across workers)."""
        with self._connect() as db:
            return {(t, d): n for t, d, n in db.execute("SELECT tenant, day, COUNT(*) FROM lines WHERE tenant IS NOT NULL GROUP BY tenant, day")}

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
    # A temporary file of this call's own: two exports of one repository never share one.
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name + ".", suffix=".tmp")
    count = 0
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
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
