"""Search quality per tenant: golden queries against what search serves, and the
``retrieval_quality`` check (issue #21; rules in :mod:`vector_assets.serving.retrieval`).

``search_quality`` is partitioned by tenant (the same dynamic tenants as the tenant-day assets):
each tenant's materialisation carries its recall@10 and MRR@10 per search mode as metadata, which
the UI plots over time per tenant, and the check's evaluation of that tenant (its own status in
the UI, whatever other tenants score). A run covers any number of tenants
(``BackfillPolicy.single_run``); ``search_quality_schedule`` evaluates every tenant daily.
"""


import time
import warnings

import dagster as dg

from .. import state
from ..checks import outcomes
from ..keys import INDEX_TUNING, SEARCH_QUALITY
from ..partitions import TENANTS, tenant_partitions
from ..resources import EmbeddingModelResource, LandingResource, MilvusResource, embedding_resource
from ..serving import retrieval, tuning
from ..store.milvus_store import MilvusStore


def add_partition_metadata(context: dg.AssetExecutionContext, figures: dict[tuple[dg.AssetKey, str], dict]) -> None:
    """Attach each partition's figures (a tenant's search quality) to the materialisation
    Dagster derives for it from the step's ranged output: what
    ``context.add_asset_metadata(metadata, asset_key=..., partition_key=...)`` does, in one update.

    ``add_asset_metadata`` checks the partition key against the whole range and copies every
    figure added so far, on each call: 32 ms a call at 1,151 days (the profile of
    ``benchmarks/pipeline.py encode``, 36 s of an 86 s run), quadratic in the run's days. The
    check is redundant here (the keys come from the run's own partition keys), so the figures
    go into the step's metadata accumulator at once (Dagster 1.13's
    ``OutputMetadataAccumulator``); where that internal is missing, the public method is used.
    """
    if not figures:
        return
    try:
        from dagster._core.execution.context.metadata_logging import AssetMetadataHandle

        step = context.op_execution_context._step_execution_context
        accumulator = step._metadata_accumulator
        added = {AssetMetadataHandle(asset_key=asset_key, partition_key=key): metadata for (asset_key, key), metadata in figures.items()}
        step._metadata_accumulator = type(accumulator)(per_output_metadata={**accumulator.per_output_metadata, **added})
    except (ImportError, AttributeError):  # another Dagster version: the public, slower way
        for (asset_key, key), metadata in figures.items():
            context.add_asset_metadata(metadata, asset_key=asset_key, partition_key=key)


with warnings.catch_warnings():  # partitioned checks are a preview in Dagster 1.13
    warnings.simplefilter("ignore", dg.PreviewWarning)
    RETRIEVAL_CHECK = dg.AssetCheckSpec(
        "retrieval_quality", asset=SEARCH_QUALITY, partitions_def=tenant_partitions,
        description=(
            f"The tenant's golden queries (up to {retrieval.SAMPLE_QUERIES} known-item, title and pull-request queries mined from its "
            "own records; those whose answers are not written yet are left out, as queries_without_rows) "
            "on the collection search serves, every search mode: recall@10 or MRR@10 "
            f"{retrieval.WARN_DROP:.2f} or more under the tenant's baseline (its first figures on this sample, on any collection) WARN, "
            f"{retrieval.ERROR_DROP:.2f} or more ERROR."
        ),
    )


class IndexTuningConfig(dg.Config):
    """``trials``: optuna trials (each one setting; a build is made once per build parameters);
    ``record``: keep the live collection's tuned search parameters where search reads them."""

    trials: int = tuning.TRIALS
    record: bool = True


def served_collection(milvus: MilvusResource, embedder: EmbeddingModelResource, collection: str | None, purpose: str):
    """``(store, collection, model)``: ``collection`` (default: what the search alias names),
    ready, in ``milvus``'s store (a :class:`~vector_assets.store.base.VectorStore`), with the
    model it belongs to (``embedder`` when it is that model). Raises :class:`dagster.Failure`
    naming ``purpose`` when there is no such collection."""
    store = milvus.get_store()
    collection = collection or store.alias_target(milvus.search_alias)
    if collection is None or not store.has_collection(collection):
        raise dg.Failure(description=f"no collection to {purpose} (the search alias {milvus.search_alias} names none): run `vector-assets backfill` first", allow_retries=False)
    store.prepare(collection)
    model_id = store.collection_model(collection) or embedder.model_id
    return store, collection, (embedder if model_id == embedder.model_id else embedding_resource(model_id))


