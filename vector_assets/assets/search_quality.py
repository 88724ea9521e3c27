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
from ..keys import SEARCH_QUALITY
from ..partitions import TENANTS, tenant_partitions
from ..resources import EmbeddingModelResource, LandingResource, MilvusResource, embedding_resource
from ..serving import retrieval
from ..store import milvus_store
from .vectors import add_partition_metadata

with warnings.catch_warnings():  # partitioned checks are a preview in Dagster 1.13
    warnings.simplefilter("ignore", dg.PreviewWarning)
    RETRIEVAL_CHECK = dg.AssetCheckSpec(
        "retrieval_quality", asset=SEARCH_QUALITY, partitions_def=tenant_partitions,
        description=(
            f"The tenant's golden queries (up to {retrieval.SAMPLE_QUERIES} known-item and title queries mined from its own records) "
            "on the collection search serves, every search mode: recall@10 or MRR@10 "
            f"{retrieval.WARN_DROP:.2f} or more under the tenant's baseline (its first figures on this sample, on any collection) WARN, "
            f"{retrieval.ERROR_DROP:.2f} or more ERROR."
        ),
    )


def evaluate_tenants(instance: dg.DagsterInstance, landing: LandingResource, milvus: MilvusResource, embedder: EmbeddingModelResource, tenants: list[str], collection: str | None = None):
    """Golden-query figures of ``tenants`` on ``collection`` (default: what the search alias
    names): ``(collection, {tenant: Verdict})``. Raises :class:`dagster.Failure` when there is no
    collection to evaluate."""
    client = milvus.get_client()
    collection = collection or milvus_store.alias_target(client, milvus.search_alias)
    if collection is None or not client.has_collection(collection):
        raise dg.Failure(description=f"no collection to evaluate (the search alias {milvus.search_alias} names none): run `vector-assets backfill` first", allow_retries=False)
    client.load_collection(collection)
    model_id = milvus_store.collection_model(client, collection) or embedder.model_id
    model = embedder if model_id == embedder.model_id else embedding_resource(model_id)
    store = milvus_store.store_key(milvus.uri, client, collection) or collection
    engine = state.engine(landing.database_url())
    index = landing.index()
    verdicts = {}
    for tenant in tenants:
        if not milvus_store.tenant_exists(client, collection, tenant):
            # Not written yet: figures of an empty search would become its baseline.
            verdicts[tenant] = retrieval.Verdict(True, metadata={"collection": collection, "queries": 0, "skipped": "no rows of this tenant in the collection yet"})
            continue
        version, queries, refreshed = retrieval.golden_set(engine, index, tenant)
        figures = retrieval.evaluate(client, collection, model, tenant, queries)
        baselines = retrieval.record(engine, store, tenant, version, figures) if figures else {}
        verdicts[tenant] = retrieval.verdict(figures, baselines, version, refreshed)
        verdicts[tenant].metadata["collection"] = collection
    return collection, verdicts


@dg.asset(
    key=SEARCH_QUALITY,
    partitions_def=tenant_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[RETRIEVAL_CHECK],
    group_name="quality",
    kinds={"milvus"},
    description=(
        "Retrieval quality of each tenant's search: its golden queries (known-item sentences and titles mined from its own "
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
