"""Milvus storage: the collection schema, partition-scoped reads and writes, and the local server.

One collection per embedding model (:func:`collection_name`). Rows are keyed by
:func:`vector_assets.ingest.records.primary_key`, with ``tenant`` as the partition key, so a search
filtered on one tenant touches only that tenant's data.

**Milvus Lite and concurrency.** A Milvus Lite data directory admits one process at a time
(a second gets "Open local milvus failed"). So a local path is never opened in-process:
:func:`ensure_local_server` starts one ``milvus-lite server`` per data directory (detached,
loopback only), records its port beside the data, and every process — overlapping backfill
runs, sensors, ``vector-assets search`` — connects to it over gRPC, as to a Milvus server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from pymilvus import DataType, Function, FunctionType, MilvusClient

from ..local import file_lock, pid_alive
from .base import RRF_K, VectorStore, partition_groups
from pymilvus.exceptions import MilvusException

log = logging.getLogger(__name__)

#: Field lengths (bytes) of the VARCHAR fields.
MAX_TENANT = 256
MAX_RECORD_ID = 512
MAX_PREVIEW = 1024
#: Bytes of a passage's text stored in the ``text`` field (a window of 248 word pieces is
#: 1-2 KB of English; words the tokenizer cannot split can make it longer, and are cut here).
MAX_PASSAGE_TEXT = 16384
#: The first Milvus server with the BM25 function (Milvus Lite 3.2 has it too).
BM25_VERSION = (2, 5)
#: Analyzer of the BM25 field: Milvus's ``standard`` tokenizer (Unicode word boundaries: splits
#: ``HADOOP-1234`` into ``hadoop``/``1234``, ``DataNode.java`` into ``datanode``/``java``) with
#: lowercasing, no stemming and no stop words: identifiers, error codes and file names are
#: what engineers type (see README "Search quality" for the analyzers measured).
BM25_ANALYZER = {"tokenizer": "standard", "filter": ["lowercase"]}

#: Collection property naming the model whose vectors the collection holds.
MODEL_PROPERTY = "vector_assets.model"

#: Collection property holding a random id given at creation: a collection dropped and
#: re-created under the same name is another collection (Milvus Lite reports collection_id 0).
UID_PROPERTY = "vector_assets.collection_uid"

#: Collection property naming the landing source (the resolved landing directory) whose
#: records the collection holds. A collection is bound to one source: a run that reads another
#: is refused (:func:`bind_source`), since each source's runs delete the rows its own data does
#: not hold (issue #17 item 1: two landing folders feeding one store deleted each other's rows).
SOURCE_PROPERTY = "vector_assets.landing_source"

#: Milvus's largest ``limit`` for one query.
QUERY_LIMIT = 16384

#: HNSW ``ef`` of a search, user searches and the checks' self-searches alike. On
#: eval_pr_commits (four tenants, 20,465 commits, kind filter) ef 64 gave recall@10 0.755 on all
#: queries and ef 512 0.771, against 0.801 for exact search.
DEFAULT_EF = 256
#: The vector index's build parameters when none are given (and ``MilvusResource``'s default):
#: HNSW with M 16 and efConstruction 200. A Milvus server refuses an HNSW index without them.
DEFAULT_HNSW_PARAMS = {"M": 16, "efConstruction": 200}


def is_local_uri(uri: str) -> bool:
    """True when ``uri`` is a Milvus Lite path rather than a server address."""
    return not re.match(r"^[a-z][a-z0-9+.-]*://", uri)


#: Prefix of the collections' names. "passages" since rows are passages and the collection has
#: the passage text and BM25 fields (issue #11); a "records__..." collection of an older
#: version is left as it was (drop it when the new one is written).
COLLECTION_PREFIX = "passages"


def collection_name(model_id: str, prefix: str = COLLECTION_PREFIX) -> str:
    """Collection for one embedding model: ``<prefix>__<model slug>__<hash>``, e.g.
    ``passages__all_minilm_l6_v2__e9e2c881``.

    The hash (8 hex characters of SHA-256 of the full model id: a hub name or a local path) keys
    the collection by the whole identity, so ``acme/all-MiniLM-L6-v2`` or a local folder of
    another model named ``all-MiniLM-L6-v2`` never shares the default model's collection; the
    slug (the id's last segment, at most 40 characters) keeps the name readable. The dimension
    is recorded on the collection and checked on every write
    (:meth:`vector_assets.resources.MilvusResource.ensure_collection`). Milvus names allow
    letters, digits and underscores.
    """
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", model_id.rstrip("/").rsplit("/", 1)[-1]).strip("_").lower()[:40]
    digest = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:8]
    return f"{prefix}__{slug}__{digest}"


# ---- the local Milvus Lite server ----------------------------------------------------------


def _state_path(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".server.json")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running_local_server(data_dir: str | Path) -> str | None:
    """URI of the live server for ``data_dir``, or None when none is running."""
    state = _state_path(Path(data_dir).resolve())
    if not state.exists():
        return None
    try:
        info = json.loads(state.read_text())
    except ValueError:
        return None
    if pid_alive(info["pid"]) and _port_open(info["port"]):
        return f"http://127.0.0.1:{info['port']}"
    return None


def ensure_local_server(data_dir: str | Path, timeout_s: float = 60.0) -> str:
    """Start (or find) the ``milvus-lite server`` for ``data_dir``; return its ``http://`` URI.

    Safe to call from many processes at once: a file lock beside the data directory admits one
    starter. The server is detached (its own session; output to ``<data_dir>.server.log``) and
    outlives the caller; :func:`stop_local_server` ends it.

    Raises RuntimeError with the tail of the server log when it does not come up in
    ``timeout_s`` seconds.
    """
    data_dir = Path(data_dir).resolve()
    with file_lock(data_dir.with_name(data_dir.name + ".server.lock")):
        uri = running_local_server(data_dir)
        if uri:
            return uri
        port = _free_port()
        log_path = data_dir.with_name(data_dir.name + ".server.log")
        exe = Path(sys.executable).with_name("milvus-lite")
        cmd = [str(exe)] if exe.exists() else [shutil.which("milvus-lite") or "milvus-lite"]
        cmd += ["server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _port_open(port):
                _state_path(data_dir).write_text(json.dumps({"pid": proc.pid, "port": port}))
                return f"http://127.0.0.1:{port}"
            time.sleep(0.1)
        with contextlib.suppress(Exception):
            proc.kill()
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"milvus-lite server for {data_dir} did not start: {tail.strip().splitlines()[-1] if tail.strip() else 'no output'}")


def stop_local_server(data_dir: str | Path) -> bool:
    """Stop the server of ``data_dir`` if one runs; returns whether one was stopped."""
    data_dir = Path(data_dir).resolve()
    state = _state_path(data_dir)
    if not state.exists():
        return False
    info = json.loads(state.read_text())
    stopped = False
    if pid_alive(info["pid"]):
        os.kill(info["pid"], signal.SIGTERM)
        for _ in range(100):
            if not pid_alive(info["pid"]):
                break
            time.sleep(0.05)
        else:
            os.kill(info["pid"], signal.SIGKILL)
        stopped = True
    state.unlink(missing_ok=True)
    return stopped


#: gRPC keepalive the servers accept. pymilvus pings every 10 s even without calls; a gRPC
#: server's default policy (Milvus Lite's server, and Milvus' own ``grpc.serverMaxRecvSize``
#: era servers) allows one ping per 5 minutes, answers more with ``GOAWAY too_many_pings`` and
#: drops the connection (the lines seen in the terminal during runs). Pinging every 5 minutes,
#: only while calls are in flight, keeps dead-connection detection without the noise.
KEEPALIVE_OPTIONS = {
    "grpc.keepalive_time_ms": 300_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.keepalive_permit_without_calls": False,
}


def connect(uri: str, token: str = "", start_server: bool = True) -> MilvusClient:
    """A :class:`MilvusClient` for ``uri``: a server address as given, or a local Milvus Lite
    path through its shared local server (started when ``start_server``).

    Raises FileNotFoundError when ``uri`` is a local path that does not exist and
    ``start_server`` is False (a reader must not create an empty database).
    """
    if is_local_uri(uri):
        path = Path(uri).expanduser()
        if not start_server and not path.exists():
            raise FileNotFoundError(f"no Milvus database at {path}; run `vector-assets backfill` first")
        path.parent.mkdir(parents=True, exist_ok=True)
        return MilvusClient(uri=ensure_local_server(path), grpc_options=KEEPALIVE_OPTIONS)
    return MilvusClient(uri=uri, token=token or "", grpc_options=KEEPALIVE_OPTIONS)


# ---- what the server can do -------------------------------------------------------------------

#: Oldest Milvus server version driven: 2.3 (the ``milvus`` 2.3.5 package on PyPI runs one).
MIN_SERVER_VERSION = (2, 3)

#: From this version on (and on Milvus Lite), ``upsert`` into a partition-key collection and
#: ``INVERTED`` scalar indexes are used; before it (2.3.x) rows are written by delete + insert and VARCHAR fields get
#: a ``Trie`` index. Measured on milvus 2.3.5: upserting 100 rows of one tenant, then
#: ``query(filter='tenant == "HADOOP"')`` counted 1 row (insert: 100); ``INVERTED`` was refused
#: ("index type not match: expected=Trie actual=INVERTED").
UPSERT_SAFE_VERSION = (2, 4)


class UnsupportedServerError(RuntimeError):
    """A Milvus server older than :data:`MIN_SERVER_VERSION`."""


def server_version(client: MilvusClient) -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` of a Milvus server, or None for Milvus Lite (which reports
    ``milvus_lite-<version>`` and supports everything used here). Cached on the client.

    Raises :class:`UnsupportedServerError` (one line naming the version) for a server older
    than :data:`MIN_SERVER_VERSION`.
    """
    cached = getattr(client, "_vector_assets_version", "unset")
    if cached != "unset":
        return cached
    raw = str(client.get_server_version())
    version = None
    # Milvus Lite says "milvus_lite-3.2.2"; the standalone server of the ``milvus`` package "v2.3.5-lite".
    if not raw.lower().startswith("milvus_lite"):
        match = re.search(r"(\d+)\.(\d+)\.(\d+)", raw)
        if match:
            version = tuple(int(x) for x in match.groups())
            if version[:2] < MIN_SERVER_VERSION:
                raise UnsupportedServerError(f"Milvus server {raw} is older than {'.'.join(map(str, MIN_SERVER_VERSION))}, the oldest vector_assets drives")
    client._vector_assets_version = version
    return version


def upsert_is_safe(client: MilvusClient) -> bool:
    """Whether ``upsert`` keeps rows in their partition-key partition on this server."""
    version = server_version(client)
    return version is None or version[:2] >= UPSERT_SAFE_VERSION


def bm25_supported(client: MilvusClient) -> bool:
    """Whether this store has Milvus's BM25 function (Milvus Lite; servers from 2.5)."""
    version = server_version(client)
    return version is None or version[:2] >= BM25_VERSION


def has_bm25(client: MilvusClient, name: str) -> bool:
    """Whether collection ``name`` has the BM25 ``sparse`` field (created on a store with BM25).
    Cached on the client per collection (a search asks on every call; a collection re-created
    under the same name on the same store gets the same fields)."""
    cache = client.__dict__.setdefault("_vector_assets_bm25", {})
    if name not in cache:
        cache[name] = any(f.get("name") == "sparse" for f in client.describe_collection(name).get("fields", []))
    return cache[name]


def scalar_index_type(client: MilvusClient) -> str:
    """The index type of the ``tenant`` and ``day`` VARCHAR fields: ``INVERTED``, or ``Trie``
    on servers before :data:`UPSERT_SAFE_VERSION` (2.3 refuses ``INVERTED``)."""
    version = server_version(client)
    return "INVERTED" if version is None or version[:2] >= UPSERT_SAFE_VERSION else "Trie"


def write_rows(client: MilvusClient, name: str, rows: list[dict], batch: int = 2000) -> None:
    """Write ``rows`` (replacing rows of the same primary keys): ``upsert`` where it is safe,
    else delete the keys, then insert (:data:`UPSERT_SAFE_VERSION`)."""
    safe = upsert_is_safe(client)
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        if safe:
            client.upsert(name, chunk)
        else:
            client.delete(name, filter=f"pk in {quote_list([r['pk'] for r in chunk])}")
            client.insert(name, chunk)


# ---- the collection --------------------------------------------------------------------------


def create_collection(client: MilvusClient, name: str, dim: int, index_type: str = "HNSW", metric_type: str = "COSINE", index_params: dict | None = None, model_id: str = "") -> None:
    """Create collection ``name`` for ``dim``-dimensional float32 vectors if it does not exist,
    index it and load it.

    Fields: pk (VARCHAR primary key; a passage's, :func:`vector_assets.ingest.passages.passage_pk`),
    tenant (partition key), day (``YYYY-MM-DD``), kind, record_id, passage (index of the passage
    in its record), content_hash (SHA-256 hex of model id + passage text), model, created_at
    and embedded_at (Unix seconds), preview (first 200 characters), text (the passage's text,
    at most :data:`MAX_PASSAGE_TEXT` bytes), vector; on a store with BM25
    (:func:`bm25_supported`) also ``sparse``, filled by Milvus's BM25 function from ``text``
    (analyzer :data:`BM25_ANALYZER`), indexed for BM25. The collection's properties name its
    model and dimension: the collection belongs to that model.
    """
    if not client.has_collection(name):
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, max_length=64, is_primary=True)
        schema.add_field("tenant", DataType.VARCHAR, max_length=MAX_TENANT, is_partition_key=True)
        schema.add_field("day", DataType.VARCHAR, max_length=10)
        schema.add_field("kind", DataType.VARCHAR, max_length=64)
        schema.add_field("record_id", DataType.VARCHAR, max_length=MAX_RECORD_ID)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("model", DataType.VARCHAR, max_length=256)
        schema.add_field("created_at", DataType.INT64)
        schema.add_field("embedded_at", DataType.INT64)
        schema.add_field("preview", DataType.VARCHAR, max_length=MAX_PREVIEW)
        schema.add_field("passage", DataType.INT64)
        bm25 = bm25_supported(client)
        if bm25:
            schema.add_field("text", DataType.VARCHAR, max_length=MAX_PASSAGE_TEXT, enable_analyzer=True, analyzer_params=BM25_ANALYZER)
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["sparse"]))
        else:
            schema.add_field("text", DataType.VARCHAR, max_length=MAX_PASSAGE_TEXT)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = client.prepare_index_params()
        if index_params is None and index_type == "HNSW":
            index_params = DEFAULT_HNSW_PARAMS
        params.add_index("vector", index_type=index_type, metric_type=metric_type, params=dict(index_params or {}))
        if bm25:
            params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        # Partition reads filter on tenant and day: scalar indexes keep those scans short
        # (INVERTED where the server has it, Trie on 2.3).
        params.add_index("tenant", index_type=scalar_index_type(client))
        params.add_index("day", index_type=scalar_index_type(client))
        # Strong consistency: the checks read what the step has just written (a 2.3 server's
        # default, Bounded, let coverage read 0 rows of a tenant-day written a moment before).
        client.create_collection(name, schema=schema, num_partitions=16, consistency_level="Strong")
        # Indexed here, not through create_collection: pymilvus then waits for each index to be
        # built, polling every 0.5 s (wait_for_creating_index), 2 s for the four indexes of an
        # empty collection, which has nothing to build (a fifth of a 1,500-commit backfill's
        # Milvus time: cProfile of benchmarks/pipeline.py encode, 2026-12-03). The load below
        # waits for what loading needs.
        client.create_index(name, params, sync=False)
        # Two runs that find no collection both create it (the second create is a no-op): only
        # the first to get here gives it its uid, so the rows either records as synced are
        # recorded against the same identity (a second random uid orphaned the first run's
        # sync records: seen with two concurrent runs of a UI backfill on a fresh database).
        properties = {MODEL_PROPERTY: model_id, "vector_assets.dim": str(dim)}
        if not (client.describe_collection(name).get("properties") or {}).get(UID_PROPERTY):
            properties[UID_PROPERTY] = uuid.uuid4().hex
        client.alter_collection_properties(name, properties=properties)
    load(client, name)


