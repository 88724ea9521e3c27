"""The landing index asset: what the landing directory holds, and which tenants exist.

Every refresh of the index is recorded on this asset where the UI shows it: the asset's own
materialisation, and a runless materialisation for each refresh made elsewhere that changed
something (``new_data_sensor``'s, the tenant-day step's; :func:`record_refresh`), each with
the counts and the lines that fit no tenant-day. All of them carry the same data version
(:data:`INDEX_DATA_VERSION`, the index's layout): a refresh does not make every tenant-day
"Unsynced" in the UI. Which tenant-days' lines changed is the landing index's own business
(content hashes per file and per line); ``new_data_sensor`` runs exactly those.
"""


import datetime as dt
import dagster as dg
from dagster._core.definitions.data_version import CODE_VERSION_TAG, DATA_VERSION_IS_USER_PROVIDED_TAG, DATA_VERSION_TAG

from .. import settings
from ..checks.evaluate import md_cell
from ..keys import LANDING_INDEX
from ..ingest.records import BadRecord
from ..partitions import TENANTS, in_window
from ..resources import LandingResource


def _bad_lines_table(rows: list[tuple[str, int, str]], limit: int = 50) -> str:
    lines = ["| file | line | reason |", "|---|---:|---|"]
    lines += [f"| {md_cell(path)} | {line} | {md_cell(reason)} |" for path, line, reason in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"| … {len(rows) - limit} more: `vector-assets quarantine --unattributed` | | |")
    return "\n".join(lines)


#: Code and data version of every recorded refresh of the landing index (see the module docstring).
INDEX_DATA_VERSION = "landing-index-3"


def refresh_metadata(instance: dg.DagsterInstance, landing: LandingResource, report, log=None) -> dict:
    """Metadata of one refresh of the landing index (``report``: the refresh's
    :class:`~vector_assets.ingest.landing.RefreshReport`): counts, tenants registered now (new tenants
    are added to the dynamic partitions here), the lines that fit no tenant-day (also written
    to the quarantine reports of the state database, tenant ``""``) and records outside the window.
    ``log`` (a Dagster logger) gets a warning per problem.
    """
    index = landing.index()
    tenants = index.tenants()
    known = set(instance.get_dynamic_partitions(TENANTS))
    new = [t for t in tenants if t not in known]
    if new:
        instance.add_dynamic_partitions(TENANTS, new)
    partitions = index.partitions(include_emptied=False)
    outside = [(t, d) for t, d in partitions if not in_window(d)]
    outside_lines = index.lines_outside(settings.start_date(), dt.datetime.now(dt.timezone.utc).date().isoformat()) if outside else []
    unsupported = index.unsupported_files()
    vanished = index.vanished_tenants()
    unattributed = index.unattributed()
    index.write_quarantine({("", ""): [BadRecord(path, line, reason, index.line_text(path, line)[:2000]) for path, line, reason in unattributed]})
    if log is not None:
        for path in unsupported:
            log.warning(f"{path}: compressed files are not read; decompress it into the landing directory")
        for tenant in vanished:
            log.warning(f"tenant {tenant} has no line in the landing data any more; its rows are kept unless a backfill deletes them (delete_vanished_tenants)")
        for path, line, reason in unattributed[:20]:
            log.warning(f"{path}:{line}: {reason}")
    return {
        "files": len(index.files()),
        "files_rescanned": len(report.files_scanned),
        "files_removed": len(report.files_removed),
        "lines_rescanned": report.lines_scanned,
        "lines_indexed": index.count_lines(),
        "tenants": len(tenants),
        "tenants_registered": len(new),
        "tenant_days": len(partitions),
        "tenant_days_changed": len(report.changed_partitions),
        "tenant_days_outside_window": len(outside),
        "lines_outside_window": len(outside_lines),
        "outside_window": dg.MetadataValue.md(_bad_lines_table([(p, n, f"{t}|{d} is outside the partition window (start {settings.start_date()})") for p, n, t, d in outside_lines])) if outside_lines else "none",
        "unsupported_files": len(unsupported),
        "unsupported": ", ".join(str(p) for p in unsupported[:20]) or "none",
        "vanished_tenants": ", ".join(vanished) or "none",
        "unattributed_lines": len(unattributed),
        "unattributed": dg.MetadataValue.md(_bad_lines_table(unattributed)) if unattributed else "none",
        "quarantine_report": "vector-assets quarantine --unattributed",
    }


def refresh_event(instance: dg.DagsterInstance, landing: LandingResource, report, refreshed_by: str, log=None) -> dg.AssetMaterialization | None:
    """The materialisation to record for a refresh made outside the asset's own step
    (``refreshed_by``: who refreshed it), or None when the refresh changed nothing."""
    if not (report.files_scanned or report.files_removed or report.changed_partitions):
        return None
    metadata = refresh_metadata(instance, landing, report, log)
    metadata["refreshed_by"] = refreshed_by
    return dg.AssetMaterialization(
        asset_key=LANDING_INDEX,
        metadata=metadata,
        tags={DATA_VERSION_TAG: INDEX_DATA_VERSION, DATA_VERSION_IS_USER_PROVIDED_TAG: "true", CODE_VERSION_TAG: INDEX_DATA_VERSION},
    )


def record_refresh(instance: dg.DagsterInstance, landing: LandingResource, report, refreshed_by: str, log=None) -> bool:
    """Record a refresh made outside the asset's own step on the asset (a runless
    materialisation, :func:`refresh_event`). Returns whether one was recorded."""
    event = refresh_event(instance, landing, report, refreshed_by, log)
    if event is not None:
        instance.report_runless_asset_event(event)
    return event is not None


@dg.asset(
    group_name="ingestion",
    kinds={"sql", "json"},
    code_version=INDEX_DATA_VERSION,
    description=(
        "Index of the landing directory's JSONL files (and exported git repositories) by tenant "
        "and day. Re-reads only files that changed, registers every tenant found as a dynamic "
        "partition, and reports lines that fit no tenant-day (malformed JSON, no tenant, no "
        "timestamp) and records outside the partition window. Refreshes made by new_data_sensor "
        "and by tenant-day runs are recorded here too (metadata refreshed_by)."
    ),
)
def landing_index(context: dg.AssetExecutionContext, landing: LandingResource) -> dg.MaterializeResult:
    report = landing.refresh()
    metadata = refresh_metadata(context.instance, landing, report, context.log)
    return dg.MaterializeResult(metadata={**metadata, "refreshed_by": "landing_index"}, data_version=dg.DataVersion(INDEX_DATA_VERSION))
