"""What one vector of the retrievability check's self-search costs on Milvus Lite, searched
over the union of many tenants or within one tenant (issue #20 item 2).

Writes ROWS hash-seeded unit vectors (384 dimensions, as the org_scale benchmark's null
embedder) spread evenly over TENANTS tenants into a fresh collection made as the product makes
it (HNSW M 16, efConstruction 200), flushes it, then sends requests of 256 vectors (the check's
``SEARCH_CHUNK``) at ``ef`` 64 and 256, ``limit`` 1: filtered to every tenant (``tenant in
[...]``) and to one tenant (``tenant == ...``). Prints milliseconds per vector (best of three
requests) and how many vectors found themselves first.

Usage:
    python benchmarks/retrievability_search.py [--rows 27000] [--tenants 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=27000)
    parser.add_argument("--tenants", type=int, default=10)
    args = parser.parse_args()

    from vector_assets.resources import MilvusResource
    from vector_assets.store import milvus_store

    home = Path(tempfile.mkdtemp(prefix="va-retrievability-"))
    resource = MilvusResource(uri=str(home / "milvus.db"))
    client = resource.get_client()
    name = "retrievability_bench"
    milvus_store.create_collection(client, name, 384, model_id="bench")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.rows, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tenants = [f"tenant-{i}" for i in range(args.tenants)]
    rows = [
        {
            "pk": f"p{i}", "tenant": tenants[i % args.tenants], "day": f"2024-01-{i % 28 + 1:02d}", "kind": "commit", "record_id": f"r{i}",
            "content_hash": "", "model": "bench", "created_at": 0, "embedded_at": 0, "preview": "", "passage": 0, "text": f"row {i}",
            "vector": vectors[i].tolist(),
        }
        for i in range(args.rows)
    ]
    for i in range(0, len(rows), 2000):
        client.insert(name, rows[i : i + 2000])
    client.flush(name)
    time.sleep(5)  # Lite indexes the merged segment in a background thread (README "Index tuning")
    queries = vectors[:256].tolist()
    every = "tenant in [" + ", ".join(milvus_store.quote(t) for t in tenants) + "]"
    one = f"tenant == {milvus_store.quote(tenants[0])}"
    print(f"{args.rows} rows in {args.tenants} tenants, 256 vectors a request, limit 1")
    for label, expr in (("every tenant", every), ("one tenant", one)):
        for ef in (64, 256):
            best, found = float("inf"), 0
            for _ in range(3):
                started = time.perf_counter()
                hits = client.search(name, data=queries, anns_field="vector", limit=1, filter=expr, search_params={"params": {"ef": ef}}, output_fields=["pk"])
                best = min(best, time.perf_counter() - started)
                found = sum(1 for i, top in enumerate(hits) if top and top[0]["entity"]["pk"] == f"p{i}")
            in_scope = sum(1 for i in range(256) if expr == every or i % args.tenants == 0)
            print(f"  {label:12s} ef {ef:3d}: {1000 * best / 256:.2f} ms a vector; {found} of the {in_scope} vectors in scope found first")
    milvus_store.stop_local_server(home / "milvus.db")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
