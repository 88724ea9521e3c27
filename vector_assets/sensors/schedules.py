"""The daily schedule (yesterday for every tenant) and the daily audit."""

import datetime as dt

import dagster as dg

from ..checks.audit import audit_job
from ..jobs import vectors_job
from ..partitions import TENANTS, make_key


@dg.schedule(job=vectors_job, cron_schedule="15 0 * * *", execution_timezone="UTC", description="Shortly after midnight UTC: yesterday's tenant-day of every tenant, one run per tenant (the fewest the backfill policy allows: a run covers one tenant).")
def daily_schedule(context: dg.ScheduleEvaluationContext):
    yesterday = (context.scheduled_execution_time.astimezone(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()
    tenants = context.instance.get_dynamic_partitions(TENANTS)
    if not tenants:
        return dg.SkipReason("no tenants registered yet: materialise landing_index or run `vector-assets backfill`")
    return [
        dg.RunRequest(run_key=f"{tenant}|{yesterday}", partition_key=make_key(tenant, yesterday))
        for tenant in sorted(tenants)
    ]


@dg.schedule(job=audit_job, cron_schedule="30 1 * * *", execution_timezone="UTC", description="Daily audit of stored vectors; failures reach the alert sensor.")
def audit_schedule(context: dg.ScheduleEvaluationContext):
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())
