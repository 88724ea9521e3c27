"""The HTTP search service end to end over real HTTP: `vector-assets serve` (uvicorn on a free
loopback port) over a Milvus Lite database that `vector-assets backfill` filled with real
records of two tenants (HADOOP's Jira issues, SeaMonkey's Bugzilla bugs), keys made with
`vector-assets keys`, the official OpenAI client against /v1/embeddings, /metrics parsed with
prometheus_client, and a schemathesis run against the published OpenAPI."""

import json
import re
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from vector_assets.settings import DEFAULT_MODEL
from vector_assets.store import milvus_store

from .conftest import ON_PGVECTOR, sample_records, write_jsonl

EXE = str(Path(sys.executable).with_name("vector-assets"))
HADOOP = ("HADOOP", "2024-07-01", "2024-07-12")
SEAMONKEY = ("SeaMonkey", "2024-01-01", "2024-02-29")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, env, timeout=600):
    out = subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def service_env(root: Path, **extra) -> dict:
    """The environment of a service test: its own state, landing folder, database, key file and
    Dagster instance under ``root``; no chat endpoint, no test server, the default model."""
    env = {
        **os.environ,
        "VECTOR_ASSETS_HOME": str(root / "home"),
        "VECTOR_ASSETS_LANDING_DIR": str(root / "landing"),
        "VECTOR_ASSETS_MILVUS_URI": str(root / "home" / "milvus.db"),
        "VECTOR_ASSETS_API_KEYS": str(root / "keys.json"),
        "DAGSTER_HOME": str(root / "dagster_home"),
        **extra,
    }
    for var in ("VECTOR_ASSETS_LLM_BASE_URL", "VECTOR_ASSETS_LLM_MODEL", "VECTOR_ASSETS_TEST_MILVUS_URI", "VECTOR_ASSETS_MODEL", "VECTOR_ASSETS_STORE_URL"):
        if var not in extra:
            env.pop(var, None)
    return env


