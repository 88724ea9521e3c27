"""What recording tenant-days without records costs on Postgres (issue #20 item 2), split by part.

Records T x D empty tenant-days as the daily schedule does (three materialisations each, outside
any run: ``vector_assets.instance.runs.record_runless_materializations``, batched as Dagster
batches events) on a fresh database of the local cluster (``scripts/local_postgres.sh``, as
root), and times the parts of dagster-postgres' ``store_event_batch``: the events' serialisation
(``_event_rows``: the rows of ``event_logs``), the asset-event tags (``_store_asset_event_tags``; a
multi-partition key writes one per dimension) and the rest (the INSERT, the asset's last-event
row). Prints ms per tenant-day.

Usage: python benchmarks/empty_days.py [--tenants 10] [--days 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import REPO, bench_instance  # noqa: E402

sys.path.insert(0, str(REPO))

PARTS = ("_event_rows", "_store_asset_event_tags", "store_event_batch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--days", type=int, default=100)
    args = parser.parse_args()
    import vector_assets.definitions  # noqa: F401  (the event batching every code location process sets)
    from vector_assets.assets.vectors import empty_day_materializations
    from vector_assets.instance.runs import record_runless_materializations

    with bench_instance("postgres") as instance:
        tenants = [f"org/repo-{i}" for i in range(args.tenants)]
        instance.add_dynamic_partitions("tenants", tenants)
        days = [(dt.date(2023, 1, 1) + dt.timedelta(d)).isoformat() for d in range(args.days)]
        materializations = [m for t in tenants for d in days for m in empty_day_materializations(t, d, "benchmark")]
        storage = instance.event_log_storage
        spent = dict.fromkeys(PARTS, 0.0)

        def timed(name):
            original = getattr(storage, name)

            def wrapper(*a, **k):
                started = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    spent[name] += time.perf_counter() - started

            return mock.patch.object(storage, name, wrapper)

        with timed(PARTS[0]), timed(PARTS[1]), timed(PARTS[2]):
            started = time.perf_counter()
            recorded = record_runless_materializations(instance, materializations)
            total = time.perf_counter() - started
    n = len(tenants) * len(days)
    rest = spent["store_event_batch"] - spent["_event_rows"] - spent["_store_asset_event_tags"]
    print(f"{n} tenant-days, {recorded} materialisations on Postgres: {1000 * total / n:.3f} ms per tenant-day in all")
    print(f"  serialisation {1000 * spent['_event_rows'] / n:.3f} ms, asset-event tags {1000 * spent['_store_asset_event_tags'] / n:.3f} ms,"
          f" INSERT and the rest of store_event_batch {1000 * rest / n:.3f} ms, outside the storage {1000 * (total - spent['store_event_batch']) / n:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