#: What a 2.3 server says when a collection's indexes changed after it was loaded.
STALE_LOAD = "can't change the index for loaded collection"


def load(client: MilvusClient, name: str) -> None:
    """Load collection ``name``. Two workers that create it at once (:func:`create_collection`)
    can leave a 2.3 server with the collection loaded before the other worker's last index was
    made; the server then refuses that load and every later one ("can't change the index for
    loaded collection", code 1100; seen in the two-Celery-worker test: every run after the first
    failed). The collection is then released and loaded again, with all its indexes. Other
    errors propagate."""
    try:
        client.load_collection(name)
    except MilvusException as err:
        if STALE_LOAD not in str(err):
            raise
        log.warning("collection %s was loaded before all its indexes were made: loading it again", name)
        client.release_collection(name)
        client.load_collection(name)


def collection_uid(client: MilvusClient, name: str) -> str | None:
    """The collection's :data:`UID_PROPERTY` (given one now if it was created without it), or
    None when the collection does not exist."""
    if not client.has_collection(name):
        return None
    uid = (client.describe_collection(name).get("properties") or {}).get(UID_PROPERTY)
    if not uid:
        uid = uuid.uuid4().hex
        client.alter_collection_properties(name, properties={UID_PROPERTY: uid})
    return uid


def store_key(uri: str, client: MilvusClient, name: str) -> str | None:
    """The identity of one collection in one Milvus: ``<uri>|<collection>|<uid>`` (a local
    path resolved), or None when the collection does not exist. What was written is recorded
    against it (:meth:`vector_assets.ingest.landing.LandingIndex.mark_synced`), so another database,
    or a collection dropped and re-created, is never taken to hold rows it does not."""
    uid = collection_uid(client, name)
    if uid is None:
        return None
    where = str(Path(uri).expanduser().resolve()) if is_local_uri(uri) else uri.rstrip("/")
    return f"{where}|{name}|{uid}"


