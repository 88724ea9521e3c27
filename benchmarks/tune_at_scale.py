"""Index tuning on another store at the scale of a full backfill, without embedding it again
(issue #21 item 4: the tuning job's figures on Milvus Lite and on the 2.3.5 server).

A full backfill of the shared data takes hours of CPU encode; its vectors are already in a Lite
store. Two steps copy them to a server and tune there:

* ``dump``: the served collection of a ``VECTOR_ASSETS_HOME`` (its rows: every field but the
  BM25 ``sparse`` one, which Milvus computes) and every tenant's golden queries
  (:func:`vector_assets.serving.retrieval.golden_set`, as the tuning job reads them) into one
  pickle file;
* ``load``: into the Milvus at ``--uri`` (default ``$VECTOR_ASSETS_TEST_MILVUS_URI``, which
  ``scripts/with_milvus_server.sh`` sets), a collection made as the product makes it
  (:meth:`vector_assets.resources.milvus.MilvusResource.ensure_collection`: HNSW M 16,
  efConstruction 200, COSINE) with those rows; then :func:`vector_assets.serving.tuning.tune`
  (optuna, scratch collections beside it) and :func:`~vector_assets.serving.tuning.record`, as
  ``vector-assets tune`` runs them; prints the same table and lines.

Usage::

    VECTOR_ASSETS_HOME=/tmp/full/home python benchmarks/tune_at_scale.py dump /tmp/full/rows.pkl
    scripts/with_milvus_server.sh .venv/bin/python .venv/bin/python benchmarks/tune_at_scale.py load /tmp/full/rows.pkl --trials 24
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def dump(out: Path) -> None:
    from vector_assets.assets.search_quality import served_collection
    from vector_assets.cli import _milvus
    from vector_assets.definitions import defs
    from vector_assets.serving import retrieval
    from vector_assets import state
    from vector_assets.store import milvus_store

    landing, embedder = defs.resources["landing"], defs.resources["embedding_model"]
    store, collection, model = served_collection(_milvus(), embedder, None, "dump")
    client = store.client  # a Milvus store: the rows are copied with every field
    fields = [f["name"] for f in client.describe_collection(collection)["fields"] if f["name"] != "sparse"]
    t = time.perf_counter()
    rows = milvus_store.query_all(client, collection, "pk != ''", fields)
    engine, index = state.engine(landing.database_url()), landing.index()
    queries = {}
    for tenant in index.tenants():
        _, golden, _ = retrieval.golden_set(engine, index, tenant)
        if golden:
            queries[tenant] = [q.text for q in golden]
    with open(out, "wb") as f:
        pickle.dump({"collection": collection, "model": model.model_id, "rows": rows, "queries": queries}, f)
    print(f"dumped {len(rows)} rows of {collection} and {sum(map(len, queries.values()))} golden queries of {len(queries)} tenants to {out} in {time.perf_counter() - t:.0f} s")


def load(path: Path, uri: str, trials: int) -> None:
    from vector_assets.resources import MilvusResource, embedding_resource
    from vector_assets.serving import tuning
    from vector_assets.store import milvus_store

    with open(path, "rb") as f:
        data = pickle.load(f)
    rows, queries = data["rows"], data["queries"]
    milvus = MilvusResource(uri=uri)
    client = milvus.get_client()
    dim = len(rows[0]["vector"])
    t = time.perf_counter()
    name = milvus.ensure_collection(data["model"], dim)
    have = client.get_collection_stats(name)["row_count"]
    if have < len(rows):
        milvus_store.write_rows(client, name, rows)  # as the product writes (no upsert on 2.3)
        client.flush(name)
    tuning.wait_for_index(client, name, len(rows))
    client.load_collection(name)
    tuning.wait_for_loaded(client, name, len(rows))
    print(f"loaded {len(rows)} rows into {name} on {uri} (server version {milvus_store.server_version(client)}) in {time.perf_counter() - t:.0f} s")
    result = tuning.tune(client, name, embedding_resource(data["model"]), queries, trials=trials)
    recorded = tuning.record(client, name, result)
    print(tuning.report(result, bool(recorded)))
    print(f"recorded on {name}: {json.dumps(milvus_store.tuned_search_params(client, name))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out", type=Path)
    lo = sub.add_parser("load")
    lo.add_argument("path", type=Path)
    lo.add_argument("--uri", default=os.environ.get("VECTOR_ASSETS_TEST_MILVUS_URI", ""))
    lo.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    if args.step == "dump":
        dump(args.out)
    else:
        if not args.uri:
            parser.error("--uri (or VECTOR_ASSETS_TEST_MILVUS_URI) is required")
        load(args.path, args.uri, args.trials)


if __name__ == "__main__":
    main()
