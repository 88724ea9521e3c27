"""The landing data: JSONL export files in a folder or an object store, indexed by tenant and day.

Users drop export files (like those in ``../shared/data``) into the landing folder, or upload
them under a bucket prefix (``s3://bucket/landing``, read through fsspec). Reading one
tenant-day must not parse everything, so :class:`LandingIndex` keeps an index of every line in
the state database (:mod:`vector_assets.state`): file, byte offset, length, tenant, day and a
hash of the line. Refreshing the index re-parses only files whose content changed (a hash, or
the object's ETag), and reports which
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
import hashlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import sqlalchemy as sa

from .. import state
from .records import BadRecord, LocatedRecord, RecordError, record_identity, record_key, record_tenant, record_timestamp

#: Compressed exports are not read (their lines cannot be addressed by byte offset); they are
#: reported instead of being ignored silently.
UNSUPPORTED_SUFFIXES = (".jsonl.gz", ".jsonl.bz2", ".jsonl.xz", ".jsonl.zst", ".jsonl.zip")


#: The landing index cannot be read or written (corrupt, unreachable, or its disk full); the
#: message names the database, the cause and the recovery.
LandingIndexError = state.StateError


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
    :func:`vector_assets.ingest.records.record_key`) and ``stamp`` (Unix
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


def is_url(location: str) -> bool:
    """Whether a landing location is a URL of a remote filesystem (``s3://…``, ``gs://…``)
    rather than a local folder (``file://`` and plain paths are local)."""
    return "://" in location and not location.startswith("file://")


class LandingIndex:
    """Index of the JSONL files of one landing source (a local folder or an object-store URL)
    and of exported git repositories, kept in the state database (:mod:`vector_assets.state`).

    Args:
        landing_url: a local folder, or a URL fsspec reads (``s3://bucket/prefix``,
            ``gs://…``; credentials and endpoint from the environment, as boto3 and gcsfs read
            them, e.g. ``AWS_ENDPOINT_URL``), scanned recursively for ``*.jsonl`` files.
        state_url: SQLAlchemy URL of the state database (default
            :func:`vector_assets.state.state_url`).
        extra_files: further local JSONL files to index (git exports).

    Each source has its own rows (keyed by :attr:`source_key`, a hash of :attr:`source`):
    pointing ``VECTOR_ASSETS_LANDING_DIR`` elsewhere never plans or deletes the old source's
    tenant-days, and every worker that reaches the database reads the same index.

    Changes are detected by content: a hash of each local file (edits that keep a file's size
    and modification time are seen), the object store's ETag for a remote object. Every line
    read is checked against its indexed digest, so a line is never read from a stale offset
    (:class:`StaleIndexError` leads to a refresh).

    One record id in several lines (across files and days): the latest version wins (greatest
    timestamp; on a tie, the later file path and line); the others are *superseded*, reported
    in their tenant-day and not written.

    Refreshes of one source are serialised across workers (:func:`vector_assets.state.exclusive`).

    Raises:
        vector_assets.state.StateError: the state database cannot be opened or written.
    """

    def __init__(self, landing_url: str | Path, state_url: str | None = None, extra_files: Iterable[str | Path] = ()):
        import fsspec

        self.landing_url = str(landing_url)
        self.remote = is_url(self.landing_url)
        if self.remote:
            self.fs, self.root = fsspec.core.url_to_fs(self.landing_url)
            self.protocol = self.landing_url.split("://", 1)[0]
            #: The source this index reads: the landing URL, or the resolved landing directory.
            self.source = self.landing_url.rstrip("/")
        else:
            local = self.landing_url[len("file://"):] if self.landing_url.startswith("file://") else self.landing_url
            self.fs, self.root, self.protocol = None, str(Path(local).expanduser()), "file"
            self.source = str(Path(local).expanduser().resolve())
        self.extra_files = [str(Path(p).resolve()) for p in extra_files]
        self.state_url = state_url or state.state_url()
        self.source_key = state.source_id(self.source)
        self.engine = state.engine(self.state_url)
        with self._begin() as conn:
            state.upsert(conn, state.sources, [{"source": self.source_key, "url": self.source, "generation": os.urandom(8).hex(), "refreshed_at": None}], ["source"], update=False)

    # ---- database and files ----------------------------------------------------------------

    @contextlib.contextmanager
    def _begin(self) -> Iterator:
        """One transaction on the state database; failures become :class:`LandingIndexError`."""
        with state.translate_errors(self.state_url):
            with self.engine.begin() as conn:
                yield conn

    def _where(self, table, **eq):
        clauses = [table.c.source == self.source_key]
        clauses += [table.c[k] == v for k, v in eq.items()]
        return sa.and_(*clauses)

    def _open(self, path: str):
        return self.fs.open(path, "rb") if is_url(path) else open(path, "rb")

    def _display(self, path: str) -> str:
        return f"{self.protocol}://{path}" if self.remote and not is_url(path) else path

    def files(self) -> list[str]:
        """Every JSONL file to index (local paths, or ``s3://…`` URLs), sorted; raises
        FileNotFoundError if the landing folder (or bucket prefix) is missing."""
        if self.remote:
            try:
                found = sorted(self._display(p) for p in self.fs.find(self.root) if p.endswith(".jsonl"))
            except FileNotFoundError:
                raise FileNotFoundError(f"landing location {self.source} does not exist") from None
            if not found and not self.fs.exists(self.root):
                raise FileNotFoundError(f"landing location {self.source} does not exist")
        else:
            root = Path(self.root)
            if not root.is_dir():
                raise FileNotFoundError(f"landing directory {self.root} does not exist")
            found = sorted(str(p.resolve()) for p in root.rglob("*.jsonl") if p.is_file())
        return found + [p for p in self.extra_files if Path(p).is_file()]

    def file_digest(self, path: str) -> str:
        """The content digest of one file: BLAKE2b of a local file's bytes; the object store's
        ETag (``etag:…``) for a remote object, or BLAKE2b of its bytes where the store has none.
        Raises FileNotFoundError when it is gone."""
        if not is_url(path):
            return file_digest(Path(path))
        info = self.fs.info(path)
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("VersionId")
        if tag:
            return f"etag:{str(tag).strip(chr(34))}"
        digest = hashlib.blake2b(digest_size=16)
        with self.fs.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def refreshed_at(self) -> float | None:
        """When the index was last refreshed (Unix seconds), None when never."""
        with self._begin() as conn:
            return conn.execute(sa.select(state.sources.c.refreshed_at).where(self._where(state.sources))).scalar()

    def stale_files(self) -> list[str]:
        """Files whose content differs from what the index last read (edited, added or
        removed since the last :meth:`refresh`), sorted; empty when the index is current.
        Reads every file's digest; changes nothing."""
        with self._begin() as conn:
            known = dict(conn.execute(sa.select(state.files.c.path, state.files.c.digest).where(self._where(state.files))).all())
        current = set(self.files())
        changed = []
        for path in sorted(current):
            try:
                if known.get(path) != self.file_digest(path):
                    changed.append(path)
            except FileNotFoundError:
                changed.append(path)
        return sorted(changed + [p for p in known if p not in current])

    def unsupported_files(self) -> list[str]:
        """Compressed exports under the landing location (``*.jsonl.gz`` ...), which are not read."""
        if self.remote:
            try:
                return sorted(self._display(p) for p in self.fs.find(self.root) if p.endswith(UNSUPPORTED_SUFFIXES))
            except FileNotFoundError:
                return []
        root = Path(self.root)
        if not root.is_dir():
            return []
        return sorted(str(p.resolve()) for p in root.rglob("*") if p.is_file() and p.name.endswith(UNSUPPORTED_SUFFIXES))

    # ---- refresh ---------------------------------------------------------------------------

    def refresh(self) -> RefreshReport:
        """Re-index files whose content changed (by hash or ETag), drop files that are gone,
        and work out which lines are superseded by newer versions of their record; append the
        tenant-days whose input changed to the change log. One transaction.

        Returns a :class:`RefreshReport`; files whose digest is unchanged are not parsed.
        """
        report = RefreshReport()
        L = state.lines
        with state.exclusive(self.engine, f"refresh:{self.source_key}"), self._begin() as conn:
            known = dict(conn.execute(sa.select(state.files.c.path, state.files.c.digest).where(self._where(state.files))).all())
            before = set(conn.execute(sa.select(L.c.tenant, L.c.day, L.c.digest).where(self._where(L), L.c.superseded_by.is_not(None))).all())
            current = self.files()
            present = set()
            for path in current:
                try:
                    digest = self.file_digest(path)
                    present.add(path)
                    if known.get(path) == digest:
                        continue
                    self._scan_file(conn, path, digest, report)
                except FileNotFoundError:
                    present.discard(path)
                    continue  # removed while refreshing: dropped below
            for path in sorted(set(known) - present):
                report.changed_partitions.update(
                    tuple(r) for r in conn.execute(sa.select(L.c.tenant, L.c.day).distinct().where(self._where(L, path=path), L.c.tenant.is_not(None))).all()
                )
                conn.execute(sa.delete(L).where(self._where(L, path=path)))
                conn.execute(sa.delete(state.files).where(self._where(state.files, path=path)))
                report.files_removed.append(path)
            if report.files_scanned or report.files_removed:
                self._mark_superseded(conn, before, report)
            conn.execute(sa.update(state.sources).where(self._where(state.sources)).values(refreshed_at=time.time()))
            changed = sorted(report.changed_partitions)
            state.upsert(conn, state.partitions_seen, [{"source": self.source_key, "tenant": t, "day": d} for t, d in changed], ["source", "tenant", "day"])
            if changed:
                conn.execute(sa.insert(state.changes), [{"source": self.source_key, "tenant": t, "day": d} for t, d in changed])
        return report

    def _scan_file(self, conn, path: str, digest: str, report: RefreshReport) -> None:
        L = state.lines
        # Keyed by line digest, not line number: a line that only moved is not a change.
        old: dict[str, list[tuple]] = {}
        for line_digest, tenant, day, pk, stamp in conn.execute(sa.select(L.c.digest, L.c.tenant, L.c.day, L.c.pk, L.c.stamp).where(self._where(L, path=path))).all():
            old.setdefault(line_digest, []).append((tenant, day, pk, stamp))
        rows = []
        offset = 0
        with self._open(path) as fh:
            for number, raw in enumerate(fh, start=1):
                length = len(raw)
                if raw.strip():
                    line_digest = _digest(raw)
                    prior = old[line_digest].pop() if old.get(line_digest) else None
                    if prior is not None and prior[0] is not None:
                        tenant, day, pk, stamp = prior
                        reason = None
                    else:
                        tenant, day, pk, stamp, reason = _locate_line(raw)
                        if prior is None and tenant is not None:
                            report.changed_partitions.add((tenant, day))
                        report.lines_scanned += 1
                    rows.append({
                        "source": self.source_key, "path": path, "line": number, "offset": offset, "length": length, "tenant": tenant, "day": day,
                        "digest": line_digest, "reason": reason, "pk": pk, "stamp": stamp, "superseded_by": None,
                    })
                offset += length
        # Lines that disappeared or changed: their old partitions changed too.
        report.changed_partitions.update((g[0], g[1]) for gone in old.values() for g in gone if g[0] is not None)
        conn.execute(sa.delete(L).where(self._where(L, path=path)))
        for chunk in state.batched(rows, 5000):
            conn.execute(sa.insert(L), chunk)
        state.upsert(conn, state.files, [{"source": self.source_key, "path": path, "digest": digest, "lines": len(rows)}], ["source", "path"])
        report.files_scanned.append(path)

    def _mark_superseded(self, conn, before: set[tuple], report: RefreshReport) -> None:
        """Set ``superseded_by`` on every line whose record has a newer version (the latest
        timestamp wins, then the later file path and line); partitions whose set of current
        lines changed by it (against ``before``, the superseded ``(tenant, day, digest)`` of
        before the refresh) are added to the report."""
        L = state.lines
        conn.execute(sa.update(L).where(self._where(L), L.c.superseded_by.is_not(None)).values(superseded_by=None))
        repeated = sa.select(L.c.pk).where(self._where(L), L.c.pk.is_not(None)).group_by(L.c.pk).having(sa.func.count() > 1)
        versions: dict[str, list[tuple]] = {}
        for path, line, pk, tenant, day, stamp in conn.execute(
            sa.select(L.c.path, L.c.line, L.c.pk, L.c.tenant, L.c.day, L.c.stamp).where(self._where(L), L.c.pk.in_(repeated))
        ).all():
            versions.setdefault(pk, []).append((stamp, path, line, tenant, day))
        updates = []
        for found in versions.values():
            found.sort(reverse=True)
            stamp, path, line, tenant, day = found[0]
            winner = f"{path}:{line} (" + (f"tenant {tenant}, " if tenant is not None else "") + f"day {day})"
            updates += [{"p": p, "n": n, "w": winner} for _, p, n, _, _ in found[1:]]
        if updates:
            conn.execute(
                sa.update(L).where(L.c.source == self.source_key, L.c.path == sa.bindparam("p"), L.c.line == sa.bindparam("n")).values(superseded_by=sa.bindparam("w")),
                updates,
            )
        after = set(conn.execute(sa.select(L.c.tenant, L.c.day, L.c.digest).where(self._where(L), L.c.superseded_by.is_not(None))).all())
        report.changed_partitions.update((t, d) for t, d, _ in before ^ after)

    def change_position(self) -> tuple[str, int]:
        """``(generation, seq)``: where this source's change log stands. Every refresh, whoever
        makes it (a run, a sensor, the CLI, on any worker), appends the tenant-days whose input
        it changed; a reader that remembers the position reads every change since with
        :meth:`changed_since`. ``generation`` changes when the index is rebuilt."""
        with self._begin() as conn:
            generation = conn.execute(sa.select(state.sources.c.generation).where(self._where(state.sources))).scalar()
            seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(state.changes.c.seq), 0)).where(self._where(state.changes))).scalar()
        return generation or "", int(seq)

    def changed_since(self, seq: int) -> set[tuple[str, str]]:
        """Tenant-days whose input a refresh changed after position ``seq`` of the change log
        (:meth:`change_position`)."""
        C = state.changes
        with self._begin() as conn:
            return {tuple(r) for r in conn.execute(sa.select(C.c.tenant, C.c.day).distinct().where(self._where(C), C.c.seq > seq)).all()}

    # ---- queries ---------------------------------------------------------------------------

    def tenants(self) -> list[str]:
        """Tenants with at least one placeable line, sorted."""
        L = state.lines
        with self._begin() as conn:
            return sorted(r[0] for r in conn.execute(sa.select(L.c.tenant).distinct().where(self._where(L), L.c.tenant.is_not(None))).all())

    def vanished_tenants(self) -> list[str]:
        """Tenants that had lines once and have none now (their files were removed, or the
        landing location is empty or not mounted), sorted."""
        with self._begin() as conn:
            seen = {r[0] for r in conn.execute(sa.select(state.partitions_seen.c.tenant).distinct().where(self._where(state.partitions_seen))).all()}
        return sorted(seen - set(self.tenants()))

    def vanished_among(self, tenants: Iterable[str]) -> set[str]:
        """Those of ``tenants`` without any line in the landing data now, whether the index saw
        their lines once or only the store holds their rows (an index lost or rebuilt): their
        rows are deleted only on request (``--delete-vanished-tenants``; issue #17 item 2)."""
        return set(tenants) - set(self.tenants())

    def partitions(self, tenants: Iterable[str] | None = None, start: str | None = None, end: str | None = None, include_emptied: bool = True) -> list[tuple[str, str]]:
        """Sorted ``(tenant, day)`` pairs that hold lines now, or held lines once
        (``include_emptied``: their Milvus rows must be deleted), filtered by tenant and by the
        inclusive ``start``/``end`` days (``YYYY-MM-DD``)."""
        tenants = list(tenants or [])
        tables = [state.lines, state.partitions_seen] if include_emptied else [state.lines]
        found: set[tuple[str, str]] = set()
        with self._begin() as conn:
            for table in tables:
                clauses = [self._where(table), table.c.tenant.is_not(None)]
                if tenants:
                    clauses.append(table.c.tenant.in_(tenants))
                if start:
                    clauses.append(table.c.day >= start)
                if end:
                    clauses.append(table.c.day <= end)
                found.update(tuple(r) for r in conn.execute(sa.select(table.c.tenant, table.c.day).distinct().where(*clauses)).all())
        return sorted(found)

    def _lines_of(self, conn, keys: list[tuple[str, str]], *columns, current_only: bool = False):
        """Rows of ``columns`` of the lines of these tenant-days (in no set order).

        Read per group of tenants (:func:`vector_assets.state.partition_groups`: ``tenant IN …
        AND day IN …`` on the ``va_lines_by_partition`` index), lines of tenant-days not asked
        for dropped. Why: ``(tenant, day) IN`` lists of 400 pairs cost PostgreSQL about 0.34 ms a
        tenant-day, 116 s of a 1,000 x 365 backfill's reads (``benchmarks/landing_reads.py``,
        2026-12-02)."""
        L = state.lines
        wanted = set(keys)
        out = []
        for tenants, days in state.partition_groups(wanted):
            clauses = [self._where(L), L.c.tenant.in_(tenants), L.c.day.in_(days)]
            if current_only:
                clauses.append(L.c.superseded_by.is_(None))
            rows = conn.execute(sa.select(L.c.tenant, L.c.day, *columns).where(*clauses)).all()
            out += [row[2:] for row in rows if (row[0], row[1]) in wanted]
        return out

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
        L = state.lines
        out: dict[tuple[str, str], PartitionInput] = {k: PartitionInput() for k in keys}
        with self._begin() as conn:
            located = sorted(
                self._lines_of(conn, keys, L.c.path, L.c.line, L.c.tenant, L.c.day, L.c.offset, L.c.length, L.c.digest, L.c.superseded_by),
                key=lambda r: (r[0], r[1]),
            )
        digests: dict[tuple[str, str], list[str]] = {k: [] for k in keys}
        handle = None
        current = None
        try:
            for path, line, tenant, day, offset, length, digest, superseded_by in located:
                key = (tenant, day)
                if superseded_by is not None:
                    out[key].superseded.append(BadRecord(path, line, f"superseded: the same record id has a newer version at {superseded_by}", ""))
                    continue
                if path != current:
                    if handle:
                        handle.close()
                    current = path
                    try:
                        handle = self._open(path)
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
        L = state.lines
        keys = list(keys)
        digests: dict[tuple[str, str], list[str]] = {k: [] for k in keys}
        with self._begin() as conn:
            for tenant, day, digest in self._lines_of(conn, keys, L.c.tenant, L.c.day, L.c.digest, current_only=True):
                digests[(tenant, day)].append(digest)
        return {k: _fingerprint(v) for k, v in digests.items()}

    def mark_synced(self, store: str, synced: dict[tuple[str, str], tuple[str, int]], usage: dict[tuple[str, str], tuple[int, int]] | None = None) -> None:
        """Record that the Milvus collection ``store`` (see :func:`vector_assets.store.sync.store_key`)
        holds the rows of these tenant-days as of the input they were read from:
        ``{(tenant, day): (fingerprint of the lines read, rows)}``; in the same transaction, add
        ``usage`` ``{(tenant, model): (passages, tokens)}`` embedded to the tenants' counts
        (:data:`vector_assets.state.embedding_usage`).

        A tenant-day without lines that never had any (not in
        :data:`vector_assets.state.partitions_seen`) is not recorded: no reader asks for it
        (:meth:`unsynced_partitions` and the backfill's skip list only tenant-days with lines now or
        once), and such marks were most of a sparse tenant's (0.09 ms of an empty tenant-day's 1.1 ms
        on PostgreSQL, profiled 2026-12-07)."""
        now = time.time()
        counts = [{"source": self.source_key, "tenant": t, "model": m, "passages": p, "tokens": n, "updated_at": now} for (t, m), (p, n) in (usage or {}).items()]
        with self._begin() as conn:
            empty = {k for k, (fp, n) in synced.items() if not fp and not n}
            never = empty - self._present(conn, state.partitions_seen, empty) if empty else set()
            rows = [{"source": self.source_key, "store": store, "tenant": t, "day": d, "fingerprint": fp, "rows": n} for (t, d), (fp, n) in synced.items() if (t, d) not in never]
            state.upsert(conn, state.synced, rows, ["source", "store", "tenant", "day"])
            state.add_counts(conn, state.embedding_usage, counts, ["source", "tenant", "model"], ["passages", "tokens"])

    def mark_written(self, store: str, keys: Iterable[tuple[str, str]], claim: bool = False) -> None:
        """Mark the tenant-days ``keys`` as ones whose rows a run is about to write to the
        collection ``store`` (:data:`vector_assets.state.written`): called before the write, so
        that the store holds rows only of marked tenant-days. ``claim``: the caller created the
        collection and writes its first rows, so every row of it will have a mark; this is
        recorded (:data:`vector_assets.state.written_stores`) in the same transaction."""
        rows = [{"source": self.source_key, "store": store, "tenant": t, "day": d} for t, d in set(keys)]
        with self._begin() as conn:
            if claim:
                state.upsert(conn, state.written_stores, [{"source": self.source_key, "store": store, "claimed_at": time.time()}], ["source", "store"], update=False)
            for chunk in state.batched(rows, 5000):
                state.upsert(conn, state.written, chunk, ["source", "store", "tenant", "day"], update=False)

    def written_among(self, store: str | None, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]] | None:
        """Those of ``keys`` (``(tenant, day)`` pairs) that the collection ``store`` may hold rows
        of, or None when any of them may: the collection does not exist (``store`` None) or was
        not created by a run that marked its writes (one written before the marks existed, or a
        state database other than the one it was created with). A tenant-day outside the set
        holds no row: a run need not ask the store for it.

        One query per 500 tenants over their span of days on the table's primary key, so the
        cost follows the marks found, not the tenant-days asked for (an empty tenant-day cost
        a run about 0.19 ms of Milvus Lite's reading, 2026-12-03)."""
        if not self.claimed(store):
            return None
        with self._begin() as conn:
            return self._present(conn, state.written, set(keys), store=store)

    def claimed(self, store: str | None) -> bool:
        """Whether the collection ``store`` is claimed (:data:`vector_assets.state.written_stores`):
        every row of it was written after its tenant-day's mark (:meth:`mark_written`)."""
        if store is None:
            return False
        S = state.written_stores
        with self._begin() as conn:
            return conn.execute(sa.select(S.c.store).where(self._where(S, store=store))).first() is not None

    def _present(self, conn, table: sa.Table, wanted: set[tuple[str, str]], **eq) -> set[tuple[str, str]]:
        """Those of ``wanted`` (``(tenant, day)`` pairs) that ``table`` holds rows of for this
        source (and the columns ``eq``): one query per 500 tenants over their span of days, on an
        index led by (source, …, tenant, day), so the cost follows the rows found, not the pairs asked."""
        by_tenant: dict[str, list[str]] = {}
        for tenant, day in wanted:
            by_tenant.setdefault(tenant, []).append(day)
        found: set[tuple[str, str]] = set()
        for tenants in state.batched(sorted(by_tenant), 500):
            first = min(min(by_tenant[t]) for t in tenants)
            last = max(max(by_tenant[t]) for t in tenants)
            rows = conn.execute(sa.select(table.c.tenant, table.c.day).where(self._where(table, **eq), table.c.tenant.in_(tenants), table.c.day.between(first, last))).all()
            found.update(k for k in map(tuple, rows) if k in wanted)
        return found

    def _synced(self, store: str | None) -> dict[tuple[str, str], tuple[str, int]]:
        S = state.synced
        with self._begin() as conn:
            return {(t, d): (fp, n) for t, d, fp, n in conn.execute(sa.select(S.c.tenant, S.c.day, S.c.fingerprint, S.c.rows).where(self._where(S, store=store))).all()}

    def unsynced_partitions(self, store: str | None, start: str | None = None, end: str | None = None) -> list[tuple[str, str]]:
        """Tenant-days (with lines now, or emptied since) in ``[start, end]`` whose rows in the
        collection ``store`` were never written or were written from other input than the
        current lines (all of them when ``store`` is None: the collection does not exist)."""
        keys = self.partitions(start=start, end=end)
        if store is None:
            return keys
        current = self.fingerprints(keys)
        done = self._synced(store)
        return [k for k in keys if k not in done or done[k][0] != current[k]]

    def synced_rows(self, store: str | None, keys: Iterable[tuple[str, str]]) -> int:
        """Records written to the collection ``store`` in these tenant-days (as recorded at their last write; a record of several passages counts once)."""
        done = self._synced(store)
        return sum(done[k][1] for k in set(keys) if k in done)

    def synced_partitions(self, store: str | None) -> list[tuple[str, str]]:
        """Tenant-days whose rows were written to the collection ``store`` (so it is expected to hold them)."""
        return sorted(self._synced(store))

    def unattributed(self) -> list[tuple[str, int, str]]:
        """``(file, line, reason)`` of every line that cannot be placed in a tenant-day."""
        L = state.lines
        with self._begin() as conn:
            return sorted(tuple(r) for r in conn.execute(sa.select(L.c.path, L.c.line, L.c.reason).where(self._where(L), L.c.tenant.is_(None))).all())

    def lines_outside(self, start: str, end: str) -> list[tuple[str, int, str, str]]:
        """``(file, line, tenant, day)`` of every placed line whose day is outside ``[start, end]``."""
        L = state.lines
        with self._begin() as conn:
            return sorted(tuple(r) for r in conn.execute(
                sa.select(L.c.path, L.c.line, L.c.tenant, L.c.day).where(self._where(L), L.c.tenant.is_not(None), sa.or_(L.c.day < start, L.c.day > end))
            ).all())

    def current_records(self, tenant: str) -> list[tuple[str, str, str, int]]:
        """``(record key, line digest, file, line)`` of every current (not superseded) record line
        of ``tenant``, by record key: what the tenant's search should find now."""
        L = state.lines
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(L.c.pk, L.c.digest, L.c.path, L.c.line).where(self._where(L), L.c.tenant == tenant, L.c.pk.is_not(None), L.c.superseded_by.is_(None))
            ).all()
        return sorted((pk, digest, path, line) for pk, digest, path, line in rows)

    def line_text(self, path: str, line: int) -> str:
        """The raw text of one indexed line (for quarantine reports); ``""`` if not indexed."""
        L = state.lines
        with self._begin() as conn:
            row = conn.execute(sa.select(L.c.offset, L.c.length).where(self._where(L, path=path, line=line))).first()
        if not row:
            return ""
        with self._open(path) as fh:
            fh.seek(row[0])
            return fh.read(row[1]).decode("utf-8", "replace").rstrip("\n")

    def line_weights(self) -> dict[tuple[str, str], int]:
        """``{(tenant, day): weight}`` of every tenant-day that holds lines now: its lines'
        bytes in units of the landing data's mean line (at least 1 a tenant-day), the run
        planner's estimate of what a tenant-day costs to encode (used to balance runs across
        workers; the total is about the number of lines).

        Bytes rather than lines because the encode's cost follows tokens, and a line's tokens
        vary far more between sources than its bytes do: on the bundled sample a tenant's
        tokens per line range 54-355 (commits to Jira issues), its tokens per byte 0.09-0.27
        (``va_embedding_usage`` against ``va_lines`` after ``make demo``, 2026-12-03)."""
        L = state.lines
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(L.c.tenant, L.c.day, sa.func.count(), sa.func.sum(L.c.length)).where(self._where(L), L.c.tenant.is_not(None)).group_by(L.c.tenant, L.c.day)
            ).all()
        lines, size = sum(r[2] for r in rows), sum(int(r[3] or 0) for r in rows)
        if not size:
            return {(t, d): n for t, d, n, _ in rows}
        return {(t, d): max(1, round(int(b or 0) * lines / size)) for t, d, _, b in rows}

    def count_lines(self) -> int:
        """Number of non-blank lines indexed."""
        with self._begin() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(state.lines).where(self._where(state.lines))).scalar()

    # ---- quarantine reports ------------------------------------------------------------------

    def write_quarantine(self, reports: dict[tuple[str, str], list[BadRecord]]) -> int:
        """Replace the quarantine reports of these tenant-days, in one transaction:
        ``{(tenant, day): bad lines}`` (``("", "")``: the lines that fit no tenant-day), one row
        per bad line with its file, line, reason and raw text (at most 2,000 characters); an
        empty list clears the tenant-day's report. Returns the rows written."""
        Q = state.quarantine
        rows = {}
        for (tenant, day), bad in reports.items():
            for item in bad:
                rows[(tenant, day, item.path, item.line)] = {
                    "source": self.source_key, "tenant": tenant, "day": day, "file": item.path, "line": item.line,
                    "reason": item.reason, "raw": (item.raw or "")[:2000],
                }
        with self._begin() as conn:
            for chunk in state.batched(sorted(reports), 400):
                conn.execute(sa.delete(Q).where(self._where(Q), sa.tuple_(Q.c.tenant, Q.c.day).in_(chunk)))
            for chunk in state.batched(list(rows.values()), 2000):
                conn.execute(sa.insert(Q), chunk)
        return len(rows)

    def quarantined(self, tenant: str | None = None, day: str | None = None) -> list[dict]:
        """The quarantine reports: ``{"tenant", "day", "file", "line", "reason", "raw"}`` dicts
        sorted by tenant, day, file and line; of one tenant (and day) when given, the lines
        that fit no tenant-day with ``tenant=""``."""
        Q = state.quarantine
        clauses = [self._where(Q)]
        if tenant is not None:
            clauses.append(Q.c.tenant == tenant)
        if day is not None:
            clauses.append(Q.c.day == day)
        with self._begin() as conn:
            found = conn.execute(sa.select(Q.c.tenant, Q.c.day, Q.c.file, Q.c.line, Q.c.reason, Q.c.raw).where(*clauses)).all()
        return [dict(zip(("tenant", "day", "file", "line", "reason", "raw"), r)) for r in sorted(found)]

    def import_sqlite_index(self, old_path: Path) -> tuple[int, int]:
        """Carry the sync marks and the tenant-days seen of a landing index file of before the
        state database (``landing_index-<hash>.sqlite``) into this source's rows. Returns
        ``(sync marks, tenant-days seen)`` imported. The lines are not imported: the next
        refresh re-reads the landing files."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(old_path)) as old:
            synced = old.execute("SELECT store, tenant, day, fingerprint, rows FROM synced").fetchall()
            seen = old.execute("SELECT tenant, day FROM partitions_seen").fetchall()
        with self._begin() as conn:
            state.upsert(conn, state.synced, [dict(source=self.source_key, store=s, tenant=t, day=d, fingerprint=fp, rows=n) for s, t, d, fp, n in synced], ["source", "store", "tenant", "day"])
            state.upsert(conn, state.partitions_seen, [dict(source=self.source_key, tenant=t, day=d) for t, d in seen], ["source", "tenant", "day"])
        return len(synced), len(seen)


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
