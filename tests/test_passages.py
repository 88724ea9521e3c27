"""Long texts in passages and hybrid search (issue #11): real model, Milvus Lite, real Jira
records of the bundled sample."""

import re

import numpy as np

import pytest

from vector_assets.embed import embedding
from vector_assets.store import milvus_store
from vector_assets.ingest.extraction import extract_issue_tracker
from vector_assets.serving.search import SearchError, search

from .conftest import sample_records, write_jsonl
from .test_pipeline import COLLECTION, materialize_days, materialize_index

FIRST, LAST = "2024-07-01", "2024-07-31"


def tokens(text):
    tokenizer, _ = embedding.load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]


@pytest.fixture
def long_issues(workspace):
    """HADOOP's July 2024 issues, and the ones whose text runs past 400 tokens."""
    records = sample_records("jira_issues_hadoop.jsonl", "HADOOP", FIRST, LAST)
    long = [r for r in records if len(tokens(extract_issue_tracker(r))) > 400]
    assert len(long) >= 2, "the slice needs long issues"
    write_jsonl(workspace["landing"] / "jira.jsonl", records)
    return records, long


def late_sentence(record, after=300, words=14):
    """Some words of ``record``'s text starting after its ``after``-th token."""
    text = extract_issue_tracker(record)
    start = tokens(text)[after][0]
    return " ".join(text[start:].split()[1 : 1 + words])


def rows_of_record(client, record_id):
    return client.query(COLLECTION, filter=f"record_id == {milvus_store.quote(record_id)}", output_fields=["pk", "passage", "text", "content_hash"], limit=1000)


