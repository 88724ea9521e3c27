"""Profile what recording a tenant-day without records costs: the runs of
``benchmarks/pipeline.py recording`` (pallets/flask, its records on the first day; a run over 10
days, then one over DAYS days under cProfile), printing the per-tenant-day figure and the
profile's largest entries (cumulative and own time).

Usage: .venv/bin/python benchmarks/profile_empty_days.py {sqlite,postgres} [DAYS=1000] [--dump FILE]
The profiler roughly doubles the wall time; the figure is for comparing shares, not for the
README's per-tenant-day table (``pipeline.py recording`` measures that).
"""
import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg  # noqa: E402

import pipeline as bench  # noqa: E402
import vector_assets.definitions  # noqa: E402,F401  (the event batching every code location sets)
from vector_assets.assets import landing_index  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage", choices=["sqlite", "postgres"])
    parser.add_argument("days", type=int, nargs="?", default=1000)
    parser.add_argument("--dump", help="write the cProfile stats here")
    args = parser.parse_args()
    tenant = "pallets/flask"
    flask = [t for t in bench.load_texts(["git_commits.jsonl"]) if t.tenant == tenant]
    first = max({t.day for t in flask}, key=lambda d: sum(t.day == d for t in flask))
    _, resources, _ = bench._commit_workspace(tenant, {first})
    with bench.bench_instance(args.storage) as instance:
        dg.materialize([landing_index], resources=resources, instance=instance)

        def run(days: int) -> float:
            return bench.run_days(instance, resources, tenant, first, days)[0]

        run(1)
        small = run(10)
        profiler = cProfile.Profile()
        profiler.enable()
        large = run(args.days)
        profiler.disable()
    print(f"10 days {small:.2f}s, {args.days} days {large:.2f}s -> {(large - small) / (args.days - 10) * 1000:.2f} ms/tenant-day (profiled)")
    if args.dump:
        profiler.dump_stats(args.dump)
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
