"""The state every worker shares: the landing index, the sync marks and the quarantine reports,
in one SQL database reached through SQLAlchemy.

Where it lives (:func:`state_url`):

- ``$VECTOR_ASSETS_STATE_URL`` when set (any SQLAlchemy URL: ``postgresql+psycopg2://…`` or
  ``sqlite:////path/state.sqlite``);
- else the Dagster instance's PostgreSQL when it has one (``DAGSTER_PG_HOST`` and the other
  ``DAGSTER_PG_*`` variables that ``dagster.postgres.yaml`` reads): the tables sit beside
  Dagster's, named ``va_*``;
- else ``$VECTOR_ASSETS_HOME/state.sqlite`` (the embedded default, one machine).

Safe with concurrent writers on several machines: every change is a transaction, the keys are
unique constraints, upserts are ``INSERT … ON CONFLICT`` and a landing source's refresh is
serialised by a PostgreSQL advisory lock (on SQLite, a file lock beside the database: SQLite
is for one machine). Rows of different landing sources never mix: each table is keyed by the
source's id (:func:`source_id`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote_plus

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from ..local import file_lock

#: Bumped when the tables below change; a database of another version is migrated by dropping
#: the derived tables (files, lines: rebuilt from the landing files) and keeping the rest.
SCHEMA_VERSION = "1"

metadata = sa.MetaData()

#: One row per landing source: its URL, the generation of its change log, when it was refreshed.
sources = sa.Table(
    "va_sources", metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("generation", sa.String(32), nullable=False),
    sa.Column("refreshed_at", sa.Float),
)
#: The files of a source as last read: their digest (content hash, or the object store's ETag).
files = sa.Table(
    "va_files", metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("lines", sa.Integer, nullable=False),
)
#: Every non-blank line of every file: where it is, its tenant-day, the record key and version.
lines = sa.Table(
    "va_lines", metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("length", sa.Integer, nullable=False),
    sa.Column("tenant", sa.Text),
    sa.Column("day", sa.String(10)),
    sa.Column("digest", sa.String(24), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("pk", sa.Text),
    sa.Column("stamp", sa.BigInteger),
    sa.Column("superseded_by", sa.Text),
    sa.Index("va_lines_by_partition", "source", "tenant", "day"),
    sa.Index("va_lines_by_pk", "source", "pk"),
)
#: Tenant-days that ever held lines (an emptied one must have its rows deleted).
partitions_seen = sa.Table(
    "va_partitions_seen", metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
)
#: The change log: tenant-days whose input a refresh changed, in order (the new-data sensor's cursor).
changes = sa.Table(
    "va_changes", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("day", sa.String(10), nullable=False),
    sa.Index("va_changes_by_source", "source", "seq"),
)
#: What a store holds: the fingerprint of the lines each tenant-day's rows were written from.
synced = sa.Table(
    "va_synced", metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("store", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("fingerprint", sa.String(24), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
)
#: Write-ahead marks: every tenant-day a run wrote rows of to the collection ``store``, marked
#: before its rows are written (a crash between the two leaves a mark without rows, never rows
#: without a mark). Never removed: a mark says the store *may* hold rows of the tenant-day.
written = sa.Table(
    "va_written", metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("store", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
)
#: Collections (store keys) whose every row was written after its mark in ``va_written``: those a
#: run of this code created, claimed before its first row. Only for these may a run skip reading
#: the store for tenant-days without a mark (:meth:`~vector_assets.ingest.landing.LandingIndex.written_among`).
written_stores = sa.Table(
    "va_written_stores", metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("store", sa.Text, primary_key=True),
    sa.Column("claimed_at", sa.Float, nullable=False),
)
#: What the pipeline embedded, per landing source, tenant and model: passages and the tokens the
#: model read for them, added to by every run that wrote (issue #20 item 6). Cumulative, as
#: Prometheus counters are: a tenant-day embedded again counts again. Read by the search
#: service's ``/metrics`` (:func:`read_embedding_usage`).
embedding_usage = sa.Table(
    "va_embedding_usage", metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("passages", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float),
)
#: The quarantine reports: each tenant-day's bad lines (file, line, reason, raw text), replaced
#: by each run of the tenant-day; tenant ``""`` and day ``""`` hold the lines that fit no tenant-day.
quarantine = sa.Table(
    "va_quarantine", metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("file", sa.Text, primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
)
#: Each tenant's golden queries (:mod:`vector_assets.serving.retrieval`): the sample's version, each
#: query's kind, text and answer record.
golden_queries = sa.Table(
    "va_golden_queries", metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("query_id", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("record_id", sa.Text, nullable=False),
)
#: Recall@10 and MRR@10 of each evaluation of a tenant's golden queries, per collection (its
#: store key) and search mode: the first of a store, tenant, mode and sample version is the baseline.
retrieval_figures = sa.Table(
    "va_retrieval_figures", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("store", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("recall", sa.Float, nullable=False),
    sa.Column("mrr", sa.Float, nullable=False),
    sa.Column("measured_at", sa.Float, nullable=False),
    sa.Index("va_retrieval_figures_by_tenant", "store", "tenant", "mode", "version"),
)
meta = sa.Table(
    "va_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


class StateError(RuntimeError):
    """The state database cannot be read or written (corrupt, unreachable, or its disk full);
    the message names the database, the cause and the recovery."""


def state_url() -> str:
    """The SQLAlchemy URL of the state database (see the module docstring for the order)."""
    explicit = os.environ.get("VECTOR_ASSETS_STATE_URL", "").strip()
    if explicit:
        return explicit
    if os.environ.get("DAGSTER_PG_HOST"):
        env = os.environ
        user, password = quote_plus(env.get("DAGSTER_PG_USER", "")), quote_plus(env.get("DAGSTER_PG_PASSWORD", ""))
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        port = f":{env['DAGSTER_PG_PORT']}" if env.get("DAGSTER_PG_PORT") else ""
        return f"postgresql+psycopg2://{auth}{env['DAGSTER_PG_HOST']}{port}/{env.get('DAGSTER_PG_DB', 'postgres')}"
    from .. import settings

    return f"sqlite:///{settings.home_dir().resolve() / 'state.sqlite'}"


def redacted(url: str) -> str:
    """``url`` without its password (for messages)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: shown as given
        return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, None for another database."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def source_id(url: str) -> str:
    """The id of a landing source in the state tables: BLAKE2b (12 hex digits) of its URL."""
    return hashlib.blake2b(url.encode(), digest_size=6).hexdigest()


