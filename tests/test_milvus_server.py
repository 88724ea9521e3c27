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
