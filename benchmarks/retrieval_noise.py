"""Run-to-run noise of the golden-query figures (issue #21 item 2): what the retrieval_quality
thresholds must stand above.

The bundled sample (``make demo``'s landing data, 7 tenants) is backfilled ``--builds`` times,
each into a fresh Milvus Lite database and state (the HNSW graph is built anew: insertion order
and the index build differ), and ``vector-assets eval --json`` reads every tenant's golden
queries on each. Printed: per tenant and mode, recall@10 and MRR@10 of each build, and the
largest difference between builds (the noise an index rebuild brings); an unchanged collection
evaluated twice differs by nothing (``tests/test_retrieval_quality.py``).

Usage: python benchmarks/retrieval_noise.py [--builds 3] [--json results/retrieval_noise.json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "vector_assets.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    builds = []
    for i in range(args.builds):
        with tempfile.TemporaryDirectory(prefix="va-noise-") as work:
            env = {**os.environ, "VECTOR_ASSETS_HOME": f"{work}/home", "DAGSTER_HOME": f"{work}/dagster", "VECTOR_ASSETS_MILVUS_URI": f"{work}/home/milvus.db"}
            env.pop("VECTOR_ASSETS_LANDING_DIR", None)
            Path(f"{work}/dagster").mkdir()
            (Path(work) / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
            done = subprocess.run([*CLI, "backfill"], env=env, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
            out = subprocess.run([*CLI, "eval", "--json"], env=env, capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
            builds.append({c["tenant"]: c for c in json.loads(out.stdout)})
            subprocess.run([*CLI, "server", "stop"], env=env, capture_output=True, cwd=REPO)
        print(f"build {i + 1}: {len(builds[-1])} tenants", file=sys.stderr, flush=True)
    rows, worst = [], 0.0
    print("| tenant | queries | mode | recall@10 per build | MRR@10 per build | largest difference |\n|---|---:|---|---|---|---:|")
    for tenant in sorted(builds[0]):
        for mode in builds[0][tenant]["modes"]:
            recalls = [b[tenant]["modes"][mode]["recall_at_10"][0] for b in builds]
            mrrs = [b[tenant]["modes"][mode]["mrr_at_10"][0] for b in builds]
            diff = max(max(recalls) - min(recalls), max(mrrs) - min(mrrs))
            worst = max(worst, diff)
            rows.append({"tenant": tenant, "mode": mode, "queries": builds[0][tenant]["queries"], "recall": recalls, "mrr": mrrs, "largest_difference": round(diff, 4)})
            print(f"| {tenant} | {builds[0][tenant]['queries']} | {mode} | {' / '.join(f'{r:.3f}' for r in recalls)} | {' / '.join(f'{m:.3f}' for m in mrrs)} | {diff:.4f} |")
    print(f"\nlargest difference between {args.builds} builds, any tenant and mode: {worst:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"builds": args.builds, "rows": rows, "largest_difference": round(worst, 4)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
