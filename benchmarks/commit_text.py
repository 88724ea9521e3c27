"""Which commit text embeds best: exact (brute-force) search on ../shared/data/eval_pr_commits.

Encodes the 16,581 corpus commits once per text variant with all-MiniLM-L6-v2 (CPU, batch 64),
searches every query within its tenant by exact cosine, and prints recall@10 and nDCG@10 on all
2,548 queries and on the 817 non-trivial ones. The variant the product uses is
``subject_message_files`` (:func:`vector_assets.ingest.extraction.extract_commit`). Takes about two
minutes a variant on 2 cores.

Usage: python benchmarks/commit_text.py [VARIANT ...]
"""

import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EVAL = REPO.parent / "shared" / "data" / "eval_pr_commits"


def _sections(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def variants():
    from vector_assets.ingest.extraction import commit_files, normalise_text

    def files(c):
        return "Files: " + commit_files(c["files"]) if c.get("files") else ""

    return {
        "reference": lambda c: c["title"] + "\n" + c["text"],
        "message_files": lambda c: _sections(normalise_text(c["text"]), files(c)),
        "message": lambda c: normalise_text(c["text"]),
        "subject_message_files": lambda c: _sections(normalise_text(c["title"]), normalise_text(c["text"]), files(c)),
        "subject_message": lambda c: _sections(normalise_text(c["title"]), normalise_text(c["text"])),
    }


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vector_assets.embed.embedding import load_model

    corpus = [json.loads(l) for l in open(EVAL / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(l) for l in open(EVAL / "queries.jsonl", encoding="utf-8")]
    qrels = defaultdict(set)
    for line in open(EVAL / "qrels.jsonl", encoding="utf-8"):
        item = json.loads(line)
        qrels[item["query_id"]].add(item["corpus_id"])
    model = load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    chosen = variants()
    names = sys.argv[1:] or list(chosen)
    q = model.encode([x["text"] for x in queries], batch_size=64, normalize_embeddings=True)
    tenants = np.array([c["tenant"] for c in corpus])
    ids = [c["_id"] for c in corpus]
    results = {}
    print(f"{'variant':<24} {'recall@10 all':>13} {'nDCG@10 all':>11} {'recall@10 nt':>12} {'nDCG@10 nt':>10}")
    for name in names:
        docs = model.encode([chosen[name](c) for c in corpus], batch_size=64, normalize_embeddings=True)
        scores = {"all": ([], []), "non-trivial": ([], [])}
        for i, query in enumerate(queries):
            rows = np.where(tenants == query["tenant"])[0]
            top = rows[np.argsort(-(docs[rows] @ q[i]))[:10]]
            relevant = qrels[query["_id"]]
            hits = [ids[j] in relevant for j in top]
            idcg = sum(1 / math.log2(r + 2) for r in range(min(10, len(relevant))))
            dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
            for key in ("all",) + (() if query["trivial"] else ("non-trivial",)):
                scores[key][0].append(sum(hits) / len(relevant))
                scores[key][1].append(dcg / idcg)
        results[name] = {k: {"recall@10": round(float(np.mean(r)), 4), "ndcg@10": round(float(np.mean(n)), 4), "n": len(r)} for k, (r, n) in scores.items()}
        a, nt = results[name]["all"], results[name]["non-trivial"]
        print(f"{name:<24} {a['recall@10']:>13.3f} {a['ndcg@10']:>11.3f} {nt['recall@10']:>12.3f} {nt['ndcg@10']:>10.3f}", flush=True)
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "commit_text.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