def evaluate_tenants(instance: dg.DagsterInstance, landing: LandingResource, milvus: MilvusResource, embedder: EmbeddingModelResource, tenants: list[str], collection: str | None = None):
    """Golden-query figures of ``tenants`` on ``collection`` (default: what the search alias
    names): ``(collection, {tenant: Verdict})``. Raises :class:`dagster.Failure` when there is no
    collection to evaluate."""
    client, collection, model = served_collection(milvus, embedder, collection, "evaluate")
    store = client.store_key(collection) or collection
    engine = state.engine(landing.database_url())
    index = landing.index()
    verdicts = {}
    for tenant in tenants:
        if not client.tenant_exists(collection, tenant):
            # Not written yet: figures of an empty search would become its baseline.
            verdicts[tenant] = retrieval.Verdict(True, metadata={"collection": collection, "queries": 0, "skipped": "no rows of this tenant in the collection yet"})
            continue
        version, queries, refreshed = retrieval.golden_set(engine, index, tenant)
        queries, left_out = retrieval.answerable(client, collection, tenant, queries)
        figures = retrieval.evaluate(client, collection, model, tenant, queries)
        baselines = retrieval.record(engine, store, tenant, retrieval.baseline_key(version, queries, left_out), figures) if figures else {}
        verdicts[tenant] = retrieval.verdict(figures, baselines, version, refreshed)
        verdicts[tenant].metadata["collection"] = collection
        # Queries whose answer records are not in the collection yet: left out of the figures.
        verdicts[tenant].metadata["queries_without_rows"] = left_out
    return collection, verdicts


@dg.asset(
    key=SEARCH_QUALITY,
    partitions_def=tenant_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[RETRIEVAL_CHECK],
    group_name="quality",
    kinds={"milvus"},
    description=(
        "Retrieval quality of each tenant's search: its golden queries (known-item sentences, titles and pull-request titles mined from its own "
        "records, a fixed versioned sample kept in the state database) searched in every mode on the collection the search "
        "alias names; recall@10 and MRR@10 per mode in the metadata, judged by the retrieval_quality check."
    ),
)
def search_quality(context: dg.AssetExecutionContext, landing: LandingResource, embedding_model: EmbeddingModelResource, milvus: MilvusResource):
    tenants = list(context.partition_keys)
    collection, verdicts = evaluate_tenants(context.instance, landing, milvus, embedding_model, tenants)
    add_partition_metadata(context, {(SEARCH_QUALITY, tenant): {k: v for k, v in verdict.metadata.items() if k != "failures"} for tenant, verdict in verdicts.items()})
    yield dg.MaterializeResult()
    yield from outcomes.record_evaluations(context, check_evaluations(context.instance, context.run_id, verdicts))
    failed = {t: v for t, v in verdicts.items() if not v.passed}
    context.log.info(f"{len(tenants)} tenants evaluated on {collection}: {len(failed)} below their baseline" + (": " + "; ".join(f"{t} ({v.severity}): {v.metadata['failures']}" for t, v in sorted(failed.items())[:10]) if failed else ""))


