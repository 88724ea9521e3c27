"""The new-data sensor: new tenants and changed tenant-days in the landing data."""

import hashlib
import json

import dagster as dg

from ..assets.landing_index import refresh_event
from ..jobs import vectors_job
from ..partitions import MAX_PARTITIONS_PER_RUN, TENANTS, in_window, plan_runs, tenant_partitions
from ..resources import LandingResource
from ..runs import fail_dead_runs


def landing_state(landing: LandingResource) -> str:
    """Digest of the indexed files' content hashes (as the last refresh recorded them; git
    exports follow their repository's HEAD): equal digests mean nothing to look at."""
    return hashlib.blake2b(landing.index().content_state().encode(), digest_size=16).hexdigest()


@dg.sensor(job=vectors_job, minimum_interval_seconds=60, description="New or changed landing files and new commits in configured repositories: registers new tenants and requests runs for the tenant-days that changed, nothing else.")
def new_data_sensor(context: dg.SensorEvaluationContext, landing: LandingResource):
    dead = fail_dead_runs(context.instance)
    if dead:
        context.log.warning(f"marked {len(dead)} runs failed whose process is gone (pool slots freed): {', '.join(dead)}")
    cursor = json.loads(context.cursor) if context.cursor else {}
    # One pass over the files: the refresh hashes each (and re-parses only those that changed);
    # the state is read from the hashes it recorded.
    report = landing.refresh()
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    # The refresh's counts and bad lines are recorded on landing_index (when it changed anything).
    refreshed = refresh_event(context.instance, landing, report, "new_data_sensor", context.log)
    state = landing_state(landing)
    if cursor.get("state") == state:
        return dg.SensorResult(skip_reason="landing data unchanged", asset_events=[refreshed] if refreshed else [])
    found = sorted({t for t, _ in report.changed_partitions} - known)
    changed = sorted(p for p in report.changed_partitions if in_window(p[1]))
    requests = [
        dg.RunRequest(
            run_key=f"{state}:{tenant}:{first}:{last}",
            tags={"dagster/asset_partition_range_start": f"{first}|{tenant}", "dagster/asset_partition_range_end": f"{last}|{tenant}"},
        )
        for tenant, first, last, _ in plan_runs(changed, MAX_PARTITIONS_PER_RUN)
    ]
    context.log.info(f"{len(report.files_scanned)} files re-read, {len(changed)} tenant-days changed, {len(found)} new tenants")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[tenant_partitions.build_add_request(found)] if found else [],
        cursor=json.dumps({"state": state, "changed": len(changed)}),
        asset_events=[refreshed] if refreshed else [],
    )