_ENGINES: dict[tuple[int, str], sa.Engine] = {}
_LOCK = threading.Lock()


def _on_sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def engine(url: str | None = None) -> sa.Engine:
    """The engine of the state database ``url`` (default :func:`state_url`), its tables created
    (or migrated) on first use; one per URL and process (a forked process makes its own).

    Raises:
        StateError: the database cannot be opened (the message says which and how to recover).
    """
    url = url or state_url()
    key = (os.getpid(), url)
    with _LOCK:
        if key in _ENGINES:
            return _ENGINES[key]
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            made = sa.create_engine(url, connect_args={"timeout": 60})
            sa.event.listen(made, "connect", _on_sqlite_connect)
        else:
            # psycopg2 runs an executemany statement once per row, a round trip each: the sync
            # marks of a run (an INSERT ... ON CONFLICT per tenant-day) took 0.18 ms a row, 89 s of
            # the 1000 x 365 grid's 852 s (benchmarks/org_scale.py, 2026-12-02). SQLAlchemy's
            # "values_plus_batch" sends them in pages (psycopg2's execute_batch): 0.04 ms a row.
            options = {"executemany_mode": "values_plus_batch"} if sa.engine.make_url(url).get_driver_name() == "psycopg2" else {}
            made = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4, **options)
        with translate_errors(url), exclusive(made, "schema"):
            _create_or_migrate(made)
        _ENGINES[key] = made
        return made