def start_service(env: dict, output=subprocess.PIPE) -> tuple[subprocess.Popen, str]:
    """`vector-assets serve` on a free loopback port, once /readyz answers 200 (120 s at most):
    ``(process, base URL)``."""
    port = free_port()
    server = subprocess.Popen([EXE, "serve", "--port", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, server.stdout.read() if server.stdout else "the service exited"
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the service did not become ready in 120 s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    """Backfill two tenants, make keys, start the service; yields what the tests need. On
    pgvector (``VECTOR_ASSETS_TEST_STORE``) the store is a fresh database of the session's
    PostgreSQL, selected by ``VECTOR_ASSETS_STORE_URL`` as a deployment selects it."""
    root = tmp_path_factory.mktemp("service")
    extra = {}
    if ON_PGVECTOR:
        server = request.getfixturevalue("pg_server")
        server.psql("DROP DATABASE IF EXISTS service WITH (FORCE);")
        server.psql("CREATE DATABASE service;")
        extra["VECTOR_ASSETS_STORE_URL"] = server.get_uri("service")
    env = service_env(root, VECTOR_ASSETS_PRICE_PER_MTOK="0.13", **extra)  # a configured price: the cost figures
    jira = sample_records("jira_issues_hadoop.jsonl", *HADOOP)
    bugs = sample_records("bugzilla_seamonkey.jsonl", *SEAMONKEY)
    assert len(jira) >= 10 and len(bugs) >= 5
    write_jsonl(root / "landing" / "jira_issues_hadoop.jsonl", jira)
    write_jsonl(root / "landing" / "bugzilla_seamonkey.jsonl", bugs)
    summary = cli("backfill", "--workers", "1", env=env)
    keys = {
        "hadoop": cli("keys", "add", "--tenant", "HADOOP", "--name", "hadoop team", env=env).strip().splitlines()[-1],
        "all": cli("keys", "add", "--all-tenants", "--name", "ops", env=env).strip().splitlines()[-1],
        "revoked": cli("keys", "add", "--tenant", "HADOOP", env=env).strip().splitlines()[-1],
    }
    server, base = start_service(env)
    totals = dict(pair.split("=", 1) for pair in re.search(r"^backfill: (.*)$", summary, re.M).group(1).split())
    yield {"base": base, "env": env, "keys": keys, "jira": jira, "bugs": bugs, "db": env["VECTOR_ASSETS_MILVUS_URI"], "backfill": totals}
    server.terminate()
    server.wait(30)
    milvus_store.stop_local_server(env["VECTOR_ASSETS_MILVUS_URI"])


def post(served, path, body, key="hadoop"):
    headers = {"Authorization": f"Bearer {served['keys'][key]}"} if key else {}
    return httpx.post(served["base"] + path, json=body, headers=headers, timeout=60)


def test_search_returns_the_tenants_records(served):
    target = served["jira"][3]
    response = post(served, "/v1/search", {"tenant": "HADOOP", "query": target["summary"], "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "hybrid" and body["query"] == target["summary"]
    ids = [h["id"] for h in body["hits"]]
    assert target["id"] in ids[:3], ids
    assert all(i.startswith("jira:HADOOP:") for i in ids) and len(ids) == 5
    assert {"score", "day", "kind", "preview", "passage", "passage_text"} <= set(body["hits"][0])
    # A batch: one result per query, in order; kinds and day range filter.
    queries = [served["jira"][0]["summary"], served["jira"][-1]["summary"]]
    batch = post(served, "/v1/search", {"tenant": "HADOOP", "queries": queries, "k": 3, "mode": "dense", "day_from": "2024-07-05", "day_to": "2024-07-12"}).json()
    assert [r["query"] for r in batch["results"]] == queries and batch["mode"] == "dense"
    assert all("2024-07-05" <= h["day"] <= "2024-07-12" for r in batch["results"] for h in r["hits"])
    assert served["jira"][-1]["id"] in [h["id"] for h in batch["results"][1]["hits"]]
    none = post(served, "/v1/search", {"tenant": "HADOOP", "query": "file system", "kinds": ["git_commit"]}).json()
    assert none["hits"] == []


def test_keys_tenants_and_bounds(served):
    body = {"tenant": "HADOOP", "query": "S3A upload"}
    missing = post(served, "/v1/search", body, key=None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    bad = httpx.post(served["base"] + "/v1/search", json=body, headers={"Authorization": "Bearer va_000000000000_" + "x" * 43})
    assert bad.status_code == 401
    assert post(served, "/v1/search", body, key="revoked").status_code == 200
    key_id = served["keys"]["revoked"].split("_")[1]
    cli("keys", "revoke", key_id, env=served["env"])
    assert post(served, "/v1/search", body, key="revoked").status_code == 401  # no restart needed
    listed = cli("keys", "list", env=served["env"])
    assert f"{key_id}  revoked" in listed and served["keys"]["hadoop"] not in listed
    assert served["keys"]["hadoop"] not in Path(served["env"]["VECTOR_ASSETS_API_KEYS"]).read_text()  # stored hashed
    # Another tenant: 403, and the same answer whether that tenant exists or not.
    other = post(served, "/v1/search", {"tenant": "SeaMonkey", "query": "bookmark"})
    nowhere = post(served, "/v1/search", {"tenant": "NoSuchTenant", "query": "bookmark"})
    assert other.status_code == nowhere.status_code == 403 and other.json() == nowhere.json()
    assert "SeaMonkey" not in other.text
    for route in ("/v1/context", "/v1/answer"):
        assert post(served, route, {"tenant": "SeaMonkey", "question": "bookmark"}).status_code == 403
    assert post(served, "/v1/search", {"tenant": "SeaMonkey", "query": "bookmark"}, key="all").status_code == 200
    # Bounds: 422 with a message naming the field.
    for bad_body, field in [
        ({**body, "k": 101}, "k"),
        ({**body, "query": "x" * 2001}, "query"),
        ({"tenant": "HADOOP", "queries": ["q"] * 33}, "queries"),
        ({**body, "queries": ["a"]}, "exactly one"),
        ({**body, "query": "   "}, "blank"),
        ({**body, "kinds": ["secret_rows"]}, "kinds"),
        ({**body, "filter": "tenant != ''"}, "filter"),
    ]:
        response = post(served, "/v1/search", bad_body)
        assert response.status_code == 422 and field in response.text, (bad_body, response.text)
    too_big = post(served, "/v1/context", {"tenant": "HADOOP", "question": "why", "token_budget": 9000})
    assert too_big.status_code == 422 and "token_budget" in too_big.text
    # Tenants: those the key grants; all registered ones for an all-tenants key.
    mine = httpx.get(served["base"] + "/v1/tenants", headers={"Authorization": f"Bearer {served['keys']['hadoop']}"}).json()
    assert mine == {"tenants": [{"tenant": "HADOOP", "rows": mine["tenants"][0]["rows"]}]} and mine["tenants"][0]["rows"] >= len(served["jira"])
    every = httpx.get(served["base"] + "/v1/tenants", headers={"Authorization": f"Bearer {served['keys']['all']}"}).json()
    assert [t["tenant"] for t in every["tenants"]] == ["HADOOP", "SeaMonkey"]


def test_context_within_budget_and_answer_without_chat_endpoint(served):
    from vector_assets.embed.embedding import load_tokenizer

    question = "Why do S3A multipart uploads fail and how is it fixed?"
    response = post(served, "/v1/context", {"tenant": "HADOOP", "question": question, "token_budget": 400, "k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    tokenizer = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")[0]
    assert body["tokens"] <= 400 and len(tokenizer(body["context"], add_special_tokens=False)["input_ids"]) <= 400 + 2
    assert body["citations"], body
    for c in body["citations"]:
        assert c["id"].startswith("jira:HADOOP:") and f"[{c['n']}] {c['id']} ({c['kind']}, {c['day']})" in body["context"]
    # A bigger budget holds more records, in the same order.
    more = post(served, "/v1/context", {"tenant": "HADOOP", "question": question, "token_budget": 3000, "k": 10}).json()
    assert len(more["citations"]) > len(body["citations"])
    assert [c["id"] for c in more["citations"]][: len(body["citations"])] == [c["id"] for c in body["citations"]]
    answer = post(served, "/v1/answer", {"tenant": "HADOOP", "question": question})
    assert answer.status_code == 501 and "VECTOR_ASSETS_LLM_BASE_URL" in answer.json()["detail"]


def test_openai_client_against_embeddings(served, embedding_model):
    import openai

    client = openai.OpenAI(base_url=served["base"] + "/v1", api_key=served["keys"]["hadoop"], max_retries=0)
    texts = [served["jira"][0]["summary"], served["bugs"][0]["description"][:3000], "NullPointerException in DFSClient"]
    local = embedding_model.encode(texts)
    for fmt in ("float", "base64"):  # the client asks for base64 unless told otherwise
        result = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=texts, **({"encoding_format": fmt} if fmt == "float" else {}))
        remote = np.array([d.embedding for d in result.data], dtype=np.float32)
        assert remote.shape == local.shape == (3, 384)
        cosine = (remote * local).sum(axis=1) / np.linalg.norm(remote, axis=1) / np.linalg.norm(local, axis=1)
        assert cosine.min() >= 0.9999, cosine
        assert result.usage.prompt_tokens > 0 and [d.index for d in result.data] == [0, 1, 2]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served["base"] + "/v1", api_key="nope", max_retries=0).embeddings.create(model="all-MiniLM-L6-v2", input="x")


def test_metrics_scraped(served):
    from prometheus_client.parser import text_string_to_metric_families

    query = "erasure coding policy of a directory, asked twice"
    post(served, "/v1/search", {"tenant": "HADOOP", "query": query})
    post(served, "/v1/search", {"tenant": "HADOOP", "query": query})  # answered from the query cache
    assert httpx.get(served["base"] + "/metrics", headers={"Authorization": f"Bearer {served['keys']['hadoop']}"}).status_code == 403
    text = httpx.get(served["base"] + "/metrics", headers={"Authorization": f"Bearer {served['keys']['all']}"}).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("vector_assets_http_requests_total", (("method", "POST"), ("route", "/v1/search"), ("status", "200")))] >= 1
    assert samples[("vector_assets_http_request_duration_seconds_count", (("method", "POST"), ("route", "/v1/search")))] >= 1
    assert samples[("vector_assets_encode_seconds_count", ())] >= 1
    assert samples[("vector_assets_milvus_seconds_count", (("mode", "hybrid"),))] >= 1
    assert samples[("vector_assets_query_cache_total", (("result", "hit"),))] >= 1
    assert samples[("vector_assets_query_cache_total", (("result", "miss"),))] >= 1
    # The query's tokens, counted once (the second ask was a cache hit), at the configured price.
    assert samples[("vector_assets_query_tokens_total", ())] >= 10
    assert samples[("vector_assets_query_embedding_cost_usd_total", ())] == pytest.approx(samples[("vector_assets_query_tokens_total", ())] * 0.13 / 1e6)
    rows = [v for (name, labels), v in samples.items() if name == "vector_assets_collection_rows"]
    assert rows and rows[0] >= len(served["jira"]) + len(served["bugs"])
    last = {dict(labels)["tenant"]: v for (name, labels), v in samples.items() if name == "vector_assets_tenant_last_materialization_timestamp_seconds"}
    assert set(last) == {"HADOOP", "SeaMonkey"} and all(time.time() - 3600 < v <= time.time() for v in last.values())
    # What the pipeline embedded, per tenant and model (issue #20 item 6): the backfill's totals.
    def per_tenant(name):
        return {(dict(labels)["tenant"], dict(labels)["model"]): v for (n, labels), v in samples.items() if n == name}

    tokens, passages = per_tenant("vector_assets_pipeline_embedded_tokens_total"), per_tenant("vector_assets_pipeline_embedded_passages_total")
    assert set(tokens) == set(passages) == {("HADOOP", DEFAULT_MODEL), ("SeaMonkey", DEFAULT_MODEL)}
    assert sum(tokens.values()) == int(served["backfill"]["tokens_embedded"]) > sum(passages.values()) == int(served["backfill"]["passages_embedded"]) > 0
    cost = per_tenant("vector_assets_pipeline_embedding_cost_usd_total")
    assert all(cost[k] == pytest.approx(tokens[k] * 0.13 / 1e6) for k in tokens)


def test_the_query_cache_encodes_each_text_once(embedding_model):
    """Texts seen before come from the cache, in their places among new ones, with the model's
    vectors; the model sees only the new texts (seed 004's query cache)."""
    from vector_assets.serving.service import BatchingEncoder

    seen = []

    class Counting:
        def encode(self, texts):
            seen.append(list(texts))
            return embedding_model.encode(texts)

    counts = []
    encoder = BatchingEncoder(Counting(), cache_size=2, on_cache=lambda hits, misses: counts.append((hits, misses)))
    queries = ["datanode fails to start after upgrade", "namenode safe mode never ends", "balancer is too slow"]
    first = encoder.encode(queries[:2])
    mixed = encoder.encode([queries[2], queries[1]])
    assert seen == [queries[:2], [queries[2]]] and counts == [(0, 2), (1, 1)]
    direct = embedding_model.encode(queries)
    assert np.allclose(first, direct[:2], atol=1e-6) and np.allclose(mixed, direct[[2, 1]], atol=1e-6)
    mixed[1][:] = 0  # a caller's array is its own: the cached vector is untouched
    assert np.allclose(encoder.encode([queries[1]]), direct[1], atol=1e-6)
    encoder.encode([queries[0]])  # evicted (size 2: the least recently used went): encoded again
    assert seen[-1] == [queries[0]]


def test_health_and_readiness(served):
    assert httpx.get(served["base"] + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(served["base"] + "/readyz").json()
    assert ready["status"] == "ready" and all(ready["checks"].values()) and ready["collection"].startswith("passages__")
    spec = httpx.get(served["base"] + "/openapi.json").json()
    assert {"/v1/search", "/v1/tenants", "/v1/context", "/v1/answer", "/v1/embeddings", "/metrics", "/healthz", "/readyz"} <= set(spec["paths"])
    # /docs works offline (#18): Swagger UI's files are served by the service, none from a CDN.
    page = httpx.get(served["base"] + "/docs").text
    assert "/docs/static/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    script = httpx.get(served["base"] + "/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


def test_schemathesis_finds_no_server_error_and_no_cross_tenant_read(served):
    """Every operation of the published OpenAPI, fuzzed with the HADOOP key: no 5xx, status
    codes the schema documents, and no response carries a SeaMonkey record."""
    import hypothesis
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import status_code_conformance

    schema = schemathesis.openapi.from_url(served["base"] + "/openapi.json")
    headers = {"Authorization": f"Bearer {served['keys']['hadoop']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8
    calls = []
    for operation in operations:

        @hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck), database=None)
        @hypothesis.given(case=operation.as_strategy())
        def fuzz(case):
            response = case.call(base_url=served["base"], headers=headers, timeout=60)
            calls.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
            sent = json.dumps(case.body) if isinstance(case.body, (dict, list, str)) else ""
            assert "bugzilla:SeaMonkey:" in sent or "bugzilla:SeaMonkey:" not in response.text, (case.body, response.text[:300])

        fuzz()
    assert len(calls) >= 8 * 10 and 200 in calls and 422 in calls and 403 in calls


class _Flaky:
    """An HTTP server on loopback answering POSTs with ``statuses`` first (then forwarding to
    ``target`` when ``statuses`` is exhausted; or the last status forever with ``forever``)."""

    def __init__(self, target: str, statuses: list[int], forever: bool = False):
        import http.server
        import threading

        self.seen: list[int] = []
        flaky = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                n = len(flaky.seen)
                status = statuses[min(n, len(statuses) - 1)] if (forever or n < len(statuses)) else None
                if status is None:
                    forwarded = httpx.post(target + self.path, content=body, headers={"Authorization": self.headers["Authorization"], "Content-Type": "application/json"}, timeout=60)
                    status, payload = forwarded.status_code, forwarded.content
                else:
                    payload = json.dumps({"error": {"message": f"flaky {status}", "type": "server_error"}}).encode()
                flaky.seen.append(status)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.skipif(ON_PGVECTOR, reason="the provider's collections are read from Milvus Lite databases of their own")
def test_openai_compatible_provider(served, embedding_model, tmp_path):
    """The OpenAI-compatible embedding provider against the service's own /v1/embeddings: the
    same vectors as the local model; 429 then 200 retried; 500 forever fails the run clearly;
    a backfill through it writes a collection of its own, searchable."""
    from vector_assets.resources import OpenAIEmbeddingResource

    texts = [r["summary"] for r in served["jira"][:5]]
    provider = OpenAIEmbeddingResource(model="all-MiniLM-L6-v2", base_url=served["base"] + "/v1", api_model="sentence-transformers/all-MiniLM-L6-v2", api_key=served["keys"]["hadoop"], request_batch=2, max_concurrency=2)
    remote, local = provider.encode(texts), embedding_model.encode(texts)
    assert ((remote * local).sum(axis=1)).min() >= 0.9999 and provider.dimension == 384
    flaky = _Flaky(served["base"], [429])
    try:
        retried = OpenAIEmbeddingResource(model="m", base_url=flaky.url + "/v1", api_model="sentence-transformers/all-MiniLM-L6-v2", api_key=served["keys"]["hadoop"], max_retries=2)
        assert ((retried.encode(texts[:1]) * local[:1]).sum()) >= 0.9999
        assert flaky.seen == [429, 200]
    finally:
        flaky.close()
    # A backfill through the provider: its own collection; search uses it.
    env = {**served["env"], "VECTOR_ASSETS_HOME": str(tmp_path / "home"), "VECTOR_ASSETS_MILVUS_URI": str(tmp_path / "home" / "milvus.db"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"), "VECTOR_ASSETS_LANDING_DIR": str(tmp_path / "landing"),
           "VECTOR_ASSETS_EMBEDDING_PROVIDER": "openai", "VECTOR_ASSETS_OPENAI_BASE_URL": served["base"] + "/v1",
           "VECTOR_ASSETS_OPENAI_MODEL": "sentence-transformers/all-MiniLM-L6-v2", "VECTOR_ASSETS_OPENAI_API_KEY": served["keys"]["all"]}
    write_jsonl(tmp_path / "landing" / "jira_issues_hadoop.jsonl", served["jira"][:8])
    out = subprocess.run([EXE, "backfill"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "failed_partitions=0" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    client = milvus_store.connect(env["VECTOR_ASSETS_MILVUS_URI"])
    try:
        names = client.list_collections()
        expected = milvus_store.collection_name("openai:sentence-transformers/all-MiniLM-L6-v2@" + served["base"] + "/v1")
        assert names == [expected] and expected != milvus_store.collection_name("sentence-transformers/all-MiniLM-L6-v2")
    finally:
        client.close()
    hits = subprocess.run([EXE, "search", "--tenant", "HADOOP", "--json", served["jira"][2]["summary"]], env=env, capture_output=True, text=True, timeout=300)
    assert hits.returncode == 0 and json.loads(hits.stdout)["hits"][0]["id"] == served["jira"][2]["id"], hits.stdout + hits.stderr
    # An endpoint answering 500 forever: the run fails, with the status and the endpoint named.
    broken = _Flaky(served["base"], [500], forever=True)
    try:
        env.update({"VECTOR_ASSETS_OPENAI_BASE_URL": broken.url + "/v1", "VECTOR_ASSETS_OPENAI_MAX_RETRIES": "2", "VECTOR_ASSETS_HOME": str(tmp_path / "home2"),
                    "VECTOR_ASSETS_MILVUS_URI": str(tmp_path / "home2" / "milvus.db"), "DAGSTER_HOME": str(tmp_path / "dagster_home2")})
        failed = subprocess.run([EXE, "backfill"], env=env, capture_output=True, text=True, timeout=600)
        assert failed.returncode != 0 and "failed_partitions=0" not in failed.stdout
        assert f"embedding endpoint {broken.url}/v1 answered 500 after 3 attempts" in failed.stdout + failed.stderr, failed.stdout[-3000:] + failed.stderr[-3000:]
        assert len(broken.seen) >= 3 and set(broken.seen) == {500}
    finally:
        broken.close()
        milvus_store.stop_local_server(str(tmp_path / "home2" / "milvus.db"))
        milvus_store.stop_local_server(str(tmp_path / "home" / "milvus.db"))


class _OtherModel:
    """An OpenAI-compatible /v1/embeddings on loopback whose vectors are another model's (the
    local model's vectors reversed: unit length, 384 dimensions, another space)."""

    def __init__(self, model):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                vectors = model.encode(texts)[:, ::-1]
                payload = json.dumps({"object": "list", "model": body["model"], "usage": {"prompt_tokens": 0, "total_tokens": 0},
                                      "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_provider_routing_by_preference_with_fallback(served, embedding_model):
    """Provider routing (issue #20 item 6, seed 002): the local model and the service's own
    /v1/embeddings (the same model) chosen by preference; a failing endpoint falls back to the
    local model; an endpoint of another model is refused before it writes anything."""
    from vector_assets.resources import RoutedEmbeddingResource

    texts = [r["summary"] for r in served["jira"][:6]]
    local = embedding_model.encode(texts)
    endpoint = {"base_url": served["base"] + "/v1", "api_model": "sentence-transformers/all-MiniLM-L6-v2", "api_key": served["keys"]["hadoop"]}
    fast = RoutedEmbeddingResource(preference="fast", **endpoint)
    assert (fast.encode(texts) * local).sum(axis=1).min() >= 0.9999
    assert fast.routed == {"local": 0, "endpoint": len(texts)} and fast.fallbacks == 0 and fast.model_id == embedding_model.model_id
    quality = RoutedEmbeddingResource(preference="quality", **endpoint)
    quality.encode(texts)
    assert quality.routed == {"local": len(texts), "endpoint": 0}
    balanced = RoutedEmbeddingResource(preference="balanced", balanced_min_texts=4, **endpoint)
    balanced.encode(texts[:2])
    balanced.encode(texts)
    assert balanced.routed == {"local": 2, "endpoint": len(texts)}

    broken = _Flaky(served["base"], [500], forever=True)
    try:
        routed = RoutedEmbeddingResource(preference="fast", **{**endpoint, "base_url": broken.url + "/v1"}, max_retries=0)
        assert (routed.encode(texts) * local).sum(axis=1).min() >= 0.9999
        assert routed.routed == {"local": len(texts), "endpoint": 0} and routed.fallbacks == 1
    finally:
        broken.close()
    other = _OtherModel(embedding_model)
    try:
        routed = RoutedEmbeddingResource(preference="fast", **{**endpoint, "base_url": other.url + "/v1"})
        assert (routed.encode(texts) * local).sum(axis=1).min() >= 0.9999
        assert routed.routed["endpoint"] == 0 and "another model" in routed.endpoint_refused
    finally:
        other.close()
    with pytest.raises(ValueError, match="preference 'cheap'"):
        RoutedEmbeddingResource(preference="cheap", **endpoint).encode(texts)
