"""Semantic search over one tenant's vectors."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from pymilvus import MilvusClient

from ..store import base, milvus_store
from ..store.base import SearchRequest, VectorStore


#: HNSW ``ef`` of a search (defined in :mod:`vector_assets.store.milvus_store`, the layer below).
DEFAULT_EF = milvus_store.DEFAULT_EF


#: Consistency of a search (:data:`vector_assets.store.milvus_store.SEARCH_CONSISTENCY`).
SEARCH_CONSISTENCY = milvus_store.SEARCH_CONSISTENCY


#: Search modes: ``dense`` (the model's vectors), ``bm25`` (Milvus's BM25 over the passage
#: text; Postgres's ``ts_rank_cd``), ``hybrid`` (both, fused by reciprocal rank, :data:`RRF_K`).
MODES = base.MODES
#: The mode used when none is asked for, on a collection with BM25 (else ``dense``). Chosen by
#: measurement through the product (README "Search quality"; benchmarks/search_quality.py).
DEFAULT_MODE = "hybrid"
#: RRF's constant (Cormack et al. 2009; Milvus's ``RRFRanker`` default).
RRF_K = base.RRF_K
#: Passages fetched per wanted record before grouping by record (:func:`search`); doubled until
#: ``k`` distinct records are found or the tenant has no more passages.
OVERFETCH = 4
#: Milvus's largest ``limit`` (topk) of one search.
MAX_LIMIT = 16384


DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class SearchError(ValueError):
    """A search that cannot be answered (empty query, unknown tenant, missing collection, a mode
    the collection does not support)."""


@dataclass(frozen=True)
class Hit:
    """One ranked hit, a record: its own ``id`` (``git:<tenant>:<sha>`` for a commit), ``score``
    (dense: cosine similarity; bm25: BM25 score; hybrid: RRF score; higher is closer), ``day``,
    ``kind``, a text ``preview`` of the passage that matched, ``passage`` (its index in the
    record, 0 = the record's start) and ``passage_text`` (its text)."""

    id: str
    score: float
    day: str
    kind: str
    preview: str
    passage: int = 0
    passage_text: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def as_store(where: VectorStore | MilvusClient) -> VectorStore:
    """``where`` as a store: a :class:`~vector_assets.store.base.VectorStore` as it is, a
    ``MilvusClient`` wrapped in :class:`~vector_assets.store.milvus_store.MilvusStore`."""
    return where if isinstance(where, VectorStore) else milvus_store.MilvusStore(where, "")


def default_mode(where: VectorStore | MilvusClient, collection: str) -> str:
    """The mode a search without one uses: :data:`DEFAULT_MODE` where ``collection`` has BM25,
    else ``dense`` (``has_bm25`` is cached per Milvus client)."""
    return DEFAULT_MODE if as_store(where).has_bm25(collection) else "dense"


def check_fusion(fusion: str) -> None:
    """SearchError unless ``fusion`` is ``rrf`` or ``weighted:W`` with W in [0, 1]."""
    if fusion != "rrf":
        try:
            milvus_store.fusion_weights(fusion)
        except ValueError as err:
            raise SearchError(str(err)) from None


def search_target(where: VectorStore | MilvusClient, alias: str):
    """``(collection, embedder)`` a search uses: the collection ``alias`` names, with the
    provider of the model that wrote it (:func:`vector_assets.resources.embedding_resource`),
    else the configured provider's collection (which may not exist yet)."""
    from ..resources import embedding_resource

    store = as_store(where)
    collection = store.alias_target(alias)
    model_id = collection and store.collection_model(collection)
    embedder = embedding_resource(model_id or None)
    return collection or milvus_store.collection_name(embedder.model_id), embedder


def _best_per_record(hits: list[dict], k: int) -> list[Hit]:
    """The first ``k`` distinct records of ``hits`` (passages of
    :meth:`~vector_assets.store.base.VectorStore.search`, best first), each with its best passage."""
    out: dict[str, Hit] = {}
    for e in hits:
        if e["record_id"] in out:
            continue
        out[e["record_id"]] = Hit(e["record_id"], round(float(e["score"]), 6), e["day"], e["kind"], e["preview"] or "", int(e.get("passage") or 0), e.get("text") or "")
        if len(out) == k:
            break
    return list(out.values())


def search(
    client: VectorStore | MilvusClient,
    collection: str,
    embedder,
    tenant: str,
    queries: list[str],
    k: int = 10,
    search_params: dict | None = None,
    check_tenant: bool = True,
    kinds: list[str] | None = None,
    mode: str | None = None,
    days: tuple[str | None, str | None] | None = None,
    ensure_loaded: bool = True,
    fusion: str = "rrf",
) -> list[list[Hit]]:
    """The ``k`` best records of ``tenant`` for each query, best first.

    A record with a long text is stored as several passages (:mod:`vector_assets.ingest.passages`);
    hits are records, each scored by its best passage: passages are fetched ``OVERFETCH`` times
    ``k`` at a time (more until ``k`` distinct records are found or the tenant has no more), so
    the answer stays exact at k = 100 whatever the passages per record. Grouping is done here
    rather than with Milvus's ``group_by_field``, which hybrid search and the 2.3 server lack.

    Args:
        client / collection: where the vectors are: a store
            (:class:`~vector_assets.store.base.VectorStore`) or a ``MilvusClient``, and the
            collection (may be an alias).
        embedder: anything with ``encode(list[str]) -> (n, dim)`` (the same model that wrote them).
        tenant: only this tenant's rows are searched (Milvus partition key filter).
        queries: query texts.
        k: records per query.
        kinds: only these record kinds (e.g. ``["git_commit"]`` leaves merge commits out).
        mode: ``dense``, ``bm25`` or ``hybrid`` (:data:`MODES`); None: :data:`DEFAULT_MODE` where
            the collection has BM25, else ``dense``.
        days: ``(first, last)`` ``YYYY-MM-DD`` days, inclusive, either None for open: only records
            of those days.
        fusion: how hybrid fuses its two rankings: ``rrf`` (reciprocal rank, :data:`RRF_K`; the
            default, chosen by measurement, README "Search quality") or ``weighted:W`` (Milvus's
            ``WeightedRanker`` on normalised scores, dense weight W in [0, 1], BM25 1 - W).
        ensure_loaded: resolve ``collection`` as an alias and load it first (two to three Milvus
            calls); False for a caller that passes a loaded collection's own name (the service).

    Raises :class:`SearchError` for an empty query, a missing collection, an unknown tenant, an
    unknown mode, or ``bm25``/``hybrid`` on a collection without BM25 (one line naming the
    server's version).
    """
    if not queries or any(not q or not q.strip() for q in queries):
        raise SearchError("empty query")
    if mode is not None and mode not in MODES:
        raise SearchError(f"unknown search mode {mode!r}; one of {', '.join(MODES)}")
    store = as_store(client)
    if ensure_loaded:
        if not store.has_collection(collection):
            collection = store.alias_target(collection) or collection
        if not store.has_collection(collection):
            raise SearchError(f"collection {collection} does not exist; run `vector-assets backfill` first")
        store.prepare(collection)
    bm25 = store.has_bm25(collection)
    mode = mode or (DEFAULT_MODE if bm25 else "dense")
    if mode != "dense" and not bm25:
        version = milvus_store.server_version(store.client) if isinstance(store, milvus_store.MilvusStore) else None
        where = f"Milvus server {'.'.join(map(str, version))}" if version else "this store"
        raise SearchError(f"--mode {mode} needs BM25, which {where} does not have (Milvus 2.5 or later, or Milvus Lite); collection {collection} is dense only: use --mode dense")
    check_fusion(fusion)
    texts = [q.strip() for q in queries]
    for day in days or (None, None):
        if day is not None and not DAY.match(day):
            raise SearchError(f"bad day {day!r}: YYYY-MM-DD")
    # The caller's parameters, else those tuned on this collection's index
    # (:mod:`vector_assets.serving.tuning`), else DEFAULT_EF (at least k): the store decides.
    vectors = [v.tolist() for v in embedder.encode(texts)] if mode != "bm25" else None

    def fetch(ids: list[int], limit: int) -> list[list[dict]]:
        request = SearchRequest(
            tenant=tenant, mode=mode, texts=[texts[i] for i in ids], vectors=None if vectors is None else [vectors[i] for i in ids],
            limit=limit, kinds=kinds, days=days, params=dict(search_params) if search_params else None, fusion=fusion,
        )
        return store.search(collection, request)

    results: list[list[Hit]] = [[] for _ in texts]
    pending, limit = list(range(len(texts))), min(MAX_LIMIT, k * OVERFETCH)
    while pending:
        again = []
        for i, hits in zip(pending, fetch(pending, limit)):
            results[i] = _best_per_record(hits, k)
            if len(results[i]) < k and len(hits) >= limit and limit < MAX_LIMIT:
                again.append(i)  # passages of fewer than k records: fetch deeper
        pending, limit = again, min(MAX_LIMIT, limit * 4)
    # Only an empty answer costs the extra query that tells an unknown tenant from no match.
    if check_tenant and not any(results) and not store.tenant_exists(collection, tenant):
        raise SearchError(f"unknown tenant {tenant!r}: no vectors stored for it")
    return results
