"""The search service: ``vector-assets serve``, an HTTP API on FastAPI + uvicorn.

Routes (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

- ``POST /v1/search``: records of one tenant for a query or a batch of queries (hits as
  ``vector-assets search --json``).
- ``GET /v1/tenants``: the tenants the caller's key may read, with their rows.
- ``POST /v1/context``: RAG context for a question: the tenant's best passages within a token
  budget, numbered for citation, and the citations as data (seed ``004_*``, "LLM integration").
- ``POST /v1/answer``: the context sent to an OpenAI-compatible chat endpoint
  (``VECTOR_ASSETS_LLM_BASE_URL``, ``VECTOR_ASSETS_LLM_MODEL``, key ``VECTOR_ASSETS_LLM_API_KEY``
  through ``dg.EnvVar``); 501 when none is configured.
- ``POST /v1/embeddings``: the OpenAI embeddings API (request and response shapes), served by
  the collection's model.
- ``GET /metrics``: Prometheus text (needs a key granting all tenants: it names them).
- ``GET /healthz`` (the process answers), ``GET /readyz`` (Milvus reachable, model loaded,
  collection present; 503 naming what is not).

Every ``/v1`` route needs ``Authorization: Bearer <key>`` (:mod:`vector_assets.serving.api_keys`): none
or an unknown/revoked key: 401; a tenant the key does not grant: 403 with the same body whether
that tenant exists or not. Inputs are bounded (:data:`LIMITS`); beyond a bound: 422 naming it.

The model is loaded once per process; one Milvus client is shared; requests run concurrently
(FastAPI's thread pool) and the query texts of concurrent requests are encoded together in one
forward pass (:class:`BatchingEncoder`); a query text seen before is answered from an LRU cache of
query vectors (:data:`QUERY_CACHE_SIZE`), counted in ``/metrics``.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Literal

import grpc
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
import psycopg2
from pymilvus.exceptions import MilvusException
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from . import api_keys
from ..store import milvus_store
from .. import settings
from ..ingest.records import KINDS, SURROGATE
from .search import MODES, SearchError, default_mode, search, search_target

#: Bounds on every input (answered with 422 beyond them).
LIMITS = {
    "k": 100,  # records per query (the bound)
    "query_chars": 2000,  # characters of one query (a query is a few lines, not a document)
    "batch": 32,  # queries per /v1/search request
    "token_budget": 8192,  # tokens of a /v1/context answer (a large chat model's share of its window)
    "embedding_inputs": 256,  # texts per /v1/embeddings request
    "embedding_chars": 32768,  # characters of one embeddings input (the model reads its first 256 tokens)
}
Kind = Literal[tuple(sorted(set(KINDS.values()) | {"git_merge_commit"}))]  # type: ignore[valid-type]
Mode = Literal[MODES]  # type: ignore[valid-type]
def _valid_unicode(value: str) -> str:
    """Refuse a text holding an unpaired UTF-16 surrogate (JSON ``"\\ud800"``): it is not
    Unicode text, and encoding it for the model or Milvus failed with a 500 (issue #17 item 9)."""
    if SURROGATE.search(value):
        raise ValueError("holds an unpaired UTF-16 surrogate (not valid Unicode text)")
    return value


Query = Annotated[str, Field(min_length=1, max_length=LIMITS["query_chars"]), AfterValidator(_valid_unicode)]
Tenant = Annotated[str, Field(min_length=1, max_length=milvus_store.MAX_TENANT), AfterValidator(_valid_unicode)]
EmbeddingInput = Annotated[str, Field(max_length=LIMITS["embedding_chars"]), AfterValidator(_valid_unicode)]
#: Seconds a resolved collection (the search alias' target) and per-tenant row counts are reused.
REFRESH_S = float(os.environ.get("VECTOR_ASSETS_SERVICE_REFRESH_S") or 30.0)


#: Query texts whose vectors the service keeps (least recently used first out; seed 004's query
#: cache): 10,000 vectors of 384 float32 are 15 MB. ``VECTOR_ASSETS_QUERY_CACHE_SIZE=0`` turns it off.
QUERY_CACHE_SIZE = int(os.environ.get("VECTOR_ASSETS_QUERY_CACHE_SIZE") or 10_000)


class BatchingEncoder:
    """Encodes the texts of concurrent callers together: one thread runs the model; each
    :meth:`encode` call queues its texts and waits; the thread takes everything queued (up to
    ``max_batch`` texts) and encodes it in one forward pass. Nothing waits on purpose: texts
    batch up while the previous pass runs, so an idle service answers one query at once and a
    busy one amortises the model over many.

    A text encoded before is answered from an LRU cache of ``cache_size`` texts (``cachetools``;
    0: none) without reaching the model; ``on_cache(hits, misses)`` counts each call's texts.
    The cache belongs to the encoder, so to its model: a cut-over to another model's collection
    makes a new encoder and an empty cache.

    ``model`` is anything with ``encode(list[str]) -> (n, dim)`` (an
    :class:`~vector_assets.resources.EmbeddingModelResource`). Errors of the model are raised in
    every caller of the failed batch.
    """

    def __init__(self, model, max_batch: int = 64, observe=None, cache_size: int = QUERY_CACHE_SIZE, on_cache=None):
        import cachetools

        self.model, self.max_batch, self.observe, self.on_cache = model, max_batch, observe, on_cache
        self._cache = cachetools.LRUCache(maxsize=cache_size) if cache_size > 0 else None
        self._cache_lock = threading.Lock()
        self._queue: queue.Queue[tuple[list[str], Future]] = queue.Queue()
        threading.Thread(target=self._run, name="query-encoder", daemon=True).start()

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised vectors of ``texts``, ``(len(texts), dim)`` float32 (a new array: the
        cache's vectors are not shared with the caller)."""
        texts = list(texts)
        found: dict[int, np.ndarray] = {}
        if self._cache is not None:
            with self._cache_lock:
                for i, text in enumerate(texts):
                    vector = self._cache.get(text)
                    if vector is not None:
                        found[i] = vector
        missing = [text for i, text in enumerate(texts) if i not in found]
        if self.on_cache is not None and self._cache is not None:
            self.on_cache(len(found), len(missing))
        if not missing:
            return np.stack([found[i] for i in range(len(texts))]) if texts else self._encode_queued(texts)
        encoded = self._encode_queued(missing)
        if self._cache is not None:
            with self._cache_lock:
                for text, vector in zip(missing, encoded):
                    self._cache[text] = vector.copy()
        if not found:
            return encoded
        rows = iter(encoded)
        return np.stack([found[i] if i in found else next(rows) for i in range(len(texts))])

    def _encode_queued(self, texts: list[str]) -> np.ndarray:
        done: Future = Future()
        self._queue.put((texts, done))
        return done.result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            size = len(batch[0][0])
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
                size += len(item[0])
            started = time.perf_counter()
            try:
                vectors = self.model.encode([t for texts, _ in batch for t in texts])
            except Exception as err:  # noqa: BLE001 - handed to every waiting caller
                for _, done in batch:
                    done.set_exception(err)
                continue
            if self.observe:
                texts = [t for texts, _ in batch for t in texts]
                inputs = getattr(self.model, "model_inputs", None)
                self.observe(time.perf_counter() - started, size, sum(len(ids) for ids in inputs(texts)) if inputs else 0)
            start = 0
            for texts, done in batch:
                done.set_result(vectors[start : start + len(texts)])
                start += len(texts)


# ---------------------------------------------------------------------------- request shapes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Filters(_Strict):
    tenant: Tenant
    k: int = Field(10, ge=1, le=LIMITS["k"], description="records per query")
    kinds: list[Kind] | None = Field(None, max_length=8, description="only these record kinds")
    day_from: dt.date | None = Field(None, description="first day (UTC), inclusive")
    day_to: dt.date | None = Field(None, description="last day (UTC), inclusive")
    mode: Mode | None = Field(None, description="dense, bm25 or hybrid; default hybrid where the collection has BM25, else dense")

    def days(self) -> tuple[str | None, str | None]:
        return (self.day_from.isoformat() if self.day_from else None, self.day_to.isoformat() if self.day_to else None)


def _not_blank(value: str | None, what: str) -> None:
    if value is not None and not value.strip():
        raise ValueError(f"{what} is blank")


class SearchRequest(_Filters):
    """``query`` (one) or ``queries`` (a batch of at most 32), not both."""

    query: Query | None = None
    queries: list[Query] | None = Field(None, min_length=1, max_length=LIMITS["batch"])

    @model_validator(mode="after")
    def _one_of(self):
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of query and queries")
        _not_blank(self.query, "query")
        for q in self.queries or []:
            _not_blank(q, "a query of queries")
        return self


class ContextRequest(_Filters):
    """A question and the token budget of the context assembled for it."""

    question: Query
    token_budget: int = Field(1500, ge=32, le=LIMITS["token_budget"], description="tokens of the context (the model's tokenizer)")
    k: int = Field(20, ge=1, le=LIMITS["k"], description="records considered, best first")

    @model_validator(mode="after")
    def _question(self):
        _not_blank(self.question, "question")
        return self


class EmbeddingsRequest(_Strict):
    """The OpenAI embeddings request (``input`` as text or texts; token arrays are refused)."""

    model_config = ConfigDict(extra="ignore")
    input: EmbeddingInput | list[EmbeddingInput] = Field(..., description="a text or at most 256 texts")
    model: str = Field(..., min_length=1, max_length=256)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=65536)
    user: str | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _inputs(self):
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts or len(texts) > LIMITS["embedding_inputs"]:
            raise ValueError(f"input must hold 1 to {LIMITS['embedding_inputs']} texts")
        for text in texts:
            if not text.strip():
                raise ValueError("an input text is blank")
        return self


# ---------------------------------------------------------------------------- service state


@dataclass
class ServiceConfig:
    """Where the service reads from: Milvus ``uri``/``token`` (default ``VECTOR_ASSETS_MILVUS_URI``
    / ``VECTOR_ASSETS_MILVUS_TOKEN``), or PostgreSQL + pgvector when ``store_url`` (default
    ``VECTOR_ASSETS_STORE_URL``) names one, the key file (:func:`vector_assets.serving.api_keys.keys_path`),
    and whether the Dagster instance (``$DAGSTER_HOME``) is read for the tenants' last
    materialisation times in ``/metrics``."""

    uri: str = field(default_factory=settings.milvus_uri)
    token: str = field(default_factory=lambda: os.environ.get("VECTOR_ASSETS_MILVUS_TOKEN", ""))
    store_url: str = field(default_factory=settings.store_url)
    keys: api_keys.KeyStore = field(default_factory=api_keys.KeyStore)
    read_dagster: bool = True


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self, state: "ServiceState"):
        self.registry = CollectorRegistry()
        self.requests = Counter("vector_assets_http_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("vector_assets_http_request_duration_seconds", "HTTP request latency by route", ["route", "method"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.encode = Histogram("vector_assets_encode_seconds", "seconds of one forward pass of the model over a batch of query texts", registry=self.registry,
                                buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.encode_texts = Counter("vector_assets_encoded_texts", "query texts encoded", registry=self.registry)
        self.query_tokens = Counter("vector_assets_query_tokens", "tokens of the query texts encoded (cache misses; special tokens included, at most the model's window each)", registry=self.registry)
        self.query_cost = Counter("vector_assets_query_embedding_cost_usd", "what encoding the query texts cost at VECTOR_ASSETS_PRICE_PER_MTOK (USD)", registry=self.registry)
        self.cache = Counter("vector_assets_query_cache", "query texts looked up in the query-vector cache, by result (hit: not encoded)", ["result"], registry=self.registry)
        self.milvus = Histogram("vector_assets_milvus_seconds", "seconds in Milvus per search request", ["mode"], registry=self.registry,
                                buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        state_ref = state

        class _Collector:
            def collect(self):
                rows = GaugeMetricFamily("vector_assets_collection_rows", "rows (passages) in the collection searched", labels=["collection"])
                try:
                    collection = state_ref.collection()
                    rows.add_metric([collection], state_ref.client.count_rows(collection))
                except Exception:  # noqa: BLE001 - a scrape must not fail because Milvus is down
                    pass
                yield rows
                last = GaugeMetricFamily("vector_assets_tenant_last_materialization_timestamp_seconds", "end time of the latest successful run that materialised the tenant's vectors (Unix seconds)", labels=["tenant"])
                for tenant, stamp in sorted(state_ref.last_materialisations().items()):
                    last.add_metric([tenant], stamp)
                yield last
                usage = state_ref.embedding_usage()
                price = settings.price_per_million_tokens()
                families = (
                    CounterMetricFamily("vector_assets_pipeline_embedded_passages", "passages the pipeline embedded, per tenant and model (the state database; every write counts)", labels=["tenant", "model"]),
                    CounterMetricFamily("vector_assets_pipeline_embedded_tokens", "tokens the model read for the passages the pipeline embedded, per tenant and model (special tokens included)", labels=["tenant", "model"]),
                    CounterMetricFamily("vector_assets_pipeline_embedding_cost_usd", "what the pipeline's embedding cost at VECTOR_ASSETS_PRICE_PER_MTOK (USD), per tenant and model", labels=["tenant", "model"]),
                )
                for (tenant, model), (passages, tokens) in sorted(usage.items()):
                    families[0].add_metric([tenant, model], passages)
                    families[1].add_metric([tenant, model], tokens)
                    families[2].add_metric([tenant, model], tokens * price / 1e6)
                yield from families

        self.registry.register(_Collector())

    def observe_encode(self, seconds: float, texts: int, tokens: int = 0) -> None:
        self.encode.observe(seconds)
        self.encode_texts.inc(texts)
        self.query_tokens.inc(tokens)
        self.query_cost.inc(settings.embedding_cost_usd(tokens))

    def observe_cache(self, hits: int, misses: int) -> None:
        self.cache.labels("hit").inc(hits)
        self.cache.labels("miss").inc(misses)


class StoreUnavailable(RuntimeError):
    """The store cannot be reached now; the message says why and when the service tries again."""


@dataclass(frozen=True)
class Serving:
    """What one search is answered with, swapped as a whole when the search alias moves to
    another model's collection: the ``collection``, its ``model`` (an embedding resource), the
    ``encoder`` batching that model's queries and its ``tokenizer``."""

    collection: str
    model: object
    encoder: BatchingEncoder
    tokenizer: object

    @property
    def model_id(self) -> str:
        return self.model.model_id


#: Seconds between reconnection attempts while Milvus is away: doubling from the first to the last.
RECONNECT_BACKOFF_S = (1.0, 30.0)


class ServiceState:
    """What the routes share: the Milvus client, what is served (:class:`Serving`: the
    collection the search alias names, re-read every :data:`REFRESH_S` seconds, with its model),
    the key store and the metrics.

    Heals without a restart (issue #17 items 7-8): a Milvus failure drops the client, requests
    answer 503 with the reason while Milvus is away, and the client reconnects (a restarted
    Milvus Lite server on a new port included) at most once per backoff interval
    (:data:`RECONNECT_BACKOFF_S`). When the alias moves to a collection of another model, that
    model is loaded in the background while the old collection and model keep answering; the
    switch is one assignment, so no request fails during a cut-over."""

    def __init__(self, config: ServiceConfig):
        from ..resources import MilvusResource, PgvectorResource
        from ..store.base import is_postgres_url

        self.config = config
        if is_postgres_url(config.store_url):
            self.resource = PgvectorResource(url=config.store_url)
        else:
            self.resource = MilvusResource(uri=config.uri, token=config.token)
        self.where = f"{'PostgreSQL' if is_postgres_url(config.store_url) else 'Milvus'} at {self.resource.uri}"
        self._client = self.resource.get_store(create=False)
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}
        self._last: tuple[float, dict[str, float]] | None = None
        self._usage: tuple[float, dict[tuple[str, str], tuple[int, int]]] | None = None
        self._retry_at = 0.0
        self._backoff = RECONNECT_BACKOFF_S[0]
        self._down_reason = ""
        self._loading: str | None = None  # model id being loaded for a cut-over
        self.metrics = Metrics(self)
        collection, model = self._lookup()
        self.serving = self._prepare(collection, model)
        self._resolved_at = time.monotonic()

    # ---- Milvus, reconnecting ---------------------------------------------------------------

    @property
    def client(self):
        """The store (:class:`~vector_assets.store.base.VectorStore`); reconnects when the last
        connection failed and the backoff has passed, else raises :class:`StoreUnavailable`."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is not None:
                return self._client
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise StoreUnavailable(f"{self.where} is unavailable ({self._down_reason}); next reconnection attempt in {wait:.0f} s")
            try:
                self.resource.reset_client()
                client = self.resource.get_store(create=False)
                serving = getattr(self, "serving", None)
                # A restarted server holds every collection released: load the one served.
                if serving is not None and client.has_collection(serving.collection):
                    client.prepare(serving.collection)
                else:
                    client.alias_target(self.resource.search_alias)  # a round trip: reachable
            except Exception as err:  # noqa: BLE001 - any failure to reach the store
                self._failed(err)
                raise StoreUnavailable(f"{self.where} is unavailable ({self._down_reason}); next reconnection attempt in {self._backoff / 2:.0f} s") from None
            self._client, self._backoff, self._down_reason = client, RECONNECT_BACKOFF_S[0], ""
            self._resolved_at = 0.0  # re-read the alias on the new connection
            return client

    def _failed(self, err: BaseException) -> None:
        self._client = None
        self._down_reason = milvus_store.error_line(err)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RECONNECT_BACKOFF_S[1])

    def milvus_failed(self, err: BaseException) -> str:
        """Drop the client after a Milvus error (the next request after the backoff
        reconnects); returns the one-line reason."""
        with self._lock:
            if self._client is not None:
                self._failed(err)
            try:
                self.resource.reset_client()
            except Exception:  # noqa: BLE001 - closing a dead client
                pass
            return self._down_reason or milvus_store.error_line(err)

    # ---- what is served ---------------------------------------------------------------------

    def _lookup(self):
        collection, embedder = search_target(self.client, self.resource.search_alias)
        return collection, embedder

    def _prepare(self, collection: str, model) -> Serving:
        """Load ``model`` and ``collection``: a :class:`Serving` ready to answer."""
        model.get_model()  # loaded once per model
        if self.client.has_collection(collection):
            self.client.prepare(collection)
        return Serving(collection, model, BatchingEncoder(model, observe=self.metrics.observe_encode, on_cache=self.metrics.observe_cache), model.tokenizer_and_window()[0])

    def _cut_over(self, collection: str, model) -> None:
        try:
            ready = self._prepare(collection, model)
            self.serving = ready  # one assignment: every later request uses the new pair
        except Exception as err:  # noqa: BLE001 - the old collection keeps serving; tried again later
            import logging

            logging.getLogger("vector_assets.serving.service").warning("cut-over to %s (%s) failed: %s", collection, model.model_id, milvus_store.error_line(err))
        finally:
            self._loading = None

    def current(self) -> Serving:
        """What to answer with now. Every :data:`REFRESH_S` seconds the alias is read again:
        a new collection of the same model is switched to at once; one of another model is
        prepared in a background thread while this one keeps answering."""
        serving = self.serving
        if time.monotonic() - self._resolved_at <= REFRESH_S:
            return serving
        with self._lock:
            if time.monotonic() - self._resolved_at <= REFRESH_S:
                return self.serving
            self._resolved_at = time.monotonic()
        collection, model = self._lookup()
        if collection == serving.collection and model.model_id == serving.model_id:
            return serving
        if model.model_id == serving.model_id:
            if self.client.has_collection(collection):
                self.client.prepare(collection)
            self.serving = Serving(collection, serving.model, serving.encoder, serving.tokenizer)
            return self.serving
        with self._lock:
            if self._loading is None:
                self._loading = model.model_id
                threading.Thread(target=self._cut_over, args=(collection, model), name="model-cut-over", daemon=True).start()
        return serving

    def collection(self) -> str:
        """The collection searched (the search alias' target, or the old one while a new
        model loads)."""
        return self.current().collection

    @property
    def model(self):
        return self.serving.model

    @property
    def model_id(self) -> str:
        return self.serving.model_id

    @property
    def encoder(self) -> BatchingEncoder:
        return self.serving.encoder

    @property
    def tokenizer(self):
        return self.serving.tokenizer

    def tenant_rows(self, tenant: str) -> int:
        """Rows (passages) of ``tenant`` in the collection (cached :data:`REFRESH_S` seconds)."""
        cached = self._counts.get(tenant)
        if cached and time.monotonic() - cached[0] < REFRESH_S:
            return cached[1]
        rows = self.client.count_rows(self.collection(), tenant)
        self._counts[tenant] = (time.monotonic(), rows)
        return rows

    def registered_tenants(self) -> list[str]:
        """Tenants registered in the Dagster instance (``$DAGSTER_HOME``), sorted; empty when
        the service does not read Dagster."""
        if not self.config.read_dagster:
            return []
        from ..partitions import TENANTS

        return sorted(settings.dagster_instance().get_dynamic_partitions(TENANTS))

    def embedding_usage(self) -> dict[tuple[str, str], tuple[int, int]]:
        """``{(tenant, model): (passages, tokens)}`` the pipeline has embedded, from the state
        database (:func:`vector_assets.state.read_embedding_usage`; cached 30 s). Empty when the
        state database does not exist (it is not created for a scrape) or cannot be read."""
        if self._usage and time.monotonic() - self._usage[0] < 30:
            return self._usage[1]
        from .. import state

        out: dict[tuple[str, str], tuple[int, int]] = {}
        url = state.state_url()
        path = state.sqlite_path(url)
        if path is None or path.exists():
            try:
                out = state.read_embedding_usage(url)
            except Exception:  # noqa: BLE001 - a scrape must not fail because the state database is away
                out = {}
        self._usage = (time.monotonic(), out)
        return out

    def last_materialisations(self) -> dict[str, float]:
        """Per tenant, the end time (Unix seconds) of its latest successful run that
        materialised its vectors (a run over several tenants counts for each), from the Dagster
        instance's 1,000 latest successful runs (cached 60 s)."""
        if not self.config.read_dagster:
            return {}
        if self._last and time.monotonic() - self._last[0] < 60:
            return self._last[1]
        import dagster as dg

        from ..partitions import TENANTS, run_tenants

        out: dict[str, float] = {}
        try:
            instance = settings.dagster_instance()
            records = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1000)
            order = instance.get_dynamic_partitions(TENANTS)
        except Exception:  # noqa: BLE001 - no instance yet: nothing to report
            records, order = [], []
        for record in records:
            if not record.end_time:
                continue
            # A run may cover several tenants (the rectangle of its range: partitions.plan_tenant_runs).
            for tenant in run_tenants(record.dagster_run.tags, order):
                out[tenant] = max(out.get(tenant, 0.0), float(record.end_time))
        self._last = (time.monotonic(), out)
        return out

    def search(self, tenant: str, queries: list[str], request: _Filters) -> tuple[list, str]:
        """``search`` with the shared encoder of what is served now (one :class:`Serving`
        for the whole request); Milvus seconds observed per mode."""
        serving = self.current()
        collection = serving.collection
        timed = _TimedEncoder(serving.encoder)
        started = time.perf_counter()
        hits = search(self.client, collection, timed, tenant, queries, k=request.k, kinds=request.kinds, mode=request.mode, days=request.days(), ensure_loaded=False)
        mode = request.mode or default_mode(self.client, collection)
        self.metrics.milvus.labels(mode).observe(time.perf_counter() - started - timed.seconds)
        return hits, mode


