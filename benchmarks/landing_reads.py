"""Reading the landing index at organisation scale (issue #20 item 2): the queries a run makes of
the state database to find its tenant-days' lines.

Builds ``benchmarks/org_scale.py``'s synthetic landing data (the real records re-keyed over
T tenants x D days), indexes it into a fresh state database (SQLite, or the PostgreSQL of
``dagster.postgres.yaml``), plans the runs as ``vector-assets backfill`` does, and times for
each run's tenant-days :meth:`LandingIndex.fingerprints` and :meth:`LandingIndex.read_partitions`
(the index reads plus the byte-range reads of the lines), then the same for a daily run (every
tenant, one day). No Dagster run is made: these are the reads alone, seconds in all and
milliseconds per tenant-day.

Usage:
    python benchmarks/landing_reads.py --grid 1000x365 [--storage sqlite|postgres] [--records N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from org_scale import FIRST_DAY, synthetic_landing  # noqa: E402
from pipeline import bench_instance  # noqa: E402


def _days(first: str, last: str) -> list[str]:
    import datetime as dt

    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def measure(tenants: int, days: int, storage: str, limit: int | None) -> dict:
    import datetime as dt

    from vector_assets.partitions import MAX_PARTITIONS_PER_RUN, plan_tenant_runs
    from vector_assets.resources import LandingResource

    work = Path(tempfile.mkdtemp(prefix="va-reads-"))
    (work / "landing").mkdir()
    records, keys = synthetic_landing(work / "landing" / "synthetic.jsonl", tenants, days, limit)
    out = {"grid": f"{tenants}x{days}", "storage": storage, "records": records, "tenant_days_with_records": len(keys)}
    with bench_instance(storage):
        from vector_assets import state

        state._ENGINES.clear()
        landing = LandingResource(landing_dir=str(work / "landing"), state_dir=str(work / "home"))
        started = time.perf_counter()
        landing.refresh()
        out["refresh_s"] = round(time.perf_counter() - started, 2)
        index = landing.index()
        order = sorted(index.tenants())
        unsynced = index.unsynced_partitions(None)
        runs = plan_tenant_runs(unsynced, order, MAX_PARTITIONS_PER_RUN, may_include=set(order))
        run_keys = [[(t, d) for t in run.tenants for d in _days(run.first, run.last)] for run in runs]
        last = (FIRST_DAY + dt.timedelta(days=days - 1)).isoformat()
        shapes = {"backfill runs": run_keys, "daily run": [[(t, last) for t in order]]}
        for label, batches in shapes.items():
            n = sum(len(b) for b in batches)
            for name, call in (("fingerprints", index.fingerprints), ("read_partitions", index.read_partitions)):
                started = time.perf_counter()
                found = sum(len(call(batch)) for batch in batches)
                spent = time.perf_counter() - started
                assert found == n, (label, name, found, n)
                out[f"{label}: {name} s"] = round(spent, 2)
                out[f"{label}: {name} ms/tenant-day"] = round(1000 * spent / n, 4)
            out[f"{label}: tenant-days"] = n
            out[f"{label}: runs"] = len(batches)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="1000x365", help="TxD")
    parser.add_argument("--storage", default="postgres", choices=["sqlite", "postgres"])
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    tenants, days = (int(x) for x in args.grid.lower().split("x"))
    with contextlib.redirect_stdout(sys.stderr):
        result = measure(tenants, days, args.storage, args.records)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