def error_line(err: BaseException) -> str:
    """The first line of an error's message (a Milvus error's own ``message``, else ``str``), at
    most 300 characters, or its type when it has none: what a one-line error says."""
    text = (getattr(err, "message", "") or str(err) or "").strip().splitlines()
    return (text[0][:300] if text else "") or type(err).__name__


class SourceMismatchError(RuntimeError):
    """A run reads another landing source than the one the collection is bound to
    (:data:`SOURCE_PROPERTY`); its one-line message names both and how to rebind."""


def bound_source(client: MilvusClient, name: str) -> str | None:
    """The landing source collection ``name`` is bound to (:data:`SOURCE_PROPERTY`), or None
    (not bound yet, or no such collection)."""
    if not client.has_collection(name):
        return None
    return (client.describe_collection(name).get("properties") or {}).get(SOURCE_PROPERTY) or None


def bind_source(client: MilvusClient, name: str, source: str, rebind: bool = False) -> str | None:
    """Bind collection ``name`` to the landing ``source`` (a resolved landing directory).

    An unbound collection (new, or written before bindings existed) is bound to ``source``.
    A collection bound to another source raises :class:`SourceMismatchError` naming both,
    unless ``rebind`` (the source moved for good: the collection is re-bound to ``source``, and
    the next ``backfill --all`` deletes the rows that ``source`` does not hold). Returns the
    source it was bound to before, when that changed, else None.

    Why a binding and not rows tagged per source: every run deletes the rows of its tenant-days
    that its landing data no longer holds; with two sources feeding one collection, each
    source's runs deleted the other's rows (30 of 60 left, issue #17 item 1).
    """
    bound = bound_source(client, name)
    if bound == source:
        return None
    if bound and not rebind:
        raise source_mismatch(name, bound, source)
    client.alter_collection_properties(name, properties={SOURCE_PROPERTY: source})
    return bound


