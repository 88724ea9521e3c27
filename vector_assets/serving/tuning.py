"""Index tuning on the store at hand: the vector index parameters with the least search latency
at a recall target, searched with optuna (issue #21 item 4; seed 001 §4.2).

What is measured, per trial:

* **Recall@10 against exact search**: each golden query of each tenant
  (:mod:`vector_assets.serving.retrieval`) is embedded and searched within its tenant as
  :func:`vector_assets.serving.search.search` asks Milvus (``limit`` = 10 x ``OVERFETCH``
  passages, HNSW ``ef`` at least the limit); the first 10 rows are compared with the exact
  10 nearest rows of the tenant (cosine, brute force over its stored vectors); a row as close as
  the 10th exact one counts (equal vectors tie). Recall is the mean overlap / 10, over all queries.
* **p95 latency** (ms) of one search request per query, the way the service sends them.

The search space: HNSW (``M`` 4-64, ``efConstruction`` 32-512, ``ef`` 40-1024) and IVF_FLAT
(``nlist`` 16-1024, ``nprobe`` 1-128; ``nprobe`` at most ``nlist``). Each build is a scratch
collection beside the live one (pk, tenant as partition key, vector: the live rows copied),
built once per build parameters and dropped at the end; the live collection is never touched
by a trial (scratch collections a killed run left behind are dropped by the next run:
:func:`drop_stale_scratch`). Optuna's TPE sampler (seeded) minimises p95 under the constraint recall >= target
(``constraints_func``: a trial under the target is infeasible, whatever its speed).

What is recorded where search reads it: the smallest search ``ef`` of the live collection's
own index (its build parameters are fixed until a rebuild) whose recall reaches the target,
measured on the live collection, kept as the collection property
:data:`vector_assets.store.milvus_store.SEARCH_PARAMS_PROPERTY`, which
:func:`vector_assets.serving.search.search` uses when its caller gives no search parameters.
The best build over all trials is the recommendation for the next collection (a model switch
or a rebuild: ``MilvusResource.index_type`` / ``index_params``), kept beside it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np
from pymilvus import DataType, MilvusClient

from ..store import milvus_store
from .search import OVERFETCH, SEARCH_CONSISTENCY

#: Recall@10 against exact search that a setting must reach (issue #21 item 4).
TARGET_RECALL = 0.95
K = 10
LIMIT = K * OVERFETCH
#: ``ef`` values tried on the live collection, smallest first (HNSW needs ef >= limit).
LIVE_EF = (40, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
SCRATCH_PREFIX = "tuning_scratch"
#: Optuna trials of a tuning run.
TRIALS = 24

log = logging.getLogger(__name__)


@dataclass
class Trial:
    """One setting measured: index type, build and search parameters, recall@10 against exact
    search (0-1), p95 and median latency of one search request (ms)."""

    index_type: str
    build: dict
    search: dict
    recall: float
    p95_ms: float
    p50_ms: float

    @property
    def feasible(self) -> bool:
        return self.recall >= TARGET_RECALL


@dataclass
class TuningResult:
    """What :func:`tune` found: ``best`` (the fastest feasible trial of the optuna study, None when
    none reached the target), ``live`` (the smallest feasible ``ef`` on the live collection, or its
    best recall when none reached it), every trial, and the figures of the set."""

    collection: str
    rows: int
    queries: int
    target: float
    best: Trial | None
    live: Trial
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuerySet:
    """Golden queries embedded, with the exact answer of each: ``tenants[i]`` is query i's tenant,
    ``vectors`` (n, dim) float32 normalised, ``exact[i]`` the pks of the 10 nearest rows."""

    tenants: list[str]
    vectors: np.ndarray
    exact: list[list[str]]
    #: The 10th exact cosine of each query: a row found at least this close is right (rows of
    #: equal vectors, such as identical commit messages, tie, and either one is an exact answer).
    kth: list[float] = field(default_factory=list)


def _rows(client: MilvusClient, collection: str, tenants: list[str]) -> list[dict]:
    return milvus_store.query_all(client, collection, f"tenant in {milvus_store.quote_list(tenants)}", ["pk", "tenant", "vector"])


def exact_answers(rows: list[dict], queries: dict[str, list[str]], embedder) -> QuerySet:
    """Embed ``queries`` (``{tenant: [text]}``) with ``embedder`` and find each one's exact
    :data:`K` nearest rows of its tenant among ``rows`` (dicts with pk, tenant, vector) by
    cosine. Tenants without rows are left out."""
    by_tenant: dict[str, tuple[list[str], np.ndarray]] = {}
    for tenant in queries:
        mine = [r for r in rows if r["tenant"] == tenant]
        if mine:
            m = np.asarray([r["vector"] for r in mine], dtype=np.float32)
            m /= np.linalg.norm(m, axis=1, keepdims=True).clip(1e-12)
            by_tenant[tenant] = ([r["pk"] for r in mine], m)
    tenants = [t for t, texts in queries.items() if t in by_tenant for _ in texts]
    texts = [q for t, texts in queries.items() if t in by_tenant for q in texts]
    vectors = np.asarray(embedder.encode(texts), dtype=np.float32) if texts else np.zeros((0, 1), np.float32)
    exact, kth = [], []
    for tenant, v in zip(tenants, vectors):
        pks, m = by_tenant[tenant]
        scores = m @ (v / max(float(np.linalg.norm(v)), 1e-12))
        order = np.argsort(-scores, kind="stable")[:K]
        exact.append([pks[i] for i in order])
        kth.append(float(scores[order[-1]]))
    return QuerySet(tenants, vectors, exact, kth)


def measure(client: MilvusClient, collection: str, queries: QuerySet, search_params: dict) -> tuple[float, float, float]:
    """``(recall@10 against exact, p95 ms, p50 ms)`` of ``queries`` on ``collection`` (loaded)
    with ``search_params``, one request per query, as :func:`~vector_assets.serving.search.search`
    sends them."""
    hits, latencies = 0, []
    for tenant, vector, exact, kth in zip(queries.tenants, queries.vectors, queries.exact, queries.kth):
        started = time.perf_counter()
        found = client.search(
            collection, data=[vector.tolist()], anns_field="vector", filter=f"tenant == {milvus_store.quote(tenant)}",
            limit=LIMIT, output_fields=["pk"], search_params={"params": search_params}, consistency_level=SEARCH_CONSISTENCY,
        )[0]
        latencies.append((time.perf_counter() - started) * 1000)
        wanted = set(exact)
        hits += min(K, sum(1 for h in found[:K] if h["entity"]["pk"] in wanted or float(h["distance"]) >= kth - 1e-5))
    n = max(len(queries.tenants), 1)
    return round(hits / (K * n), 4), round(float(np.percentile(latencies, 95)), 3), round(float(np.percentile(latencies, 50)), 3)


#: A scratch collection older than this (seconds, from the creation time in its name) is left
#: over from a tuning run that was killed or failed mid-build, and the next run drops it.
SCRATCH_STALE_S = 6 * 3600


def drop_stale_scratch(client: MilvusClient, now: float | None = None) -> list[str]:
    """Drop the scratch collections (``tuning_scratch_<unix seconds>_<hex>``) created more than
    :data:`SCRATCH_STALE_S` ago; returns their names. Younger ones may belong to a run in progress
    and are kept."""
    now = time.time() if now is None else now
    dropped = []
    for name in client.list_collections():
        parts = name.split("_")
        if name.startswith(SCRATCH_PREFIX + "_") and len(parts) == 4 and parts[2].isdigit() and now - int(parts[2]) > SCRATCH_STALE_S:
            client.drop_collection(name)
            dropped.append(name)
    return dropped


def _scratch(client: MilvusClient, rows: list[dict], dim: int, index_type: str, build: dict) -> str:
    name = f"{SCRATCH_PREFIX}_{int(time.time())}_{uuid.uuid4().hex[:8]}"
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.VARCHAR, max_length=64, is_primary=True)
    schema.add_field("tenant", DataType.VARCHAR, max_length=milvus_store.MAX_TENANT, is_partition_key=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    params = client.prepare_index_params()
    params.add_index("vector", index_type=index_type, metric_type="COSINE", params=dict(build))
    client.create_collection(name, schema=schema, index_params=params, num_partitions=16, consistency_level="Strong")
    for i in range(0, len(rows), 2000):
        client.insert(name, rows[i : i + 2000])
    client.flush(name)
    wait_for_index(client, name, len(rows))
    client.load_collection(name)
    wait_for_loaded(client, name, len(rows))
    return name


def wait_for_index(client: MilvusClient, name: str, rows: int, timeout_s: float = 1800.0) -> None:
    """Wait until the vector index of collection ``name`` covers all ``rows``: before that, Milvus
    answers from unindexed or interim-indexed segments, and a trial would measure them, not its
    parameters (seen: IVF_FLAT nlist 16, nprobe 16 gave recall 0.899 then 0.905 on one collection).
    Raises TimeoutError after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.describe_index(name, "vector")
        if int(info.get("indexed_rows", 0)) >= rows and int(info.get("pending_index_rows", 0)) == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the index of {name} covers {info.get('indexed_rows')} of {rows} rows after {timeout_s:.0f} s")
        time.sleep(0.5)