def test_a_record_is_found_by_a_sentence_past_its_first_window(resources, instance, long_issues, milvus_client, embedding_model):
    records, long = long_issues
    materialize_index(resources, instance)
    materialize_days(resources, instance, "HADOOP", FIRST, LAST)
    for record in long:
        rows = rows_of_record(milvus_client, record["id"])
        assert len(rows) > 1 and sorted(r["passage"] for r in rows) == list(range(len(rows)))
        text = extract_issue_tracker(record)
        assert all(r["text"] in text for r in rows)  # each passage is a window of the text
    found = 0
    for record in long:
        hits = search(milvus_client, COLLECTION, embedding_model, "HADOOP", [late_sentence(record)], k=10, mode="dense")[0]
        mine = [h for h in hits if h.id == record["id"]]
        found += bool(mine and mine[0].passage > 0)
        assert len({h.id for h in hits}) == len(hits)  # hits are records, each once
    # A single vector of the first 256 tokens cannot see these sentences; its passages do.
    assert found >= max(1, len(long) // 2), (found, len(long))


def test_an_edited_long_record_re_embeds_only_itself_and_a_deleted_one_leaves_no_passage(resources, instance, workspace, long_issues, milvus_client):
    records, long = long_issues
    materialize_index(resources, instance)
    materialize_days(resources, instance, "HADOOP", FIRST, LAST)
    victim, edited_one = long[0], long[1]
    old_rows = rows_of_record(milvus_client, edited_one["id"])
    victim_rows = rows_of_record(milvus_client, victim["id"])
    assert len(victim_rows) > 1
    edited = dict(edited_one, description="A short description now: the old text is gone.")
    write_jsonl(workspace["landing"] / "jira.jsonl", [edited if r is edited_one else r for r in records if r is not victim])
    materialize_index(resources, instance)
    out = materialize_days(resources, instance, "HADOOP", FIRST, LAST)
    vectors = [m for (asset, _), m in out.items() if asset == "milvus_vectors"]
    assert sum(m.get("embedded", 0) for m in vectors) == 1
    assert sum(m.get("deleted", 0) for m in vectors) == 1
    new_rows = rows_of_record(milvus_client, edited_one["id"])
    # Every passage of the deleted record, and the edited record's passages it no longer has.
    assert sum(m.get("passages_deleted", 0) for m in vectors) == len(victim_rows) + len(old_rows) - len(new_rows)
    assert rows_of_record(milvus_client, victim["id"]) == []
    new_text = extract_issue_tracker(edited)
    assert new_rows and all(r["text"] in new_text for r in new_rows)
    assert not {r["content_hash"] for r in old_rows} & {r["content_hash"] for r in new_rows if r["passage"] > 0}
    assert len(new_rows) < len(old_rows)


def identifiers(records):
    """Identifier-like tokens (letters and digits mixed, or CamelCase, 8+ characters) that occur
    in exactly one record's text: the queries an engineer types."""
    seen = {}
    for r in records:
        text = extract_issue_tracker(r)
        words = {w for w in re.findall(r"\b[A-Za-z][A-Za-z0-9_]{7,}\b", text) if re.search(r"\d", w) or re.search(r"[a-z][A-Z]", w)}
        for word in words | set(re.findall(r"\b[A-Z]{2,}-\d{3,}\b", text)):  # and issue keys
            seen.setdefault(word, set()).add(r["id"])
    return {w: ids.pop() for w, ids in seen.items() if len(ids) == 1}


def test_hybrid_finds_a_record_by_an_exact_identifier_that_dense_misses(resources, instance, workspace, milvus_client, embedding_model):
    records = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2000-01-01", "2100-01-01")  # all 165
    write_jsonl(workspace["landing"] / "jira.jsonl", records)
    materialize_index(resources, instance)
    days = sorted({r["day"] for r in records})
    materialize_days(resources, instance, "HADOOP", days[0], days[-1])
    queries = sorted(identifiers(records).items())
    assert len(queries) >= 20
    rank = {}
    for mode in ("dense", "hybrid"):
        hits = search(milvus_client, COLLECTION, embedding_model, "HADOOP", [q for q, _ in queries], k=10, mode=mode)
        rank[mode] = {q: [h.id for h in found].index(rid) if rid in [h.id for h in found] else None for (q, rid), found in zip(queries, hits)}
    rescued = [q for q, _ in queries if rank["dense"][q] is None and rank["hybrid"][q] is not None]
    assert rescued, rank
    assert sum(r is not None for r in rank["hybrid"].values()) > sum(r is not None for r in rank["dense"].values())
    # Weighted fusion: with all weight on BM25, BM25's hits come first in BM25's order (dense
    # fills the rest when BM25 matches fewer than k records; ties may swap); an unknown fusion is refused.
    texts = [q for q, _ in queries[:5]]
    weighted = search(milvus_client, COLLECTION, embedding_model, "HADOOP", texts, k=5, mode="hybrid", fusion="weighted:0")
    bm25 = search(milvus_client, COLLECTION, embedding_model, "HADOOP", texts, k=5, mode="bm25")
    for by_weight, by_bm25 in zip(weighted, bm25):
        assert by_bm25 and {h.id for h in by_weight[: len(by_bm25)]} == {h.id for h in by_bm25}
    with pytest.raises(SearchError, match="unknown fusion"):
        search(milvus_client, COLLECTION, embedding_model, "HADOOP", texts, mode="hybrid", fusion="weighted:2")


def test_bm25_modes_on_a_dense_only_collection_are_a_one_line_error(resources, instance, long_issues, milvus_client, embedding_model, monkeypatch):
    monkeypatch.setattr(milvus_store, "bm25_supported", lambda client: False)
    materialize_index(resources, instance)
    materialize_days(resources, instance, "HADOOP", FIRST, "2024-07-05")
    assert not milvus_store.has_bm25(milvus_client, COLLECTION)
    for mode in ("bm25", "hybrid"):
        with pytest.raises(SearchError, match=f"^--mode {mode} needs BM25, which this store does not have") as err:
            search(milvus_client, COLLECTION, embedding_model, "HADOOP", ["namenode"], mode=mode)
        assert "\n" not in str(err.value)
    assert search(milvus_client, COLLECTION, embedding_model, "HADOOP", ["namenode"], k=3)[0]  # dense unchanged


def test_passages_of_one_record_are_not_duplicates_of_each_other():
    """The duplicate rule counts distinct records whose vectors agree (cosine >= 0.9999), not the
    overlapping windows of one repetitive record (a long log), which agree legitimately."""
    from vector_assets.embed.quality import vector_quality

    rng = np.random.default_rng(7)
    base = rng.normal(size=(4, 384)).astype(np.float32)
    raw = np.vstack([base, base[0] + 1e-4])  # row 4 is row 0 again, from a different window
    raw = raw / np.linalg.norm(raw, axis=1, keepdims=True) * 1.9
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    inputs = [(i,) for i in range(5)]
    same_record = vector_quality(raw, unit, {"model": 384}, inputs=inputs, records=["a", "b", "c", "d", "a"])
    other_record = vector_quality(raw, unit, {"model": 384}, inputs=inputs, records=["a", "b", "c", "d", "e"])
    assert same_record.passed and same_record.metadata["duplicate_rate"] == 0.0
    assert not other_record.passed and other_record.metadata["duplicate_rate"] == 0.4


def test_near_identical_copies_of_an_issue_are_not_duplicates(embedding_model):
    """HADOOP 2021-11-02 of the shared Jira data: one issue filed three times, the copies
    differing in a timestamp of a pasted log; their windows agree to within cosine 0.9999. Copies
    that share >= 90% of their tokens are not duplicates; distinct texts still are."""
    from vector_assets.embed.quality import vector_quality

    log = "\\n".join(f"[2021-10-27T17:52:{s:02d}.814Z] ERROR: jira-json (No such file or directory) at Yetus step {s}" for s in range(12))
    texts = [log, log.replace("17:52:03", "17:53:03"), "Erasure coding: reconstruct a lost block from parity in the DataNode"]
    raw, unit = embedding_model.encode_with_raw(texts)
    inputs = embedding_model.model_inputs(texts)
    assert inputs[0] != inputs[1] and float(unit[0] @ unit[1]) >= 0.999
    verdict = vector_quality(raw, unit, {"model": 384}, inputs=inputs, records=["a", "b", "c"])
    assert verdict.passed and verdict.metadata["duplicate_rate"] == 0.0
    collapsed = np.vstack([unit[0], unit[0] + 1e-6, unit[2]])  # a broken model: distinct texts, one vector
    broken = vector_quality(collapsed, collapsed, {"model": 384}, inputs=[inputs[0], inputs[2], inputs[1]], records=["a", "c", "b"])
    assert not broken.passed and broken.metadata["duplicate_rate"] > 0
