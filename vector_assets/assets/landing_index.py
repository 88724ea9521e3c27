"""The landing index asset: what the landing directory holds, and which tenants exist."""


import json

import dagster as dg

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
            "unattributed_lines": len(unattributed),
            "unattributed": dg.MetadataValue.md(_bad_lines_table(unattributed)) if unattributed else "none",
            "quarantine_file": str(qdir / "_unattributed.jsonl"),
        }
    )