def settle(client: MilvusClient, name: str, queries: QuerySet, params: dict, rows: int, timeout_s: float = 120.0) -> None:
    """Search a new build in passes (up to 50 queries each) until its recall has not changed for
    ``rows`` / 5,000 seconds (1-60 s), so that a trial measures the index, not what answered
    before the index was in effect. Milvus Lite reports every index built at once, then compacts
    the flushed segments and indexes the merged one in a background thread, answering by brute
    force meanwhile (seen at 100,000 rows in one tenant: the first pass after the build at
    recall 0.999 and p50 167 ms, as FLAT; the next at 0.987 and 57 ms); it exposes no way to
    wait for that thread. The quiet time is a heuristic scaled to the build's size; the server's
    equivalent is waited for exactly (:func:`wait_for_loaded`)."""
    sample = QuerySet(queries.tenants[:50], queries.vectors[:50], queries.exact[:50], queries.kth[:50])
    quiet = min(max(rows / 5000.0, 1.0), 60.0)
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        recall = measure(client, name, sample, params)[0]
        if recall != last:
            last, since = recall, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.5)


#: Milvus builds no vector index for a sealed segment of fewer rows than this (2.3's
#: ``indexCoord.minSegmentNumRowsToEnableIndex`` default): such segments are searched by brute force.
MIN_INDEXED_SEGMENT_ROWS = 1024