class _TimedEncoder:
    def __init__(self, encoder):
        self.encoder, self.seconds = encoder, 0.0

    def encode(self, texts):
        started = time.perf_counter()
        try:
            return self.encoder.encode(texts)
        finally:
            self.seconds += time.perf_counter() - started


# ---------------------------------------------------------------------------- the app

_bearer = HTTPBearer(auto_error=False, description="an API key from `vector-assets keys add`")
UNAUTHORISED = {401: {"description": "no key, or an unknown or revoked key"}}
FORBIDDEN = {403: {"description": "the key does not grant this tenant"}, 400: {"description": "a search the collection cannot answer (e.g. bm25 on a dense-only collection)"}}
NOT_GRANTED = "this key does not grant that tenant"


def mount_offline_docs(app: FastAPI) -> None:
    """Serve the interactive API docs at ``/docs`` without internet: Swagger UI's files come from
    the ``swagger-ui-bundle`` package (PyPI), under ``/docs/static``, instead of FastAPI's
    default CDN (which left ``/docs`` blank offline)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - docs", swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css", swagger_favicon_url="/docs/static/favicon-32x32.png",
        )


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI application (connects to Milvus and loads the model when it starts).

    Raises FileNotFoundError at start when the configured Milvus Lite database does not exist.
    """
    config = config or ServiceConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = ServiceState(config)
        yield

    app = FastAPI(title="vector_assets search service", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Semantic and hybrid search over a tenant's records (issues, pull requests, commits) in Milvus.")
    mount_offline_docs(app)

    def state(request: Request) -> ServiceState:
        return request.app.state.service

    logged: set[str] = set()

    def log_once(message: str) -> None:
        if message not in logged:
            logged.add(message)
            logging.getLogger("vector_assets.serving.service").error(message)

    # Every failure a caller can cause or meet is a 4xx or 503 with a one-line reason, logged
    # once (issue #17 item 9), never a 500 whose body says nothing.
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # The body without the offending input: a float out of range (k=1e400 parses as inf)
        # or a lone surrogate cannot be written as JSON, and rendering them failed with a 500.
        detail = [
            {"loc": [str(part).encode("utf-8", "backslashreplace").decode() for part in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
            for err in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(api_keys.ApiKeyError)
    async def keys_unreadable(request: Request, exc: api_keys.ApiKeyError):
        message = f"API keys unavailable: {exc} (fix or restore the key file; `vector-assets keys list` checks it)"
        log_once(message)
        return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(StoreUnavailable)
    async def store_away(request: Request, exc: StoreUnavailable):
        log_once(str(exc).split("; next reconnection")[0])
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    async def store_failed(request: Request, exc: Exception):
        reason = request.app.state.service.milvus_failed(exc)
        message = f"{request.app.state.service.where} failed: {reason}; reconnecting"
        log_once(message)
        return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": "5"})

    for error_type in (MilvusException, grpc.RpcError, ConnectionError, psycopg2.OperationalError, psycopg2.InterfaceError):
        app.add_exception_handler(error_type, store_failed)

    @app.exception_handler(UnicodeError)
    async def not_unicode(request: Request, exc: UnicodeError):
        return JSONResponse({"detail": f"a text of the request is not valid Unicode ({exc.reason})"}, status_code=400)

    def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> api_keys.ApiKey:
        entry = config.keys.verify(credentials.credentials) if credentials else None
        if entry is None:
            raise HTTPException(401, "missing, unknown or revoked API key: send Authorization: Bearer <key> (vector-assets keys add)", headers={"WWW-Authenticate": "Bearer"})
        return entry

    def granted(key: api_keys.ApiKey, tenant: str) -> None:
        if not key.grants(tenant):
            raise HTTPException(403, NOT_GRANTED)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        service = getattr(request.app.state, "service", None)
        if service is not None:
            service.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
            service.metrics.latency.labels(path, request.method).observe(time.perf_counter() - started)
        return response

    @app.post("/v1/search", responses={**UNAUTHORISED, **FORBIDDEN, 404: {"description": "no vectors for the tenant"}})
    def search_route(body: SearchRequest, key: api_keys.ApiKey = Depends(caller), service: ServiceState = Depends(state)) -> dict:
        """The ``k`` best records of ``tenant`` for ``query`` (or each of ``queries``)."""
        granted(key, body.tenant)
        queries = [body.query] if body.query is not None else body.queries
        hits, mode = run_search(service, body.tenant, queries, body)
        if body.query is not None:
            return {"query": body.query, "tenant": body.tenant, "mode": mode, "hits": [h.as_dict() for h in hits[0]]}
        return {"tenant": body.tenant, "mode": mode, "results": [{"query": q, "hits": [h.as_dict() for h in found]} for q, found in zip(queries, hits)]}

    @app.get("/v1/tenants", responses=UNAUTHORISED)
    def tenants_route(key: api_keys.ApiKey = Depends(caller), service: ServiceState = Depends(state)) -> dict:
        """The tenants this key may read (registered in Dagster, or named by the key), with rows."""
        names = service.registered_tenants() if key.all_tenants else sorted(key.tenants)
        return {"tenants": [{"tenant": t, "rows": service.tenant_rows(t)} for t in names]}

    @app.post("/v1/context", responses={**UNAUTHORISED, **FORBIDDEN, 404: {"description": "no vectors for the tenant"}})
    def context_route(body: ContextRequest, key: api_keys.ApiKey = Depends(caller), service: ServiceState = Depends(state)) -> dict:
        """The tenant's best passages for ``question``, within ``token_budget`` tokens."""
        granted(key, body.tenant)
        return build_context(service, body)

    @app.post("/v1/answer", responses={**UNAUTHORISED, **FORBIDDEN, 501: {"description": "no chat endpoint configured"}, 502: {"description": "the chat endpoint failed"}})
    def answer_route(body: ContextRequest, key: api_keys.ApiKey = Depends(caller), service: ServiceState = Depends(state)) -> dict:
        """An answer from the configured chat model, grounded in ``/v1/context``, with citations."""
        granted(key, body.tenant)
        chat = chat_settings()
        if chat is None:
            raise HTTPException(501, "no chat endpoint configured: set VECTOR_ASSETS_LLM_BASE_URL and VECTOR_ASSETS_LLM_MODEL (and VECTOR_ASSETS_LLM_API_KEY) and restart the service; /v1/context gives the context without one")
        context = build_context(service, body)
        return answer(chat, body.question, context)

    @app.post("/v1/embeddings", responses={**UNAUTHORISED, 404: {"description": "unknown model"}})
    def embeddings_route(body: EmbeddingsRequest, key: api_keys.ApiKey = Depends(caller), service: ServiceState = Depends(state)) -> dict:
        """OpenAI-compatible embeddings from the collection's model (L2-normalised)."""
        if body.model not in {service.model_id, service.model_id.rsplit("/", 1)[-1]}:
            return JSONResponse({"error": {"message": f"this service serves the model {service.model_id!r}", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}, status_code=404)
        texts = [body.input] if isinstance(body.input, str) else body.input
        dim = service.model.dimension
        if body.dimensions is not None and body.dimensions != dim:
            raise HTTPException(422, f"dimensions: the model's vectors have {dim} dimensions")
        vectors = service.encoder.encode(texts)
        tokens = sum(min(len(ids), service.model.max_seq_length) for ids in service.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
        data = []
        for i, vector in enumerate(vectors):
            value = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode() if body.encoding_format == "base64" else [float(x) for x in vector]
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {"object": "list", "data": data, "model": service.model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.get("/healthz")
    def healthz() -> dict:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "not ready: what is missing"}})
    def readyz(service: ServiceState = Depends(state)):
        """Milvus reachable, model loaded, collection present."""
        checks = {"model_loaded": service.model is not None}
        reason = None
        try:
            collection = service.collection()
            checks["milvus"] = True
            checks["collection"] = bool(service.client.has_collection(collection))
        except StoreUnavailable as err:
            collection, checks["milvus"], checks["collection"], reason = None, False, False, str(err)
        except Exception as err:  # noqa: BLE001 - any failure to reach Milvus is "not ready"
            collection, checks["milvus"], checks["collection"] = None, False, False
            reason = f"Milvus failed: {service.milvus_failed(err)}; reconnecting"
        ready = all(checks.values())
        body = {"status": "ready" if ready else "not ready", "collection": collection, "model": service.model_id, "checks": checks}
        if reason:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses={**UNAUTHORISED, 403: {"description": "the key does not grant all tenants"}})
    def metrics(key: api_keys.ApiKey = Depends(caller), service: ServiceState = Depends(state)):
        """Prometheus text exposition (a key granting all tenants: the metrics name tenants)."""
        if not key.all_tenants:
            raise HTTPException(403, "/metrics needs a key granting all tenants (keys add --all-tenants)")
        return PlainTextResponse(generate_latest(service.metrics.registry), media_type="text/plain; version=0.0.4")

    return app


# ---------------------------------------------------------------------------- RAG context


CONTEXT_HEADER = "Records of {tenant} relevant to the question, most relevant first. Cite a record by its number in brackets, e.g. [1].\n\n"


def build_context(service: ServiceState, body: ContextRequest) -> dict:
    """The context for ``body.question``: the best passage of each of the ``k`` best records,
    best first, each as ``[n] <record id> (<kind>, <day>)`` and its text, added while the whole
    stays within ``token_budget`` tokens of the model's tokenizer (a passage that does not fit
    is cut at the budget when it is the first, else left out); a passage whose text repeats one
    already included (an issue filed twice) is skipped. Returns ``{"context", "citations": [{"n",
    "id", "day", "kind", "passage", "score"}], "tokens", "token_budget",
    "repeated_passages_skipped"}``."""
    hits = run_search(service, body.tenant, [body.question], body)[0][0]
    header = CONTEXT_HEADER.format(tenant=body.tenant)
    count = lambda text: len(service.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])  # noqa: E731
    parts, citations, used, seen, repeated = [header], [], count(header), set(), 0
    for hit in hits:
        text = (hit.passage_text or hit.preview).strip()
        if " ".join(text.split()) in seen:  # an issue filed twice: its copy adds nothing
            repeated += 1
            continue
        seen.add(" ".join(text.split()))
        n = len(citations) + 1
        block = f"[{n}] {hit.id} ({hit.kind}, {hit.day})\n{text}\n\n"
        tokens = count(block)
        if used + tokens > body.token_budget:
            if citations:
                break
            ids = service.tokenizer(block, add_special_tokens=False, truncation=False, verbose=False, return_offsets_mapping=True)["offset_mapping"]
            keep = max(0, body.token_budget - used)
            # Cut at a token boundary, then shorter until it fits: a cut can re-tokenise into
            # more pieces than it kept (36 tokens for a budget of 32: issue #17 item 13).
            while keep > 0:
                block = block[: ids[keep - 1][1]].rstrip() + "\n"
                tokens = count(block)
                if used + tokens <= body.token_budget:
                    break
                keep -= max(1, used + tokens - body.token_budget)
            if keep <= 0:
                break
        parts.append(block)
        used += tokens
        citations.append({"n": n, "id": hit.id, "day": hit.day, "kind": hit.kind, "passage": hit.passage, "score": hit.score})
    context = "".join(parts).rstrip() + "\n"
    tokens = count(context)
    while tokens > body.token_budget:  # a long tenant name's header alone: cut the whole at the budget
        ids = service.tokenizer(context, add_special_tokens=False, truncation=False, verbose=False, return_offsets_mapping=True)["offset_mapping"]
        context = context[: ids[max(0, body.token_budget - (tokens - body.token_budget) - 1)][1]].rstrip() + "\n"
        tokens = count(context)
    return {"context": context, "citations": citations, "tokens": tokens, "token_budget": body.token_budget, "repeated_passages_skipped": repeated}


def run_search(service: ServiceState, tenant: str, queries: list[str], body: _Filters):
    """:meth:`ServiceState.search`, its SearchError answered 404 (no vectors for the tenant) or
    400 (a search the collection cannot answer)."""
    try:
        return service.search(tenant, queries, body)
    except SearchError as err:
        if str(err).startswith("unknown tenant"):
            raise HTTPException(404, "no vectors stored for that tenant") from err
        raise HTTPException(400, str(err)) from err


@dataclass(frozen=True)
class ChatSettings:
    """An OpenAI-compatible chat endpoint: ``base_url``, ``model``, ``api_key``."""

    base_url: str
    model: str
    api_key: str


def chat_settings() -> ChatSettings | None:
    """The chat endpoint from ``VECTOR_ASSETS_LLM_BASE_URL``/``_MODEL``/``_API_KEY`` (read
    through ``dg.EnvVar``), None when the URL or the model is unset."""
    import dagster as dg

    url, model = dg.EnvVar("VECTOR_ASSETS_LLM_BASE_URL").get_value(), dg.EnvVar("VECTOR_ASSETS_LLM_MODEL").get_value()
    if not url or not model:
        return None
    return ChatSettings(url, model, dg.EnvVar("VECTOR_ASSETS_LLM_API_KEY").get_value() or "none")


SYSTEM_PROMPT = ("You answer questions about an organisation's issues, pull requests and commits using only the numbered records given. "
                 "Cite every claim with the record numbers in brackets, e.g. [2]. If the records do not answer the question, say so.")


def answer(chat: ChatSettings, question: str, context: dict) -> dict:
    """The chat model's answer to ``question`` given ``context`` (:func:`build_context`), with the
    citations the answer refers to. Raises HTTPException 502 when the endpoint fails."""
    import re

    import openai

    client = openai.OpenAI(base_url=chat.base_url, api_key=chat.api_key, max_retries=2, timeout=60)
    try:
        reply = client.chat.completions.create(model=chat.model, messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{context['context']}\nQuestion: {question}"},
        ])
    except openai.OpenAIError as err:
        raise HTTPException(502, f"the chat endpoint failed: {type(err).__name__}") from err
    text = reply.choices[0].message.content or ""
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", text)}
    return {"answer": text, "model": chat.model, "citations": [c for c in context["citations"] if c["n"] in cited], "context_citations": context["citations"]}


def serve(host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Run the service with uvicorn on ``host``:``port`` (loopback by default) until stopped."""
    import uvicorn

    uvicorn.run(create_app(), host=host, port=port, log_level=log_level, access_log=False)
