"""Search quality through the product on ../shared/data/eval_pr_commits (BEIR layout).

Indexes the four commit tenants of ../shared/data/git_commits.jsonl with `vector-assets
backfill` (a landing directory holding that file alone, its own Milvus Lite database and
DAGSTER_HOME under results/eval/), queries every pull-request title with `vector-assets search
--queries`, and scores recall@10 and nDCG@10 against the qrels, for the 817 non-trivial queries
and for all 2,548. Prints a table and writes results/search_quality.json.

Reference (exact search, all-MiniLM-L6-v2, ../shared/data/README.md): recall@10 0.607 /
nDCG@10 0.553 on non-trivial queries, 0.801 / 0.765 on all.

Scores each search mode (dense, bm25, hybrid; ``--modes``) on the same index.

Usage: python benchmarks/search_quality.py [--shared ../shared/data] [--workers 2] [--keep] [--work DIR] [--modes M...]
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = {"non-trivial": (0.607, 0.553), "all": (0.801, 0.765)}


def score(run: dict[str, list[str]], qrels: dict[str, set[str]], ids: list[str], k: int = 10) -> tuple[float, float]:
    """Mean recall@k and nDCG@k (binary relevance) over ``ids``."""
    recall = ndcg = 0.0
    for qid in ids:
        relevant = qrels[qid]
        ranked = run.get(qid, [])[:k]
        recall += sum(1 for d in ranked if d in relevant) / len(relevant)
        dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked) if d in relevant)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
        ndcg += dcg / idcg
    return recall / len(ids), ndcg / len(ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="reuse the existing index in the work directory (the backfill then writes only what changed)")
    parser.add_argument("--modes", nargs="+", default=["dense", "bm25", "hybrid"], choices=["dense", "bm25", "hybrid"], help="search modes scored (default all three)")
    parser.add_argument("--fusion", nargs="+", default=["rrf"], help="hybrid fusions scored (rrf, weighted:W); each is a row of its own")
    parser.add_argument("--work", default=str(REPO / "results" / "eval"), help="work directory (default results/eval); e.g. results/bench_backfill with --keep to search the full-dataset backfill of benchmarks/pipeline.py")
    args = parser.parse_args()
    shared = Path(args.shared).resolve()
    work = Path(args.work).resolve()
    if work.exists() and not args.keep:
        subprocess.run([sys.executable, "-m", "vector_assets.cli", "server", "stop"], env={**os.environ, "VECTOR_ASSETS_MILVUS_URI": str(work / "home" / "milvus.db")})
        shutil.rmtree(work)
    (work / "landing").mkdir(parents=True, exist_ok=True)
    link = work / "landing" / "git_commits.jsonl"
    if not link.exists():
        link.symlink_to(shared / "git_commits.jsonl")
    env = {
        **os.environ,
        "VECTOR_ASSETS_LANDING_DIR": str(work / "landing"),
        "VECTOR_ASSETS_HOME": str(work / "home"),
        "VECTOR_ASSETS_MILVUS_URI": str(work / "home" / "milvus.db"),
        "DAGSTER_HOME": str(work / "dagster_home"),
    }
    exe = [sys.executable, "-m", "vector_assets.cli"]
    started = time.perf_counter()
    backfill = subprocess.run([*exe, "backfill", "--workers", str(args.workers)], env=env, capture_output=True, text=True)
    backfill_s = time.perf_counter() - started
    summary = re.search(r"^backfill: .*$", backfill.stdout, re.M)
    print(summary.group(0) if summary else backfill.stdout[-2000:] + backfill.stderr[-2000:])
    if backfill.returncode != 0:
        # Exit 1 also means some tenant-day failed a check at ERROR (the rows are written): the
        # index is complete unless a partition failed.
        if not summary or "failed_partitions=0 " not in summary.group(0):
            return 1
        print("(the backfill exited non-zero for failed checks; every partition was written)")

    queries = [json.loads(l) for l in open(shared / "eval_pr_commits" / "queries.jsonl", encoding="utf-8")]
    qfile = work / "queries.jsonl"
    with open(qfile, "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps({"id": q["_id"], "tenant": q["tenant"], "text": q["text"]}) + "\n")
    qrels: dict[str, set[str]] = defaultdict(set)
    for line in open(shared / "eval_pr_commits" / "qrels.jsonl", encoding="utf-8"):
        item = json.loads(line)
        if item["score"] > 0:
            qrels[item["query_id"]].add(item["corpus_id"])
    sets = {"non-trivial": [q["_id"] for q in queries if not q["trivial"]], "all": [q["_id"] for q in queries]}
    results = {"backfill_wall_s": round(backfill_s, 1), "queries": len(queries), "backfill_summary": summary.group(0) if summary else ""}
    print(f"\n{'mode':<7} {'queries':<12} {'n':>5} {'recall@10':>10} {'ref':>6} {'nDCG@10':>8} {'ref':>6}")
    search_s = 0.0
    runs = [(m, "rrf") for m in args.modes if m != "hybrid"] + [("hybrid", f) for f in args.fusion if "hybrid" in args.modes]
    for mode, fusion in runs:
        started = time.perf_counter()
        label = mode if fusion == "rrf" else f"{mode}/{fusion}"
        out = work / f"hits_{label.replace('/', '_').replace(':', '')}.jsonl"
        # The corpus of eval_pr_commits is the non-merge commits: merge commits (which quote the
        # pull-request title) are left out with a kind filter, as the protocol's corpus does.
        search = subprocess.run([*exe, "search", "--queries", str(qfile), "-k", "10", "--kind", "git_commit", "--mode", mode, "--fusion", fusion, "--output", str(out)], env=env, capture_output=True, text=True)
        search_s = time.perf_counter() - started
        if search.returncode != 0:
            print(search.stderr[-2000:])
            return 1
        run = {}
        for line in open(out, encoding="utf-8"):
            item = json.loads(line)
            run[item["id"]] = [h["id"] for h in item["hits"]]
        results[label] = {"search_wall_s": round(search_s, 1)}
        for name, ids in sets.items():
            recall, ndcg = score(run, qrels, ids)
            ref_r, ref_n = REFERENCE[name]
            print(f"{label:<7} {name:<12} {len(ids):>5} {recall:>10.3f} {ref_r:>6.3f} {ndcg:>8.3f} {ref_n:>6.3f}", flush=True)
            results[label][name] = {"n": len(ids), "recall@10": round(recall, 4), "ndcg@10": round(ndcg, 4), "reference_recall@10": ref_r, "reference_ndcg@10": ref_n}
    print(f"\nbackfill {backfill_s:.0f}s, {len(queries)} queries searched in {search_s:.0f}s")
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "search_quality.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