def source_mismatch(name: str, bound: str, source: str) -> SourceMismatchError:
    """The error of a run reading landing ``source`` into collection ``name``, bound to ``bound``."""
    return SourceMismatchError(
        f"collection {name} holds the records of landing directory {bound}, not of {source}: one collection "
        f"takes one landing source (each deletes the rows the other's data lacks). Point VECTOR_ASSETS_LANDING_DIR "
        f"back at {bound}, use another store (VECTOR_ASSETS_MILVUS_URI, VECTOR_ASSETS_STORE_URL), or move the collection "
        "to the new folder with `vector-assets backfill --all --rebind-landing`"
    )


def collection_dimension(client: MilvusClient, name: str) -> int:
    """Dimension of the ``vector`` field of collection ``name``."""
    for fld in client.describe_collection(name)["fields"]:
        if fld["name"] == "vector":
            return int(fld["params"]["dim"])
    raise ValueError(f"collection {name} has no vector field")


def quote(value: str) -> str:
    """A string literal for a Milvus filter expression: in double quotes, with ``\\`` and ``"``
    escaped and every other character as it is. (JSON quoting writes ``\\u00e9`` for ``é``,
    which Milvus's expression grammar does not read: tenants ``café`` and ``日本語`` matched
    nothing.)"""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_list(values: Iterable[str]) -> str:
    """A list literal of strings for a Milvus ``in`` expression (see :func:`quote`)."""
    return "[" + ", ".join(quote(v) for v in values) + "]"


