"""Do the golden-query figures move with the labelled sets when search settings change?
(issue #21: "the correlation over at least four settings").

On a collection holding the whole of ``../shared/data`` (``vector-assets backfill`` with
``VECTOR_ASSETS_LANDING_DIR`` on it), for each search setting (mode, and the hybrid fusion):

* **golden**: mean recall@10 / MRR@10 over the tenants' golden queries
  (:mod:`vector_assets.serving.retrieval`, mined from the landing data, no labels);
* **eval_pr_commits**: recall@10 of pull-request titles against their commits (the labelled
  set; all 2,548 queries and the 817 non-trivial ones; the ``git_commit`` kind, as
  ``benchmarks/search_quality.py`` searches);
* **long issues**: recall@10 of the known-item sentences of long Jira and Bugzilla issues
  (``benchmarks/long_issues.py``'s set).

Prints a row per setting and Pearson's and Spearman's correlation of the golden recall with each
labelled figure over the settings.

Usage (``VECTOR_ASSETS_HOME`` / ``VECTOR_ASSETS_LANDING_DIR`` of that backfill in the environment)::

    python benchmarks/golden_correlation.py [--shared ../shared/data] [--labelled EARLIER_OUTPUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SETTINGS = [("dense", "rrf"), ("bm25", "rrf"), ("hybrid", "rrf"), ("hybrid", "weighted:0.2"), ("hybrid", "weighted:0.5"), ("hybrid", "weighted:0.8")]


def recall_at_10(hits, answers) -> float:
    return float(np.mean([len({h.id for h in found[:10]} & relevant) / len(relevant) for found, relevant in zip(hits, answers)])) if answers else 0.0


def by_tenant(items):
    out = defaultdict(list)
    for item in items:
        out[item["tenant"]].append(item)
    return out


def searched(client, collection, model, groups, mode, fusion, kinds=None):
    """``(hits, answers)`` of every query of ``groups`` (``{tenant: [{"text", "answers"}]}``)."""
    from vector_assets.serving.search import search

    hits, answers = [], []
    for tenant, items in groups.items():
        found = search(client, collection, model, tenant, [q["text"] for q in items], k=10, mode=mode, fusion=fusion, kinds=kinds, check_tenant=False, ensure_loaded=False)
        hits += found
        answers += [q["answers"] for q in items]
    return hits, answers


def correlation(a, b) -> tuple[float, float]:
    from scipy.stats import pearsonr, spearmanr

    return float(pearsonr(a, b)[0]), float(spearmanr(a, b)[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--labelled", type=Path, help="an earlier output of this benchmark on the same collection: its labelled-set columns are read from there, not searched again (they do not change when only the golden set does)")
    args = parser.parse_args()
    earlier = {}
    if args.labelled:
        for line in args.labelled.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 7 and cells[0] not in ("setting", "---"):
                try:
                    earlier[cells[0]] = tuple(float(c) for c in cells[3:6])
                except ValueError:
                    continue
    shared = Path(args.shared)

    from long_issues import build_set

    from vector_assets import settings, state
    from vector_assets.cli import _search_setup
    from vector_assets.definitions import defs
    from vector_assets.serving import retrieval

    client, collection, model = _search_setup()
    client.prepare(collection)
    landing = defs.resources["landing"]
    index = landing.index()
    engine = state.engine(landing.database_url())
    golden, links = {}, {}
    for tenant in index.tenants():
        _, queries, _ = retrieval.golden_set(engine, index, tenant)
        golden[tenant] = [{"tenant": tenant, "text": q.text, "answers": set(q.answers)} for q in queries]
        if any(q.kind == "pull_request" for q in queries):
            links[tenant] = sorted((len(q.answers) for q in queries if q.kind == "pull_request"), reverse=True)
    print("golden pull-request queries (answers each): " + "; ".join(f"{t} {len(n)} ({', '.join(map(str, n))})" for t, n in links.items()))
    queries = [json.loads(line) for line in open(shared / "eval_pr_commits" / "queries.jsonl", encoding="utf-8")]
    qrels = defaultdict(set)
    for line in open(shared / "eval_pr_commits" / "qrels.jsonl", encoding="utf-8"):
        item = json.loads(line)
        if item["score"] > 0:
            qrels[item["query_id"]].add(item["corpus_id"])
    pr_all = by_tenant({"tenant": q["tenant"], "text": q["text"], "answers": qrels[q["_id"]]} for q in queries if qrels[q["_id"]])
    pr_hard = by_tenant({"tenant": q["tenant"], "text": q["text"], "answers": qrels[q["_id"]]} for q in queries if qrels[q["_id"]] and not q["trivial"])
    long_set, _ = build_set(shared)
    long_groups = by_tenant({"tenant": q["tenant"], "text": q["text"], "answers": {q["answer"]}} for q in long_set)
    print(f"{collection} ({settings.milvus_uri()}): golden queries {sum(map(len, golden.values()))} of {len(golden)} tenants; eval_pr_commits {sum(map(len, pr_all.values()))} ({sum(map(len, pr_hard.values()))} non-trivial); long issues {len(long_set)}")
    print("| setting | golden recall@10 | golden MRR@10 | eval_pr_commits recall@10 (all) | (non-trivial) | long issues recall@10 | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for mode, fusion in SETTINGS:
        started = time.perf_counter()
        g_hits, g_answers = searched(client, collection, model, golden, mode, fusion)
        ranks = [next((i for i, h in enumerate(found, 1) if h.id in relevant), None) for found, relevant in zip(g_hits, g_answers)]
        g_recall, g_mrr = recall_at_10(g_hits, g_answers), float(np.mean([1 / r if r else 0 for r in ranks]))
        label = mode if mode != "hybrid" else f"hybrid {fusion}"
        if label in earlier:
            pr_r, hard_r, long_r = earlier[label]
        else:
            pr_r = recall_at_10(*searched(client, collection, model, pr_all, mode, fusion, kinds=["git_commit"]))
            hard_r = recall_at_10(*searched(client, collection, model, pr_hard, mode, fusion, kinds=["git_commit"]))
            long_r = recall_at_10(*searched(client, collection, model, long_groups, mode, fusion))
        rows.append((label, g_recall, g_mrr, pr_r, hard_r, long_r))
        print(f"| {label} | {g_recall:.3f} | {g_mrr:.3f} | {pr_r:.3f} | {hard_r:.3f} | {long_r:.3f} | {time.perf_counter() - started:.0f} |", flush=True)
    g = [r[1] for r in rows]
    for name, col in (("eval_pr_commits all", 3), ("eval_pr_commits non-trivial", 4), ("long issues", 5)):
        pearson, spearman = correlation(g, [r[col] for r in rows])
        print(f"golden recall@10 vs {name} over {len(rows)} settings: Pearson {pearson:.3f}, Spearman {spearman:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