def _create_or_migrate(made: sa.Engine) -> None:
    with made.begin() as conn:
        meta.create(conn, checkfirst=True)
        version = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        if version is not None and version != SCHEMA_VERSION:
            # The line index is derived from the landing files: rebuilt by the next refresh.
            for table in (lines, files):
                table.drop(conn, checkfirst=True)
            conn.execute(sa.update(sources).values(generation=os.urandom(8).hex()))
        metadata.create_all(conn)
        upsert(conn, meta, [{"key": "schema_version", "value": SCHEMA_VERSION}], ["key"])


@contextlib.contextmanager
def exclusive(made: sa.Engine, name: str) -> Iterator[None]:
    """Hold a lock named ``name`` across machines (PostgreSQL: a session advisory lock) or across
    the processes of this machine (SQLite: ``fcntl`` on a file beside the database)."""
    path = sqlite_path(str(made.url))
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
    if made.dialect.name == "postgresql":
        with made.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    if path is None:
        yield
        return
    lock = path.with_name(f"{path.name}.{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}.lock")
    with file_lock(lock):
        yield


def _dialect_insert(conn: sa.Connection, table: sa.Table):
    """An INSERT into ``table`` of the connection's dialect (PostgreSQL's or SQLite's), the kind
    that takes ``ON CONFLICT``."""
    return (pg_dialect.insert if conn.dialect.name == "postgresql" else sqlite_dialect.insert)(table)


def dispose_engines() -> None:
    """Close and forget this process's engines (their pools), so that the next :func:`engine`
    connects anew and creates the tables again: for a database dropped and made anew under the
    process (the benchmarks' fresh databases)."""
    with _LOCK:
        for made in _ENGINES.values():
            made.dispose()
        _ENGINES.clear()


def upsert(conn: sa.Connection, table: sa.Table, rows: list[dict], keys: list[str], update: bool = True) -> None:
    """``INSERT … ON CONFLICT (keys) DO UPDATE`` of ``rows`` (dicts of column values) into
    ``table``, on SQLite and PostgreSQL; columns outside ``keys`` take the new values
    (``update=False``: ``DO NOTHING``, an existing row is kept as it is). ``keys``: the primary
    key's columns."""
    if not rows:
        return
    insert = _dialect_insert(conn, table)
    others = [c.name for c in table.c if c.name not in keys]
    if update and others:
        stmt = insert.on_conflict_do_update(index_elements=keys, set_={c: insert.excluded[c] for c in others})
    else:
        stmt = insert.on_conflict_do_nothing(index_elements=keys)
    conn.execute(stmt, rows)


def add_counts(conn: sa.Connection, table: sa.Table, rows: list[dict], keys: list[str], counters: list[str]) -> None:
    """``INSERT … ON CONFLICT (keys) DO UPDATE`` of ``rows`` into ``table`` that adds each row's
    ``counters`` to the stored ones (one statement: concurrent writers lose no count); the other
    columns outside ``keys`` take the new values. SQLite and PostgreSQL."""
    if not rows:
        return
    insert = _dialect_insert(conn, table)
    update = {c: table.c[c] + insert.excluded[c] for c in counters}
    update |= {c.name: insert.excluded[c.name] for c in table.c if c.name not in keys and c.name not in counters}
    conn.execute(insert.on_conflict_do_update(index_elements=keys, set_=update), rows)


