"""The landing index asset: what the landing directory holds, and which tenants exist."""


import datetime as dt
import json

import dagster as dg

from .. import settings
from ..partitions import TENANTS, in_window
from ..resources import LandingResource


def _bad_lines_table(rows: list[tuple[str, int, str]], limit: int = 50) -> str:
    lines = ["| file | line | reason |", "|---|---:|---|"]
    lines += [f"| {path} | {line} | {reason} |" for path, line, reason in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"| … {len(rows) - limit} more in the quarantine file | | |")
    return "\n".join(lines)


@dg.asset(
    group_name="ingestion",
    kinds={"sqlite", "json"},
    description=(
        "Index of the landing directory's JSONL files (and exported git repositories) by tenant "
        "and day. Re-reads only files that changed, registers every tenant found as a dynamic "
        "partition, and reports lines that fit no tenant-day (malformed JSON, no tenant, no "
        "timestamp) and records outside the partition window."
    ),
)
def landing_index(context: dg.AssetExecutionContext, landing: LandingResource) -> dg.MaterializeResult:
    report = landing.refresh()
    index = landing.index()
    tenants = index.tenants()
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    new = [t for t in tenants if t not in known]
    if new:
        context.instance.add_dynamic_partitions(TENANTS, new)
    partitions = index.partitions(include_emptied=False)
    outside = [(t, d) for t, d in partitions if not in_window(d)]
    outside_lines = index.lines_outside(settings.start_date(), dt.datetime.now(dt.timezone.utc).date().isoformat()) if outside else []
    unsupported = index.unsupported_files()
    for path in unsupported:
        context.log.warning(f"{path}: compressed files are not read; decompress it into the landing directory")
    vanished = index.vanished_tenants()
    for tenant in vanished:
        context.log.warning(f"tenant {tenant} has no line in the landing data any more; its rows are kept unless a backfill deletes them (delete_vanished_tenants)")
    unattributed = index.unattributed()
    qdir = landing.quarantine_dir()
    qdir.mkdir(parents=True, exist_ok=True)
    with open(qdir / "_unattributed.jsonl", "w", encoding="utf-8") as fh:
        for path, line, reason in unattributed:
            fh.write(json.dumps({"file": path, "line": line, "reason": reason, "raw": index.line_text(path, line)[:2000]}) + "\n")
    for path, line, reason in unattributed[:20]:
        context.log.warning(f"{path}:{line}: {reason}")
    return dg.MaterializeResult(
        metadata={
            "files": len(index.files()),
            "files_rescanned": len(report.files_scanned),
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
            "quarantine_file": str(qdir / "_unattributed.jsonl"),
        }
    )