def tenant_filter(tenant: str | Sequence[str]) -> str:
    """Filter expression selecting the rows of ``tenant`` (one tenant, or a list of tenants: any
    of them). One tenant, alone or in a list, is ``tenant == …``, which Milvus prunes to the
    tenant's partition (the partition key); a list of several is ``tenant in [...]``."""
    if not isinstance(tenant, str) and len(tenant) == 1:
        tenant = tenant[0]
    return f"tenant == {quote(tenant)}" if isinstance(tenant, str) else f"tenant in {quote_list(tenant)}"


def partitions_filter(tenants: Sequence[str], days: Sequence[str]) -> str:
    """Filter expression selecting the rows of any of ``tenants`` on any of ``days``
    (:func:`tenant_filter`)."""
    return f"{tenant_filter(tenants)} and day in {quote_list(days)}"


def query_all(client: MilvusClient, name: str, expr: str, fields: list[str], batch: int = 4096) -> list[dict]:
    """Every row matching ``expr``: one query when fewer than 16,384 rows match, else paged
    with a query iterator."""
    rows = client.query(name, filter=expr, output_fields=fields, limit=QUERY_LIMIT)
    if len(rows) < QUERY_LIMIT:
        return rows
    it = client.query_iterator(name, filter=expr, output_fields=fields, batch_size=batch)
    rows: list[dict] = []
    try:
        while True:
            page = it.next()
            if not page:
                break
            rows.extend(page)
    finally:
        it.close()
    return rows


def partition_rows(client: MilvusClient, name: str, keys: Iterable[tuple[str, str]], fields: list[str]) -> dict[tuple[str, str], dict[str, dict]]:
    """Rows of each ``(tenant, day)`` in ``keys``: ``{(tenant, day): {pk: row}}`` with
    ``fields`` (``pk``, ``tenant`` and ``day`` are always read). One query per group of tenants
    (:func:`~vector_assets.store.base.partition_groups`); rows of keys not asked for are dropped."""
    keys = set(keys)
    out: dict[tuple[str, str], dict[str, dict]] = {}
    wanted = sorted({"pk", "tenant", "day", *fields})
    for tenants, days in partition_groups(keys):
        for row in query_all(client, name, partitions_filter(tenants, days), wanted):
            key = (row["tenant"], row["day"])
            if key in keys:
                out.setdefault(key, {})[row["pk"]] = row
    return out