def wait_for_loaded(client: MilvusClient, name: str, rows: int, timeout_s: float = 300.0) -> None:
    """Wait until the query nodes serve all ``rows`` of collection ``name`` from sealed segments
    with their vector index. On the 2.3.5 server ``load_collection`` returns before that: for a
    few seconds the query nodes hold no segment and a search is answered without the index (seen:
    IVF_FLAT nlist 1024, nprobe 6 gave recall 1.000 right after the load, then 0.759 from 3 s
    on). A segment of fewer than :data:`MIN_INDEXED_SEGMENT_ROWS` rows gets no index and is served
    by brute force (seen: 1,600 rows in 16 tenants, segments of 100-200 rows, no index name). Milvus
    Lite does not report query segments: nothing to wait for there. Raises TimeoutError after
    ``timeout_s`` seconds."""
    connection = getattr(client, "_get_connection", None)
    if connection is None or milvus_store.server_version(client) is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        segments = connection().get_query_segment_info(name)
        loaded = sum(s.num_rows for s in segments)
        unindexed = [s for s in segments if not s.index_name and s.num_rows >= MIN_INDEXED_SEGMENT_ROWS]
        if loaded >= rows and not unindexed:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the query nodes serve {loaded} of {rows} rows of {name}, {len(unindexed)} segments without their index, after {timeout_s:.0f} s")
        time.sleep(0.5)


def live_build(client: MilvusClient, collection: str) -> tuple[str, dict]:
    """The live collection's vector index: ``(index_type, build params)`` as the store reports
    them (params the store does not report are left out)."""
    info = client.describe_index(collection, "vector")
    params = info.get("params") or {}
    if isinstance(params, str):
        params = json.loads(params)
    build = {k: int(info.get(k) or params.get(k)) for k in ("M", "efConstruction", "nlist") if info.get(k) or params.get(k)}
    return info.get("index_type", "HNSW"), build


def tune_live(client: MilvusClient, collection: str, queries: QuerySet) -> Trial:
    """The smallest ``ef`` of :data:`LIVE_EF` whose recall on the live HNSW ``collection`` reaches
    :data:`TARGET_RECALL` (the largest tried, with its recall, when none does); for an IVF index,
    the same over ``nprobe``; a FLAT index has nothing to tune (its recall is 1)."""
    index_type, build = live_build(client, collection)
    if index_type.startswith("IVF"):
        candidates = [{"nprobe": p} for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= build.get("nlist", 1024)]
    elif index_type == "HNSW":
        candidates = [{"ef": ef} for ef in LIVE_EF]
    else:
        candidates = [{}]
    trial = None
    for params in candidates:
        recall, p95, p50 = measure(client, collection, queries, params)
        trial = Trial(index_type, build, params, recall, p95, p50)
        if trial.feasible:
            break
    return trial


