"""A backfill launched from the Dagster UI over many tenants: how many runs it makes and how long
it takes (issue #20 item 2: "runs that cover many tenants", for the UI's backfills).

Starts dagster-webserver and dagster-daemon on a fresh instance (the project's dagster.yaml,
SQLite storage, Milvus Lite) with the bundled sample (``data/sample``, 7 tenants) as the landing
data, materialises ``landing_index_job`` (it registers the tenants), then launches a backfill of
the three tenant-day assets over every tenant x the days ``--start``..``--end`` through the
webserver's GraphQL API, as the UI's dialog does (``launchPartitionBackfill``), and waits for it
to end. Prints one JSON line: tenant-days targeted, runs, their partition ranges, the backfill's
wall time (launch to end) and each run's duration.

Run it from a worktree of another commit with ``PYTHONPATH=<worktree>`` (and ``--repo
<worktree>``) to compare with that commit's ranges.

With ``--grid TxD`` the landing data is ``benchmarks/org_scale.py``'s instead: ``--records``
real records re-keyed over T synthetic tenants x D days from 2023-01-01, and the backfill covers
all of them.

Usage: python benchmarks/ui_backfill.py [--start 2025-06-01] [--end 2025-06-30] [--grid TxD [--records N]] [--repo DIR]
"""

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="2025-06-01")
    parser.add_argument("--end", default="2025-06-30")
    parser.add_argument("--grid", help="TxD: org_scale.py's synthetic landing data over T tenants x D days")
    parser.add_argument("--records", type=int, default=2000, help="with --grid: real records re-keyed over the grid")
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose code the webserver and daemon load (default: this one)")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(REPO))
    from tests import test_ui  # the UI fixture's processes and GraphQL client, as the UI test runs them

    test_ui.REPO = repo  # the webserver's and the daemon's working directory and dagster.yaml

    first, last = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    if args.grid:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import org_scale

        grid_tenants, grid_days = (int(x) for x in args.grid.split("x"))
        first, last = org_scale.FIRST_DAY, org_scale.FIRST_DAY + dt.timedelta(days=grid_days - 1)

    def landing(folder: Path) -> None:
        if args.grid:
            org_scale.synthetic_landing(folder / "org.jsonl", grid_tenants, grid_days, args.records)
            return
        for path in sorted((repo / "data" / "sample").glob("*.jsonl")):
            (folder / path.name).symlink_to(path)

    days = [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    with tempfile.TemporaryDirectory(prefix="va-ui-backfill-") as root, test_ui.running_ui(Path(root), landing) as ui:
        assert ui.wait_run(ui.launch_job("landing_index_job")) == "SUCCESS"
        keys = ui.gql("""{ assetNodeOrError(assetKey: {path: ["milvus_vectors"]}) { ... on AssetNode { partitionKeysByDimension { name partitionKeys } } } }""")
        dims = {d["name"]: d["partitionKeys"] for d in keys["assetNodeOrError"]["partitionKeysByDimension"]}
        tenants = dims["tenant"]
        names = [f"{day}|{tenant}" for tenant in tenants for day in days]
        started = time.perf_counter()
        backfill = ui.backfill(names, timeout=3600)
        wall = time.perf_counter() - started
        runs = sorted(backfill["runs"], key=lambda r: r["startTime"])
        out = {
            "repo": str(repo), "tenants": len(tenants), "days": len(days), "tenant_days": len(names), "status": backfill["status"],
            "runs": len(runs), "wall_s": round(wall, 1),
            "run_s": [round(r["endTime"] - r["startTime"], 1) for r in runs],
            "ranges": [next(f"{t['value']}" for t in r["tags"] if t["key"] == "dagster/asset_partition_range_start") + " .. " + next(t["value"] for t in r["tags"] if t["key"] == "dagster/asset_partition_range_end") for r in runs],
            "materialised": [c["numPartitionsMaterialized"] for c in backfill["assetBackfillData"]["assetBackfillStatuses"]],
        }
    print(json.dumps(out))
    return 0 if out["status"] == "COMPLETED_SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