def stored_partitions(client: MilvusClient, name: str, tenants: Iterable[str] | None = None, start: str | None = None, end: str | None = None) -> set[tuple[str, str]]:
    """Every ``(tenant, day)`` collection ``name`` holds rows of (empty when it does not
    exist), optionally only of ``tenants`` and of days in ``[start, end]`` (``YYYY-MM-DD``,
    inclusive). Reads the ``tenant`` and ``day`` fields of every (matching) row: 10-14 s per
    100,000 rows on Milvus Lite on 2 cores (``benchmarks/reconcile.py``). What reconciling the store against the landing data starts
    from, whatever the landing index remembers (issue #17 item 2)."""
    if not client.has_collection(name):
        return set()
    tenants = list(tenants or [])
    expr = f"tenant in {quote_list(tenants)}" if tenants else 'pk != ""'
    held = {(row["tenant"], row["day"]) for row in query_all(client, name, expr, ["tenant", "day"], batch=QUERY_LIMIT)}
    return {(t, d) for t, d in held if (not start or d >= start) and (not end or d <= end)}


def rows_by_pk(client: MilvusClient, name: str, pks: Iterable[str], fields: list[str], chunk: int = 1000) -> dict[str, dict]:
    """Stored rows of the given primary keys, ``{pk: row}``; absent keys are left out."""
    pks = list(pks)
    out: dict[str, dict] = {}
    for i in range(0, len(pks), chunk):
        part = pks[i : i + chunk]
        for row in client.query(name, filter=f"pk in {quote_list(part)}", output_fields=fields, limit=len(part)):
            out[row["pk"]] = row
    return out


def tenant_exists(client: MilvusClient, name: str, tenant: str, consistency_level: str | None = None) -> bool:
    """Whether collection ``name`` holds at least one row of ``tenant`` (at the collection's
    consistency level unless ``consistency_level`` is given)."""
    kwargs = {"consistency_level": consistency_level} if consistency_level else {}
    return bool(client.query(name, filter=f"tenant == {quote(tenant)}", output_fields=["pk"], limit=1, **kwargs))


def count_rows(client: MilvusClient, name: str, expr: str = "") -> int:
    """Number of rows matching ``expr`` (all rows when empty)."""
    res = client.query(name, filter=expr or 'pk != ""', output_fields=["count(*)"])
    return int(res[0]["count(*)"])


def count_records(client: MilvusClient, name: str, expr: str = "") -> int:
    """Number of records (not passages) matching ``expr``: rows of passage 0, one per record."""
    return count_rows(client, name, f"passage == 0 and ({expr})" if expr else "passage == 0")


def collection_model(client: MilvusClient, name: str) -> str | None:
    """The model id a collection belongs to (its ``vector_assets.model`` property), or None."""
    return (client.describe_collection(name).get("properties") or {}).get(MODEL_PROPERTY)


#: Collection property holding the search parameters tuned on the collection's own index
#: (JSON: ``{"search": {"ef": 64}, "recall": ..., "p95_ms": ..., "recommended_build": {...}}``;
#: :mod:`vector_assets.serving.tuning`).
SEARCH_PARAMS_PROPERTY = "vector_assets.search_params"
#: Seconds a client keeps a collection's tuned search parameters before reading them again.
TUNED_TTL_S = 60.0


def tuned(client: MilvusClient, name: str) -> dict:
    """The tuning recorded on collection ``name`` (:data:`SEARCH_PARAMS_PROPERTY`), ``{}`` when
    none. Cached on the client for :data:`TUNED_TTL_S` seconds (searches ask on every call; a
    long-running service sees a new tuning within a minute)."""
    cache = client.__dict__.setdefault("_vector_assets_tuned", {})
    hit = cache.get(name)
    if hit is None or time.monotonic() - hit[0] > TUNED_TTL_S:
        raw = (client.describe_collection(name).get("properties") or {}).get(SEARCH_PARAMS_PROPERTY)
        hit = cache[name] = (time.monotonic(), json.loads(raw) if raw else {})
    return hit[1]


def tuned_search_params(client: MilvusClient, name: str) -> dict | None:
    """The search parameters tuned for collection ``name`` (e.g. ``{"ef": 64}``), None when
    it was never tuned."""
    return tuned(client, name).get("search") or None


