"""FLAT against HNSW and IVF_FLAT on Milvus Lite: is an exact index affordable there?

Milvus Lite's search time is mostly its per-row passes, not the index (README "Performance",
the cProfile row), and HNSW leaves some rows unreachable (README "Retrievability on the full
data"). This builds each index over the same rows in a fresh Lite database
(:func:`vector_assets.serving.tuning._scratch`) and measures each setting twice with
:func:`vector_assets.serving.tuning.measure` (the product's filtered request, limit 40; recall@10
against exact search; p95 and p50 ms per request), on either

* ``--rows FILE``: the rows and golden queries that ``benchmarks/tune_at_scale.py dump`` wrote
  (the full shared data: 36,076 rows in 11 tenants), or
* ``--synthetic N``: ``benchmarks/pipeline.py``'s ``synthetic_vectors(N)`` in one tenant, queried
  by 200 real commit texts.

Usage::

    python benchmarks/flat_on_lite.py --rows /tmp/full/rows.pkl
    python benchmarks/flat_on_lite.py --synthetic 100000
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SETTINGS = (("FLAT", {}, [{}]), ("HNSW", {"M": 16, "efConstruction": 200}, [{"ef": 40}, {"ef": 256}]), ("IVF_FLAT", {"nlist": 1024}, [{"nprobe": 111}]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--rows", type=Path)
    group.add_argument("--synthetic", type=int)
    args = parser.parse_args()

    from vector_assets.resources import embedding_resource
    from vector_assets.serving import tuning
    from vector_assets.settings import DEFAULT_MODEL
    from vector_assets.store import milvus_store

    if args.rows:
        data = pickle.load(open(args.rows, "rb"))
        rows = [{"pk": r["pk"], "tenant": r["tenant"], "vector": r["vector"]} for r in data["rows"]]
        queries = tuning.exact_answers(rows, data["queries"], embedding_resource(data["model"]))
        print(f"{len(rows)} rows of {len(data['queries'])} tenants, {len(queries.tenants)} golden queries")
    else:
        from pipeline import synthetic_vectors

        texts, vectors = synthetic_vectors(args.synthetic)
        rows = [{"pk": f"{j:08d}", "tenant": "bench", "vector": v.tolist()} for j, v in enumerate(vectors)]
        queries = tuning.exact_answers(rows, {"bench": texts[: 200 * 7 : 7]}, embedding_resource(DEFAULT_MODEL))
        print(f"{len(rows)} rows in one tenant, {len(queries.tenants)} queries")
    work = tempfile.mkdtemp(prefix="va-flat-")
    db = os.path.join(work, "milvus.db")
    client = milvus_store.connect(db, "")
    dim = len(rows[0]["vector"])
    for index_type, build, params in SETTINGS:
        started = time.perf_counter()
        name = tuning._scratch(client, rows, dim, index_type, build)
        print(f"{index_type} {build} built in {time.perf_counter() - started:.0f} s", flush=True)
        for p in params:
            if p is params[0]:
                tuning.settle(client, name, queries, p, len(rows))
            for _ in range(2):
                recall, p95, p50 = tuning.measure(client, name, queries, p)
                print(f"  {p}: recall@10 {recall:.4f}, p95 {p95:.1f} ms, p50 {p50:.1f} ms", flush=True)
        client.drop_collection(name)
    client.close()
    milvus_store.stop_local_server(db)


if __name__ == "__main__":
    main()
