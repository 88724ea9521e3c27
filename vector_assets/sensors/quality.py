"""After runs that change tenants: their search quality (issue #21 item 2)."""

import json

import dagster as dg

from ..assets.search_quality import search_quality_job
from ..keys import MILVUS_VECTORS
from ..partitions import TENANTS, split_key

#: Materialisations of milvus_vectors read per query while catching up.
PAGE = 10_000


@dg.sensor(
    job=search_quality_job, minimum_interval_seconds=600,
    description=(
        "Every 10 minutes: the tenants whose vectors were materialised since the last tick get their golden "
        "queries evaluated (search_quality and its retrieval_quality check), in one run over the range of those "
        "tenants (tenants between them in the partition order are evaluated too)."
    ),
)
def search_quality_sensor(context: dg.SensorEvaluationContext):
    cursor = int(context.cursor) if context.cursor else None
    if cursor is None:
        # First tick: start from now (the daily schedule covers what came before).
        latest = context.instance.fetch_materializations(MILVUS_VECTORS, limit=1, ascending=False).records
        return dg.SkipReason("started: tenants materialised from now on are evaluated") if not latest else dg.SensorResult(skip_reason="started", cursor=str(latest[0].storage_id))
    changed: set[str] = set()
    while True:
        page = context.instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=MILVUS_VECTORS, after_storage_id=cursor), limit=PAGE, ascending=True)
        for record in page.records:
            partition = record.partition_key
            if partition:
                changed.add(split_key(partition)[0])
            cursor = max(cursor, record.storage_id)
        if not page.has_more:
            break
    if not changed:
        return dg.SensorResult(skip_reason="no tenant's vectors materialised since the last tick", cursor=str(cursor))
    order = {t: i for i, t in enumerate(context.instance.get_dynamic_partitions(TENANTS))}
    known = sorted((t for t in changed if t in order), key=order.__getitem__)
    if not known:
        return dg.SensorResult(skip_reason="the tenants materialised are not registered", cursor=str(cursor))
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"search_quality:{cursor}", tags={"dagster/asset_partition_range_start": known[0], "dagster/asset_partition_range_end": known[-1], "vector_assets/tenants_changed": json.dumps(known[:50])})],
        cursor=str(cursor),
    )
