"""The product on a real Milvus server (issue #9 item 17): the ``milvus`` 2.3.5 standalone
server, run by ``scripts/server_tests.sh`` in a private network namespace (loopback only),
which also runs the end-to-end suites against it. Skipped when no server is given."""

import json
import os

import pytest

from vector_assets.store import milvus_store
from vector_assets.settings import DEFAULT_MODEL

from .conftest import SERVER_URI, sample_records, write_jsonl
from .test_cli import run_cli, summary

pytestmark = pytest.mark.skipif(not SERVER_URI, reason="no Milvus server (scripts/server_tests.sh runs one)")


def test_the_hadoop_sample_on_a_milvus_23_server(workspace):
    """165 HADOOP sample rows, all found by a tenant filter; checks pass; the demo query's
    best hit first; a second backfill changes nothing."""
    records = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2000-01-01", "2100-01-01")
    assert len(records) == 165
    write_jsonl(workspace["landing"] / "jira_issues_hadoop.jsonl", records)
    env = dict(os.environ)
    client = milvus_store.connect(SERVER_URI)
    assert milvus_store.server_version(client)[:2] == (2, 3) and not milvus_store.upsert_is_safe(client)

    first = run_cli("backfill", env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert summary(first.stdout)["rows_written"] == 165
    name = milvus_store.collection_name(DEFAULT_MODEL)
    assert len(client.query(name, filter='tenant == "HADOOP" and passage == 0', output_fields=["pk"], limit=1000)) == 165
    assert not milvus_store.has_bm25(client, name)  # 2.3 has no BM25: the collection is dense only
    indexes = {i: client.describe_index(name, i)["index_type"] for i in client.list_indexes(name)}
    assert indexes.get("tenant") == "Trie" and indexes.get("vector") == "HNSW", indexes

    checks = run_cli("checks", env=env)
    assert checks.returncode == 0, checks.stdout

    hit = run_cli("search", "--tenant", "HADOOP", "-k", "3", "--json", "multipart upload to S3 fails and cannot recover", env=env)
    assert hit.returncode == 0, hit.stderr
    assert json.loads(hit.stdout)["hits"][0]["id"] == "jira:HADOOP:13585039"
    hybrid = run_cli("search", "--tenant", "HADOOP", "--mode", "hybrid", "multipart upload", env=env)
    assert hybrid.returncode == 2 and hybrid.stderr.strip().splitlines() == [
        f"error: --mode hybrid needs BM25, which Milvus server 2.3.5 does not have (Milvus 2.5 or later, or Milvus Lite); collection {name} is dense only: use --mode dense"
    ], hybrid.stderr

    second = run_cli("backfill", "--all", env=env)
    stats = summary(second.stdout)
    assert second.returncode == 0 and stats["embedded"] == 0 and stats["rows_written"] == 0 and stats["skipped"] == 165
    assert milvus_store.count_records(client, name) == 165
    client.close()


def test_a_tuning_build_is_measured_only_once_the_server_serves_it_from_its_index():
    """Index tuning on a 2.3.5 server (issue #21 item 4): ``load_collection`` returns before the
    query nodes hold the sealed segments, and a search in that window is answered without the
    index (recall 1.000 for any ``nprobe``). A scratch build is measured only once every row is
    served from a segment with its index, so its recall is the index's: a small ``nprobe`` of
    a 1,024-list IVF_FLAT loses neighbours there, the largest does not. Segments too small for an
    index are waited for until loaded, not until an index that never comes."""
    import numpy as np

    from vector_assets.serving import tuning

    client = milvus_store.connect(SERVER_URI)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 64, 6000)] + 0.6 * rng.normal(size=(6000, 32)).astype(np.float32)
    rows = [{"pk": f"r{i}", "tenant": "T", "vector": v.tolist()} for i, v in enumerate(vectors)]
    name = tuning._scratch(client, rows, 32, "IVF_FLAT", {"nlist": 1024})
    try:
        segments = client._get_connection().get_query_segment_info(name)
        assert sum(s.num_rows for s in segments if s.index_name) == len(rows), segments
        queries = tuning.QuerySet(["T"] * 50, vectors[:50] + 0.3 * rng.normal(size=(50, 32)).astype(np.float32), [], [])
        m = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        for v in queries.vectors:
            scores = m @ (v / np.linalg.norm(v))
            order = np.argsort(-scores, kind="stable")[: tuning.K]
            queries.exact.append([rows[i]["pk"] for i in order])
            queries.kth.append(float(scores[order[-1]]))
        low, _, _ = tuning.measure(client, name, queries, {"nprobe": 1})
        high, _, _ = tuning.measure(client, name, queries, {"nprobe": 128})
        assert low < 0.9 and high > low, (low, high)
    finally:
        client.drop_collection(name)
    # Segments too small to get an index (100-200 rows each: 16 tenants) are served by brute
    # force: the wait ends once they are loaded, it does not wait for an index that never comes.
    small = [{"pk": f"s{i}", "tenant": f"T{i % 16}", "vector": v.tolist()} for i, v in enumerate(vectors[:1600])]
    name = tuning._scratch(client, small, 32, "HNSW", {"M": 16, "efConstruction": 64})
    try:
        segments = client._get_connection().get_query_segment_info(name)
        assert sum(s.num_rows for s in segments) == len(small) and max(s.num_rows for s in segments) < tuning.MIN_INDEXED_SEGMENT_ROWS
    finally:
        client.drop_collection(name)
        client.close()


def test_a_collection_loaded_before_its_last_index_is_loaded_again():
    """Two workers creating the collection at once can leave a 2.3 server with it loaded before
    the other's last index was made; the server then refuses every later load (seen: the
    two-Celery-worker test, every run after the first failed with "can't change the index for
    loaded collection"). ``milvus_store.load`` releases and loads it again."""
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException

    client = milvus_store.connect(SERVER_URI)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.VARCHAR, max_length=64, is_primary=True)
    schema.add_field("tenant", DataType.VARCHAR, max_length=64, is_partition_key=True)
    schema.add_field("day", DataType.VARCHAR, max_length=10)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=4)
    params = client.prepare_index_params()
    params.add_index("vector", index_type="HNSW", metric_type="COSINE", params={"M": 8, "efConstruction": 32})
    params.add_index("tenant", index_type="Trie")
    client.create_collection("loaded_early", schema=schema, index_params=params, num_partitions=4, consistency_level="Strong")
    try:
        late = client.prepare_index_params()
        late.add_index("day", index_type="Trie")
        client.create_index("loaded_early", late)  # the other worker's last index
        with pytest.raises(MilvusException, match=milvus_store.STALE_LOAD):
            client.load_collection("loaded_early")
        milvus_store.load(client, "loaded_early")
        client.insert("loaded_early", [{"pk": "a", "tenant": "T", "day": "2024-01-01", "vector": [1.0, 0.0, 0.0, 0.0]}])
        assert client.query("loaded_early", filter='tenant == "T" and day == "2024-01-01"', output_fields=["pk"]) == [{"pk": "a"}]
    finally:
        client.drop_collection("loaded_early")
        client.close()