def set_tuned_search_params(client: MilvusClient, name: str, value: dict) -> None:
    """Record ``value`` (see :data:`SEARCH_PARAMS_PROPERTY`) on collection ``name``."""
    client.alter_collection_properties(name, properties={SEARCH_PARAMS_PROPERTY: json.dumps(value, sort_keys=True)})
    client.__dict__.setdefault("_vector_assets_tuned", {}).pop(name, None)


def alias_target(client: MilvusClient, alias: str) -> str | None:
    """The collection ``alias`` names, or None when the alias does not exist.

    Lists each collection's aliases (one call per collection: a collection per model). Not
    ``describe_alias``: pymilvus logs every missing alias as an RPC error on stderr, which
    ``vector-assets backfill`` then printed on every run. An alias a 2.3 server keeps for a
    dropped collection is not listed; :func:`point_alias` handles it.
    """
    for name in client.list_collections():
        if alias in client.list_aliases(name).get("aliases", []):
            return name
    return None


def point_alias(client: MilvusClient, alias: str, collection: str) -> None:
    """Make ``alias`` name ``collection`` (create it, or switch it atomically)."""
    if alias_target(client, alias) is not None:
        client.alter_alias(collection, alias)
        return
    try:
        client.create_alias(collection, alias)
    except MilvusException as err:
        # A 2.3 server keeps the alias of a collection dropped behind the pipeline's back in a
        # state that neither describe_alias nor list_aliases reports, yet create_alias refuses
        # ("alias already exist"); alter_alias repoints it.
        if "already exist" not in str(err):
            raise
        client.alter_alias(collection, alias)


# ---- the store interface ---------------------------------------------------------------------


#: Consistency of a search. The collection is Strong (the checks read what a run has just
#: written); a search need not wait for that: "Bounded" sees every write older than the server's
#: graceful time (5 s by default). A Strong search on the Milvus 2.3.5 standalone server waits for
#: its next time tick: p50 200 ms at 5,000 vectors against a few ms (benchmarks/pipeline.py
#: milvus --uri, README "Performance"). Milvus Lite answers both alike.
SEARCH_CONSISTENCY = "Bounded"

#: The fields a search returns of each passage.
SEARCH_FIELDS = ["pk", "record_id", "day", "kind", "preview", "passage", "text"]


def search_filter(request) -> str:
    """The Milvus filter of a :class:`~vector_assets.store.base.SearchRequest`: its tenant or
    tenants (:func:`tenant_filter`), kinds and days (each value quoted by :func:`quote`)."""
    expr = tenant_filter(request.tenant) + (f" and kind in {quote_list(request.kinds)}" if request.kinds else "")
    for op, day in zip((">=", "<="), request.days or (None, None)):
        if day is not None:
            expr += f" and day {op} {quote(day)}"
    return expr


def with_ef(params: dict, limit: int) -> dict:
    """``params`` with an HNSW ``ef`` of at least ``limit`` (HNSW finds at most ``ef`` results);
    parameters of other indexes (IVF ``nprobe``) as they are."""
    return {**params, "ef": max(params["ef"], limit)} if "ef" in params else dict(params)


def milvus_ranker(fusion: str):
    """Milvus's ranker of ``fusion``: ``rrf`` (``RRFRanker(RRF_K)``) or ``weighted:W``
    (``WeightedRanker(W, 1 - W)``); ValueError otherwise."""
    from pymilvus import RRFRanker, WeightedRanker

    if fusion == "rrf":
        return RRFRanker(RRF_K)
    return WeightedRanker(*fusion_weights(fusion))


def fusion_weights(fusion: str) -> tuple[float, float]:
    """``(dense, bm25)`` weights of ``weighted:W``; ValueError for anything else."""
    kind, _, weight = fusion.partition(":")
    try:
        w = float(weight)
    except ValueError:
        w = -1.0
    if kind != "weighted" or not 0 <= w <= 1:
        raise ValueError(f"unknown fusion {fusion!r}: rrf, or weighted:W with the dense weight W in [0, 1]")
    return w, 1 - w