def tune(client: MilvusClient, collection: str, embedder, queries: dict[str, list[str]], trials: int = TRIALS, seed: int = 0, index_types: tuple[str, ...] = ("HNSW", "IVF_FLAT")) -> TuningResult:
    """Search the index parameters of ``collection`` (a loaded collection's name) with optuna on
    ``queries`` (``{tenant: [golden query text]}``) embedded by ``embedder`` (the collection's
    model): ``trials`` optuna trials over :data:`index_types` (see the module docstring), then
    the live collection's own ``ef`` (:func:`tune_live`). Scratch collections are dropped before
    returning, also on error. Raises ValueError when the collection holds no row of any tenant of
    ``queries``."""
    import optuna

    started = time.perf_counter()
    for name in drop_stale_scratch(client):
        log.warning("dropped %s, left over from an earlier tuning run", name)
    rows = _rows(client, collection, list(queries))
    if not rows:
        raise ValueError(f"collection {collection} holds no rows of the tenants {sorted(queries)[:5]}: nothing to tune on")
    dim = len(rows[0]["vector"])
    query_set = exact_answers(rows, queries, embedder)
    builds: dict[str, str] = {}
    measured: list[Trial] = []

    def objective(trial: optuna.Trial) -> float:
        index_type = trial.suggest_categorical("index_type", list(index_types))
        if index_type == "HNSW":
            build = {"M": trial.suggest_categorical("M", [4, 8, 16, 32, 48, 64]), "efConstruction": trial.suggest_categorical("efConstruction", [32, 64, 128, 256, 512])}
            params = {"ef": trial.suggest_int("ef", LIMIT, 1024, log=True)}
        else:
            build = {"nlist": trial.suggest_categorical("nlist", [16, 64, 256, 1024])}
            params = {"nprobe": min(trial.suggest_int("nprobe", 1, 128, log=True), build["nlist"])}
        key = json.dumps([index_type, build], sort_keys=True)
        if key not in builds:
            builds[key] = _scratch(client, rows, dim, index_type, build)
            settle(client, builds[key], query_set, params, len(rows))
        recall, p95, p50 = measure(client, builds[key], query_set, params)
        measured.append(Trial(index_type, build, params, recall, p95, p50))
        trial.set_user_attr("recall", recall)
        return p95

    def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
        return [TARGET_RECALL - trial.user_attrs.get("recall", 0.0)]  # <= 0 is feasible

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed, constraints_func=constraints))
        study.optimize(objective, n_trials=trials)
    finally:
        for name in builds.values():
            client.drop_collection(name)
    feasible = [t for t in measured if t.feasible]
    best = min(feasible, key=lambda t: t.p95_ms) if feasible else None
    live = tune_live(client, collection, query_set)
    return TuningResult(collection, len(rows), len(query_set.tenants), TARGET_RECALL, best, live, measured, round(time.perf_counter() - started, 1))


def record(client: MilvusClient, collection: str, result: TuningResult) -> dict:
    """Keep the live collection's tuned search parameters (``result.live``, only when feasible)
    and the recommended build as the collection's property, where search reads them
    (:func:`vector_assets.store.milvus_store.tuned_search_params`); returns what was written
    (``{}`` when nothing reached the target: search keeps its default)."""
    if not result.live.feasible:
        return {}
    value = {"search": result.live.search, "recall": result.live.recall, "p95_ms": result.live.p95_ms, "tuned_at": int(time.time())}
    if result.best is not None:
        value["recommended_build"] = {"index_type": result.best.index_type, "params": result.best.build, "search": result.best.search, "recall": result.best.recall, "p95_ms": result.best.p95_ms}
    milvus_store.set_tuned_search_params(client, collection, value)
    return value


def report(result: TuningResult, recorded: bool) -> str:
    """What a tuning run found, as ``vector-assets tune`` prints it: a summary line, the trials
    table (:func:`trials_table`), the fastest setting at the target and the live index's tuned
    parameters (``recorded``: whether they were kept where search reads them)."""
    best, live = result.best, result.live
    return "\n".join([
        f"{result.collection}: {result.rows} rows, {result.queries} golden queries, {len(result.trials)} trials in {result.seconds:.0f} s (target recall@10 {result.target} of exact search)",
        trials_table(result),
        f"fastest at the target: {best.index_type} {json.dumps(best.build)} {json.dumps(best.search)} recall {best.recall:.3f} p95 {best.p95_ms:.2f} ms" if best else "fastest at the target: none reached it",
        f"live index {live.index_type} {json.dumps(live.build)}: {json.dumps(live.search)} recall {live.recall:.3f} p95 {live.p95_ms:.2f} ms" + (" (recorded: search uses it)" if recorded else " (not recorded)"),
    ])


def trials_table(result: TuningResult) -> str:
    """The trials as a Markdown table, fastest feasible first."""
    lines = ["| index | build | search | recall@10 vs exact | p95 ms | p50 ms |", "|---|---|---|---|---|---|"]
    for t in sorted(result.trials, key=lambda t: (not t.feasible, t.p95_ms)):
        lines.append(f"| {t.index_type} | {json.dumps(t.build)} | {json.dumps(t.search)} | {t.recall:.3f} | {t.p95_ms:.2f} | {t.p50_ms:.2f} |")
    return "\n".join(lines)
