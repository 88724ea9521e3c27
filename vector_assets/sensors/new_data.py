"""The new-data sensor: new tenants and changed tenant-days in the landing data."""

import json

import dagster as dg

from ..assets.landing_index import refresh_event
from ..jobs import vectors_job
from ..partitions import MAX_PARTITIONS_PER_RUN, TENANTS, in_window, plan_tenant_runs, tenant_partitions
from ..resources import LandingResource
from ..instance.runs import fail_dead_runs


@dg.sensor(job=vectors_job, minimum_interval_seconds=60, description="New or changed landing files and new commits in configured repositories: registers new tenants and requests runs for the tenant-days whose input changed since its last tick (whichever refresh found the change), nothing else.")
def new_data_sensor(context: dg.SensorEvaluationContext, landing: LandingResource):
    dead = fail_dead_runs(context.instance)
    if dead:
        context.log.warning(f"marked {len(dead)} runs failed whose process is gone (pool slots freed): {', '.join(dead)}")
    cursor = json.loads(context.cursor) if context.cursor else {}
    # One pass over the files: the refresh hashes each (and re-parses only those that changed).
    report = landing.refresh()
    order = context.instance.get_dynamic_partitions(TENANTS)
    known = set(order)
    # The refresh's counts and bad lines are recorded on landing_index (when it changed anything).
    refreshed = refresh_event(context.instance, landing, report, "new_data_sensor", context.log)
    index = landing.index()
    generation, seq = index.change_position()
    if cursor.get("generation") == generation and "seq" in cursor:
        # Every change since the last tick, whoever's refresh found it: a run of another tenant
        # (each run refreshes the index first) or the CLI may have found a fixed line first.
        changes = index.changed_since(int(cursor["seq"]))
    else:
        changes = set(report.changed_partitions)  # the first tick, or a rebuilt index: what this refresh found
    state = {"generation": generation, "seq": seq}
    if not changes:
        return dg.SensorResult(skip_reason="landing data unchanged since the last tick", cursor=json.dumps(state), asset_events=[refreshed] if refreshed else [])
    found = sorted({t for t, _ in changes} - known)
    changed = sorted(p for p in changes if in_window(p[1]))
    # Changed tenants next to each other in the tenant dimension share a run where that is
    # cheaper (partitions.plan_tenant_runs); tenants between them are never taken in, nor new ones.
    requests = [
        dg.RunRequest(run_key=f"{generation}:{seq}:{run.tenants[0]}:{run.tenants[-1]}:{run.first}:{run.last}", tags=run.tags())
        for run in plan_tenant_runs(changed, order, MAX_PARTITIONS_PER_RUN)
    ]
    context.log.info(f"{len(report.files_scanned)} files re-read, {len(changed)} tenant-days changed since the last tick, {len(found)} new tenants")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[tenant_partitions.build_add_request(found)] if found else [],
        cursor=json.dumps({**state, "changed": len(changed)}),
        asset_events=[refreshed] if refreshed else [],
    )
