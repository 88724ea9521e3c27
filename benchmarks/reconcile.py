"""What reconciling the store costs: reading every tenant-day a collection holds rows of
(:func:`vector_assets.store.milvus_store.stored_partitions`, what ``backfill --all``, a backfill on a
new or rebuilt landing index and the audit job do before planning; issue #17 item 2).

Writes ``--rows`` rows (random unit vectors: only the ``tenant`` and ``day`` fields are read)
over ``--tenants`` tenants x ``--days`` days into a fresh collection of a Milvus Lite database
(or ``--uri``), then times ``stored_partitions`` three times and prints the figures.

    .venv/bin/python benchmarks/reconcile.py --rows 100000
"""

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np

from vector_assets.store import milvus_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--uri", default="", help="a Milvus server (default: a Milvus Lite database in a temporary folder)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="reconcile-")
    uri = args.uri or str(Path(folder) / "milvus.db")
    client = milvus_store.connect(uri)
    name = "reconcile_bench"
    if client.has_collection(name):
        client.drop_collection(name)
    milvus_store.create_collection(client, name, 384, model_id="bench")
    rng = np.random.default_rng(0)
    start = dt.date(2024, 1, 1)
    written = time.perf_counter()
    for first in range(0, args.rows, 5000):
        n = min(5000, args.rows - first)
        vectors = rng.standard_normal((n, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = []
        for i, v in zip(range(first, first + n), vectors):
            rows.append({
                "pk": f"{i:032x}", "tenant": f"tenant-{i % args.tenants}", "day": (start + dt.timedelta(days=(i // args.tenants) % args.days)).isoformat(),
                "kind": "git_commit", "record_id": f"r{i}", "content_hash": "0" * 64, "model": "bench", "created_at": 0, "embedded_at": 0,
                "preview": "", "passage": 0, "text": "x", "vector": v.tolist(),
            })
        milvus_store.write_rows(client, name, rows)
    client.flush(name)
    print(f"wrote {args.rows:,} rows in {time.perf_counter() - written:.1f} s")
    for attempt in range(3):
        started = time.perf_counter()
        held = milvus_store.stored_partitions(client, name)
        print(f"stored_partitions: {len(held):,} tenant-days of {args.rows:,} rows in {time.perf_counter() - started:.2f} s")
    client.drop_collection(name)
    client.close()
    if not args.uri:
        milvus_store.stop_local_server(uri)


if __name__ == "__main__":
    main()
