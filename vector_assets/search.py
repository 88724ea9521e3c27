"""Semantic search over one tenant's vectors."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pymilvus import MilvusClient

from . import milvus_store


#: HNSW ``ef`` of a search. On eval_pr_commits (four tenants, 20,465 commits, kind filter)
#: ef 64 gave recall@10 0.755 on all queries and ef 512 0.771, against 0.801 for exact search.
DEFAULT_EF = 256


class SearchError(ValueError):
    """A search that cannot be answered (empty query, unknown tenant, missing collection)."""


@dataclass(frozen=True)
class Hit:
    """One ranked hit: the record's own ``id`` (``git:<tenant>:<sha>`` for a commit), ``score``
    (cosine similarity, higher is closer), ``day``, ``kind`` and a text ``preview``."""

    id: str
    score: float
    day: str
    kind: str
    preview: str

    def as_dict(self) -> dict:
        return asdict(self)


def search(
    client: MilvusClient,
    collection: str,
    embedder,
    tenant: str,
    queries: list[str],
    k: int = 10,
    search_params: dict | None = None,
    check_tenant: bool = True,
    kinds: list[str] | None = None,
) -> list[list[Hit]]:
    """The ``k`` nearest records of ``tenant`` for each query, best first.

    Args:
        client / collection: where the vectors are (``collection`` may be an alias).
        embedder: anything with ``encode(list[str]) -> (n, dim)`` (the same model that wrote them).
        tenant: only this tenant's rows are searched (Milvus partition key filter).
        queries: query texts.
        k: hits per query.
        kinds: only these record kinds (e.g. ``["git_commit"]`` leaves merge commits out).

    Raises :class:`SearchError` for an empty query, a missing collection or an unknown tenant.
    """
    if not queries or any(not q or not q.strip() for q in queries):
        raise SearchError("empty query")
    if not client.has_collection(collection):
        collection = milvus_store.alias_target(client, collection) or collection
    if not client.has_collection(collection):
        raise SearchError(f"collection {collection} does not exist; run `vector-assets backfill` first")
    client.load_collection(collection)
    if check_tenant and not milvus_store.tenant_exists(client, collection, tenant):
        raise SearchError(f"unknown tenant {tenant!r}: no vectors stored for it")
    vectors = embedder.encode([q.strip() for q in queries])
    results = client.search(
        collection,
        data=[v.tolist() for v in vectors],
        filter=f"tenant == {milvus_store.quote(tenant)}" + (f" and kind in {milvus_store.quote_list(kinds)}" if kinds else ""),
        limit=k,
        output_fields=["record_id", "day", "kind", "preview"],
        search_params={"params": dict(search_params or {"ef": max(DEFAULT_EF, k)})},
    )
    return [
        [Hit(h["entity"]["record_id"], round(float(h["distance"]), 6), h["entity"]["day"], h["entity"]["kind"], h["entity"]["preview"]) for h in hits]
        for hits in results
    ]