def check_evaluations(instance: dg.DagsterInstance, run_id: str, verdicts: dict) -> list[dg.AssetCheckEvaluation]:
    """One partitioned evaluation of ``retrieval_quality`` per tenant of ``verdicts``, each
    targeting the tenant's latest materialisation of ``search_quality`` (recorded by this run)."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData
    from dagster._core.events import DagsterEventType

    latest = instance.event_log_storage.get_latest_storage_id_by_partition(SEARCH_QUALITY, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(verdicts))
    now = time.time()
    return [
        dg.AssetCheckEvaluation(
            asset_key=SEARCH_QUALITY, check_name=RETRIEVAL_CHECK.name, passed=v.passed, metadata=v.metadata,
            severity=dg.AssetCheckSeverity.WARN if v.severity == "WARN" else dg.AssetCheckSeverity.ERROR,
            description=None if v.passed else v.metadata.get("failures"), partition=tenant,
            target_materialization_data=AssetCheckEvaluationTargetMaterializationData(storage_id=latest[tenant], run_id=run_id, timestamp=now) if tenant in latest else None,
        )
        for tenant, v in sorted(verdicts.items())
    ]


search_quality_job = dg.define_asset_job("search_quality_job", selection=dg.AssetSelection.assets(SEARCH_QUALITY), partitions_def=tenant_partitions, description="Golden-query figures and the retrieval_quality check for the selected tenants.")


@dg.schedule(job=search_quality_job, cron_schedule="45 1 * * *", execution_timezone="UTC", description="Daily, after the audit: every tenant's golden queries on what search serves (one run over all tenants).")
def search_quality_schedule(context: dg.ScheduleEvaluationContext):
    tenants = context.instance.get_dynamic_partitions(TENANTS)
    if not tenants:
        return dg.SkipReason("no tenants registered yet")
    return dg.RunRequest(
        run_key=context.scheduled_execution_time.isoformat(),
        tags={"dagster/asset_partition_range_start": tenants[0], "dagster/asset_partition_range_end": tenants[-1]},
    )


def tune_served(landing: LandingResource, milvus: MilvusResource, embedder: EmbeddingModelResource, trials: int = tuning.TRIALS, record: bool = True, collection: str | None = None):
    """Tune the index of ``collection`` (default: what the search alias names) on every tenant's
    golden queries (:func:`vector_assets.serving.tuning.tune`) and, with ``record``, keep the
    result where search reads it: ``(TuningResult, recorded dict)``. Raises
    :class:`dagster.Failure` when there is no collection or no golden query to tune on."""
    store, collection, model = served_collection(milvus, embedder, collection, "tune")
    if not isinstance(store, MilvusStore):
        raise dg.Failure(description=f"index tuning builds Milvus indexes: {type(store).__name__} is not tuned (its HNSW index takes ef_search per search)", allow_retries=False)
    client = store.client
    engine = state.engine(landing.database_url())
    index = landing.index()
    queries = {}
    for tenant in index.tenants():
        _, golden, _ = retrieval.golden_set(engine, index, tenant)
        if golden:
            queries[tenant] = [q.text for q in golden]
    if not queries:
        raise dg.Failure(description="no golden queries: the landing data has no records to mine them from", allow_retries=False)
    result = tuning.tune(client, collection, model, queries, trials=trials)
    return result, (tuning.record(client, collection, result) if record else {})


@dg.asset(
    key=INDEX_TUNING,
    group_name="quality",
    kinds={"milvus", "optuna"},
    description=(
        "The vector index parameters with the least search latency at recall@10 >= 0.95 of exact search on every tenant's "
        "golden queries, found by optuna on the store at hand (HNSW M / efConstruction / ef, IVF_FLAT nlist / nprobe, "
        "each build a scratch collection beside the live one); the live collection's smallest ef reaching the target is "
        "recorded on the collection, where search reads it."
    ),
)
def index_tuning(context: dg.AssetExecutionContext, config: IndexTuningConfig, landing: LandingResource, embedding_model: EmbeddingModelResource, milvus: MilvusResource) -> dg.MaterializeResult:
    result, recorded = tune_served(landing, milvus, embedding_model, trials=config.trials, record=config.record)
    live, best = result.live, result.best
    context.log.info(
        f"{result.collection}: {len(result.trials)} trials in {result.seconds:.0f} s; live {live.index_type} {live.search} recall {live.recall:.3f} p95 {live.p95_ms:.2f} ms"
        + (f"; fastest build {best.index_type} {best.build} {best.search} recall {best.recall:.3f} p95 {best.p95_ms:.2f} ms" if best else "; no trial reached the target")
        + ("" if recorded else "; nothing recorded")
    )
    return dg.MaterializeResult(metadata={
        "collection": result.collection, "rows": result.rows, "queries": result.queries, "target_recall": result.target,
        "live_search_params": dg.MetadataValue.json(live.search), "live_recall_at_10": live.recall, "live_p95_ms": live.p95_ms,
        "recorded": bool(recorded),
        "best_index_type": best.index_type if best else "none", "best_build": dg.MetadataValue.json(best.build if best else {}),
        "best_search_params": dg.MetadataValue.json(best.search if best else {}), "best_recall_at_10": best.recall if best else 0.0,
        "best_p95_ms": best.p95_ms if best else 0.0, "trials": dg.MetadataValue.md(tuning.trials_table(result)), "seconds": result.seconds,
    })


index_tuning_job = dg.define_asset_job("index_tuning_job", selection=dg.AssetSelection.assets(INDEX_TUNING), description="Search the index parameters with optuna on every tenant's golden queries; record the live collection's tuned ef.")
