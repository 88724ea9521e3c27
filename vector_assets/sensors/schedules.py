"""The daily schedule (yesterday for every tenant) and the daily audit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import dagster as dg

from ..assets.landing_index import record_refresh
from ..assets.vectors import empty_day_materializations
from ..checks.audit import audit_job
from ..ingest.landing import LandingIndex
from ..instance.runs import record_runless_materializations
from ..jobs import vectors_job
from ..partitions import TENANTS, make_key, plan_tenant_runs
from ..resources import EmbeddingModelResource, LandingResource, MilvusResource
from ..store.milvus_store import error_line


@dataclass
class DayPlan:
    """What one day needs for each tenant (:func:`plan_day`), tenants sorted in each list.

    Attributes:
        to_run: tenants whose tenant-day holds lines (or held lines once) that the collection
            does not hold as they are now: a run reads, embeds and writes them.
        empty: tenants without any line that day, ever: nothing to read, write or delete; the
            tenant-day is recorded as materialised (in sync, empty) without a run.
        in_sync: tenants whose tenant-day the collection holds from its current input (a run of
            the new-data sensor or a backfill wrote it): nothing to do.
    """

    day: str
    to_run: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    in_sync: list[str] = field(default_factory=list)


def plan_day(index: LandingIndex, store: str | None, tenants: list[str], day: str) -> DayPlan:
    """Sort ``tenants`` by what their tenant-day ``day`` (``YYYY-MM-DD``) needs, from the landing
    index and what it records as synced to the collection ``store`` (its
    :func:`~vector_assets.store.milvus_store.store_key`; None when the collection does not exist:
    every tenant-day with lines needs a run). Three queries of the state database whatever the
    number of tenants."""
    with_lines = {t for t, _ in index.partitions(tenants=None, start=day, end=day)}
    unsynced = {t for t, _ in index.unsynced_partitions(store, start=day, end=day)}
    plan = DayPlan(day)
    for tenant in sorted(tenants):
        if tenant in unsynced:
            plan.to_run.append(tenant)
        elif tenant in with_lines:
            plan.in_sync.append(tenant)
        else:
            plan.empty.append(tenant)
    return plan


@dg.schedule(
    job=vectors_job, cron_schedule="15 0 * * *", execution_timezone="UTC",
    description=(
        "Shortly after midnight UTC: yesterday's tenant-day of every tenant. A run only where the "
        "landing data holds lines the collection does not hold as they are (one run for many "
        "tenants: those between them are re-read and found unchanged); "
        "a tenant without records that day is recorded as materialised (empty, in sync) without a "
        "run; a tenant-day the new-data sensor already wrote is left as it is."
    ),
)
def daily_schedule(context: dg.ScheduleEvaluationContext, landing: LandingResource, milvus: MilvusResource, embedding_model: EmbeddingModelResource):
    yesterday = (context.scheduled_execution_time.astimezone(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()
    tenants = context.instance.get_dynamic_partitions(TENANTS)
    if not tenants:
        return dg.SkipReason("no tenants registered yet: materialise landing_index or run `vector-assets backfill`")
    # Lines that landed since the new-data sensor's last tick (recorded on landing_index).
    record_refresh(context.instance, landing, landing.refresh(), "daily_schedule", context.log)
    try:
        store = milvus.store_key(embedding_model.model_id)
    except Exception as err:  # noqa: BLE001 - Milvus unreachable: run every tenant-day with lines
        context.log.warning(f"Milvus at {milvus.uri} did not answer ({error_line(err)}): every tenant-day of {yesterday} with lines gets a run")
        store = None
    finally:
        milvus.reset_client()
    index = landing.index()
    plan = plan_day(index, store, tenants, yesterday)
    # Tenants to run share runs (issue #20 item 2: at 1,000 tenants one run each is 1,000 run
    # processes and model loads for a day): a run covers yesterday for a range of tenants in the
    # dimension's order, taking in the tenants between that are in sync or empty (re-read and
    # found unchanged; a tenant gone from the landing data is never taken in).
    runs = plan_tenant_runs(
        [(t, yesterday) for t in plan.to_run], tenants,
        may_include=(set(plan.in_sync) | set(plan.empty)) - index.vanished_among(plan.in_sync + plan.empty),
    )
    runless = [t for t in plan.empty if not any(r.covers(t, yesterday) for r in runs)]
    recorded = record_runless_materializations(context.instance, [m for tenant in runless for m in empty_day_materializations(tenant, yesterday, "daily_schedule")])
    context.log.info(
        f"{yesterday}: {len(plan.to_run)} tenants to run in {len(runs)} runs, {len(plan.empty)} without records "
        f"({recorded} materialisations recorded without a run), {len(plan.in_sync)} already in sync"
    )
    if not runs:
        return dg.SkipReason(f"{yesterday}: no tenant-day to write ({len(plan.empty)} tenants without records recorded as materialised, {len(plan.in_sync)} already in sync)")
    return [
        dg.RunRequest(run_key=f"{r.tenants[0]}|{yesterday}", partition_key=make_key(r.tenants[0], yesterday)) if len(r.tenants) == 1
        else dg.RunRequest(run_key=f"{r.tenants[0]}..{r.tenants[-1]}|{yesterday}", tags=r.tags())
        for r in runs
    ]


@dg.schedule(job=audit_job, cron_schedule="30 1 * * *", execution_timezone="UTC", description="Daily audit of stored vectors; failures reach the alert sensor.")
def audit_schedule(context: dg.ScheduleEvaluationContext):
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())
