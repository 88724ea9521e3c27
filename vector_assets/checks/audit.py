"""The audit job: evaluate the after-write checks on what Milvus holds, without writing.

Rows deleted or altered behind the pipeline's back are found here (coverage), as are stored
vectors that no longer agree with the model (coherence) or cannot be retrieved
(retrievability). The alert sensor turns ERROR evaluations into re-materialisations.
"""

import dataclasses

import dagster as dg

from ..keys import MILVUS_VECTORS
from ..embed.quality import QualityThresholds
from ..resources import EmbeddingModelResource, LandingResource, MilvusResource
from ..store.sync import extract_partitions, split_into_passages
from . import evaluate, outcomes


class AuditConfig(dg.Config):
    """Which tenant-days to audit: default every tenant-day written for the current model and
    every tenant-day its collection holds rows of."""

    tenants: list[str] = []
    start: str = ""
    end: str = ""


@dg.op(description="Evaluate coverage, coherence and retrievability on the stored rows of tenant-days, without writing: one evaluation of each check per tenant-day.")
def audit_tenant_days(
    context: dg.OpExecutionContext,
    config: AuditConfig,
    landing: LandingResource,
    embedding_model: EmbeddingModelResource,
    milvus: MilvusResource,
    quality: QualityThresholds,
):
    index = landing.index()
    model_id = embedding_model.model_id
    store = milvus.get_store()
    name = milvus.collection_for(model_id)
    # Every tenant-day written for this collection, and every tenant-day the collection holds
    # rows of, whatever the landing index remembers (issue #17 item 2): rows of days or tenants
    # the landing data lacks fail coverage, and the alert sensor's re-run deletes them.
    held = store.stored_partitions(name, config.tenants or None, config.start or None, config.end or None)
    keys = sorted(
        {
            k
            for k in index.synced_partitions(milvus.store_key(model_id))
            if (not config.tenants or k[0] in config.tenants) and (not config.start or k[1] >= config.start) and (not config.end or k[1] <= config.end)
        }
        | held
    )
    verdicts: dict[str, dict] = {"coverage": {}, "coherence": {}, "retrievability": {}}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        # Judged as written: Milvus should hold exactly these texts.
        results = {k: dataclasses.replace(r, written=True) for k, r in split_into_passages(extract_partitions(index.read_partitions(chunk)), embedding_model).items()}
        exists = store.has_collection(name)
        if exists:
            store.prepare(name)
        stored = evaluate.stored_hashes(store, name, chunk) if exists else {}
        verdicts["coverage"].update(evaluate.coverage_verdicts(results, stored, model_id))
        sample = evaluate.sample_vectors(store, name, results, quality) if exists else {}
        verdicts["coherence"].update(evaluate.coherence_verdicts(results, sample, lambda texts: embedding_model.encode(texts), quality))
        if sample:
            verdicts["retrievability"].update(evaluate.retrievability_verdicts(store, name, results, sample, quality, milvus.search_params))
    # One evaluation of each check per audited tenant-day, partitioned, as the tenant-day runs
    # record them: a tenant-day's status is its latest evaluation, the audit's or a run's.
    targets = outcomes.target_materializations(context.instance, MILVUS_VECTORS, keys)
    failed, to_record = 0, []
    for check_name, by_key in verdicts.items():
        reasons = {k: evaluate.failure_reason(check_name, v, None, quality) for k, v in by_key.items() if not v.passed}
        failed += len(reasons)
        to_record += outcomes.evaluations(check_name, by_key, targets, reasons, extra={"source": "audit"})
    yield from outcomes.record_evaluations(context, to_record)
    context.log.info(f"audited {len(keys)} tenant-days: {failed} tenant-day check outcomes failed")
    yield dg.Output(len(keys))


@dg.job(description="Audit stored vectors (coverage, coherence, retrievability) per tenant-day, without writing.")
def audit_job():
    audit_tenant_days()