class MilvusStore(VectorStore):
    """A Milvus database (Milvus Lite through its local server, a 2.3+ server, a cluster) as a
    :class:`~vector_assets.store.base.VectorStore`: the functions of this module bound to one
    ``client`` (a ``MilvusClient``) and its ``url``."""

    def __init__(self, client: MilvusClient, url: str):
        self.client = client
        self.url = str(url)

    def has_collection(self, name: str) -> bool:
        return self.client.has_collection(name)

    def create_collection(self, name: str, dim: int, model_id: str, index_type: str = "HNSW", metric_type: str = "COSINE", index_params: dict | None = None) -> None:
        create_collection(self.client, name, dim, index_type, metric_type, index_params, model_id)

    def prepare(self, name: str) -> None:
        load(self.client, name)

    def collection_dimension(self, name: str) -> int:
        return collection_dimension(self.client, name)

    def collection_model(self, name: str) -> str | None:
        return collection_model(self.client, name)

    def store_key(self, name: str) -> str | None:
        return store_key(self.url, self.client, name)

    def bound_source(self, name: str) -> str | None:
        return bound_source(self.client, name)

    def bind_source(self, name: str, source: str, rebind: bool = False) -> str | None:
        return bind_source(self.client, name, source, rebind)

    def has_bm25(self, name: str) -> bool:
        return has_bm25(self.client, name)

    def write_rows(self, name: str, rows: list[dict]) -> None:
        write_rows(self.client, name, rows)

    def delete_rows(self, name: str, tenant: str, day: str, pks: Iterable[str]) -> None:
        self.client.delete(name, filter=f"pk in {quote_list(pks)} and day == {quote(day)} and tenant == {quote(tenant)}")

    def flush(self, name: str) -> None:
        self.client.flush(name)

    def partition_rows(self, name: str, keys: Iterable[tuple[str, str]], fields: list[str]) -> dict[tuple[str, str], dict[str, dict]]:
        return partition_rows(self.client, name, keys, fields)

    def rows_by_pk(self, name: str, pks: Iterable[str], fields: list[str]) -> dict[str, dict]:
        return rows_by_pk(self.client, name, pks, fields)

    def stored_partitions(self, name: str, tenants: Iterable[str] | None = None, start: str | None = None, end: str | None = None) -> set[tuple[str, str]]:
        return stored_partitions(self.client, name, tenants, start, end)

    def count_rows(self, name: str, tenant: str | None = None, days: Sequence[str] | None = None, records: bool = False) -> int:
        parts = ([f"tenant == {quote(tenant)}"] if tenant is not None else []) + ([f"day in {quote_list(days)}"] if days is not None else [])
        expr = " and ".join(parts)
        return count_records(self.client, name, expr) if records else count_rows(self.client, name, expr)

    def tenant_exists(self, name: str, tenant: str) -> bool:
        return tenant_exists(self.client, name, tenant, SEARCH_CONSISTENCY)

    def rows_between(self, name: str, tenant: str | Sequence[str], first: str, last: str, fields: list[str]) -> list[dict]:
        return query_all(self.client, name, f"{tenant_filter(tenant)} and day >= {quote(first)} and day <= {quote(last)}", fields)

    def records_present(self, name: str, tenant: str, record_ids: Iterable[str]) -> set[str]:
        ids, present = list(record_ids), set()
        for i in range(0, len(ids), 500):
            expr = f"tenant == {quote(tenant)} and record_id in {quote_list(ids[i : i + 500])}"
            present |= {r["record_id"] for r in query_all(self.client, name, expr, ["record_id"])}
        return present

    def search(self, name: str, request) -> list[list[dict]]:
        """See :meth:`vector_assets.store.base.VectorStore.search`: one Milvus search for all
        queries (dense, bm25), one ``hybrid_search`` per query (hybrid). Dense parameters:
        ``request.params``, else those tuned on the collection, else ``ef`` :data:`DEFAULT_EF`."""
        from pymilvus import AnnSearchRequest

        expr, limit = search_filter(request), request.limit
        params = with_ef(dict(request.params or tuned_search_params(self.client, name) or {"ef": DEFAULT_EF}), limit)
        consistency = "Strong" if request.strong else SEARCH_CONSISTENCY
        common = dict(filter=expr, limit=limit, output_fields=SEARCH_FIELDS, consistency_level=consistency)
        if request.mode == "dense":
            raw = self.client.search(name, data=list(request.vectors), anns_field="vector", search_params={"params": params}, **common)
        elif request.mode == "bm25":
            raw = self.client.search(name, data=list(request.texts), anns_field="sparse", search_params={"params": {}}, **common)
        elif request.mode == "hybrid":
            ranker = milvus_ranker(request.fusion)
            raw = []
            for vector, text in zip(request.vectors, request.texts):
                sides = [
                    AnnSearchRequest(data=[vector], anns_field="vector", param={"params": params}, limit=limit, expr=expr),
                    AnnSearchRequest(data=[text], anns_field="sparse", param={"params": {}}, limit=limit, expr=expr),
                ]
                raw.append(self.client.hybrid_search(name, sides, ranker=ranker, limit=limit, output_fields=SEARCH_FIELDS, consistency_level=consistency)[0])
        else:
            raise ValueError(f"unknown search mode {request.mode!r}")
        return [[{**h["entity"], "pk": h["entity"].get("pk", h.get("id")), "score": float(h["distance"])} for h in hits] for hits in raw]

    def alias_target(self, alias: str) -> str | None:
        return alias_target(self.client, alias)

    def point_alias(self, alias: str, name: str) -> None:
        point_alias(self.client, alias, name)

    def close(self) -> None:
        self.client.close()
