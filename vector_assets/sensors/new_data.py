"""The new-data sensor: new tenants and changed tenant-days in the landing data."""

import hashlib
import json

import dagster as dg

from ..jobs import vectors_job
from ..partitions import MAX_PARTITIONS_PER_RUN, TENANTS, in_window, plan_runs, tenant_partitions
from ..resources import LandingResource
from ..runs import fail_dead_runs


def landing_state(landing: LandingResource) -> str:
    """Digest of the landing files' paths and contents (an edit that keeps size and modification
    time changes it too), and of the git repositories' HEADs: equal digests mean nothing to look at."""
    from ..landing import file_digest, git_head

    parts = [f"{p}:{file_digest(p)}" for p in landing.index().files()]
    parts += [f"{entry}:{git_head(entry.split('=', 1)[1])}" for entry in landing.git_repos]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


@dg.sensor(job=vectors_job, minimum_interval_seconds=60, description="New or changed landing files and new commits in configured repositories: registers new tenants and requests runs for the tenant-days that changed, nothing else.")
def new_data_sensor(context: dg.SensorEvaluationContext, landing: LandingResource):
    dead = fail_dead_runs(context.instance)
    if dead:
        context.log.warning(f"marked {len(dead)} runs failed whose process is gone (pool slots freed): {', '.join(dead)}")
    cursor = json.loads(context.cursor) if context.cursor else {}
    state = landing_state(landing)
    if cursor.get("state") == state:
        return dg.SkipReason("landing data unchanged")
    report = landing.refresh()  # re-parses only the files whose content changed
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    found = sorted({t for t, _ in report.changed_partitions} - known)
    changed = sorted(p for p in report.changed_partitions if in_window(p[1]))
    requests = [
        dg.RunRequest(
            run_key=f"{state}:{tenant}:{first}:{last}",
            tags={"dagster/asset_partition_range_start": f"{first}|{tenant}", "dagster/asset_partition_range_end": f"{last}|{tenant}"},
        )
        for tenant, first, last, _ in plan_runs(changed, MAX_PARTITIONS_PER_RUN, max_gap_days=1)
    ]
    context.log.info(f"{len(report.files_scanned)} files re-read, {len(changed)} tenant-days changed, {len(found)} new tenants")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[tenant_partitions.build_add_request(found)] if found else [],
        cursor=json.dumps({"state": state, "changed": len(changed)}),
    )