def read_embedding_usage(url: str | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(tenant, model): (passages, tokens)}`` the pipeline has embedded, over every landing
    source of the state database at ``url`` (default :func:`state_url`). Raises
    :class:`StateError` when the database cannot be opened."""
    u = embedding_usage
    with translate_errors(url or state_url()), engine(url).begin() as conn:
        rows = conn.execute(sa.select(u.c.tenant, u.c.model, sa.func.sum(u.c.passages), sa.func.sum(u.c.tokens)).group_by(u.c.tenant, u.c.model)).all()
    return {(tenant, model): (int(passages), int(tokens)) for tenant, model, passages, tokens in rows}


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn a database failure other than a lock timeout into :class:`StateError` with the
    database, the cause and the recovery in one line (issue #17 item 12)."""
    try:
        yield
    except sa.exc.DBAPIError as err:
        text = str(err.orig) if err.orig is not None else str(err)
        if "locked" in text:
            raise
        path = sqlite_path(url)
        if path is not None:
            recovery = (
                f"The landing index is rebuilt from the landing files when the file is removed: `rm {path}*` (vectors in Milvus are kept; "
                "the next backfill re-reads every tenant-day and embeds nothing unchanged); for a full disk, free space and run again"
            )
        else:
            recovery = "check that the database is reachable and that the role may create tables (VECTOR_ASSETS_STATE_URL)"
        raise StateError(f"state database {path or redacted(url)}: {text.strip()}. {recovery}") from err


def partition_groups(keys: Iterable[tuple[str, str]], max_tenants: int = 100, max_days: int = 500, max_spread: float = 4.0) -> list[tuple[list[str], list[str]]]:
    """``keys`` (``(tenant, day)`` pairs) as ``[(tenants, days)]`` groups, each read in one query,
    whose cross products cover the keys, so that a run over many tenants reads their stored rows
    in a few queries, not one per tenant.

    Tenants asking for the same days share a group, whose cross product is exactly their keys.
    Tenants asking for different days share one while the group's cross product stays within
    ``max_spread`` times the keys it holds: the rows of the keys not asked for are read, and the
    callers drop them. A group holds at most ``max_tenants`` tenants and ``max_days`` days; a
    tenant asking for more days gets groups of its own.

    Why: a daily run over 901 tenants' days (1,000 tenants, 10 with new records) read them with one
    Milvus Lite query per tenant: 901 queries of 20 ms, 18.6 s of the run's 22.3 s at 1,000 x 120
    days, and 103 s at 1,000 x 365 (``benchmarks/org_scale.py``, 2026-12-02)."""
    by_tenant: dict[str, set[str]] = {}
    for tenant, day in keys:
        by_tenant.setdefault(tenant, set()).add(day)
    by_days: dict[tuple[str, ...], list[str]] = {}
    for tenant, days in by_tenant.items():
        by_days.setdefault(tuple(sorted(days)), []).append(tenant)
    groups: list[tuple[list[str], list[str]]] = []
    tenants_now: list[str] = []
    days_now: set[str] = set()
    asked = 0  # keys the open group holds
    for days, tenants in sorted(by_days.items()):
        if len(days) > max_days:
            groups += [(tenants[i : i + max_tenants], list(days[j : j + max_days])) for i in range(0, len(tenants), max_tenants) for j in range(0, len(days), max_days)]
            continue
        for i in range(0, len(tenants), max_tenants):
            chunk = tenants[i : i + max_tenants]
            union = days_now | set(days)
            n = len(tenants_now) + len(chunk)
            if tenants_now and (n > max_tenants or len(union) > max_days or n * len(union) > max_spread * (asked + len(chunk) * len(days))):
                groups.append((tenants_now, sorted(days_now)))
                tenants_now, days_now, asked, union = [], set(), 0, set(days)
            tenants_now = tenants_now + chunk
            days_now = union
            asked += len(chunk) * len(days)
    if tenants_now:
        groups.append((tenants_now, sorted(days_now)))
    return groups


def batched(items: list, size: int = 500) -> Iterator[list]:
    """``items`` in slices of at most ``size`` (bound parameters per statement stay few)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = [
    "SCHEMA_VERSION", "StateError", "batched", "changes", "engine", "exclusive", "files", "lines", "meta", "metadata",
    "partitions_seen", "quarantine", "redacted", "source_id", "sources", "sqlite_path", "state_url", "synced", "translate_errors", "upsert", "written", "written_stores",
]
