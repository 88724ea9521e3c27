"""The assets end to end on real records: the real model, Milvus Lite (or the Milvus 2.3.5 server,
or PostgreSQL + pgvector: ``VECTOR_ASSETS_TEST_STORE``) and a Dagster instance."""

import json

import dagster as dg
import pytest

from vector_assets.embed import embedding

from vector_assets.store import milvus_store
from vector_assets.settings import DEFAULT_MODEL
from vector_assets.assets import landing_index, tenant_day_vectors
from vector_assets.ingest.extraction import extract_records
from vector_assets.ingest.records import LocatedRecord, primary_key
from vector_assets.serving.search import SearchError, as_store, search

from .conftest import run_events, sample_records, write_jsonl

COLLECTION = milvus_store.collection_name(DEFAULT_MODEL)


def materialize_index(resources, instance):
    result = dg.materialize([landing_index], resources=resources, instance=instance)
    assert result.success
    return result.get_asset_materialization_events()[0].event_specific_data.materialization.metadata


def materialize_days(resources, instance, tenant, first, last=None):
    tags = {"dagster/asset_partition_range_start": f"{first}|{tenant}", "dagster/asset_partition_range_end": f"{last or first}|{tenant}"}
    result = dg.materialize([tenant_day_vectors], resources=resources, instance=instance, tags=tags, raise_on_error=True)
    assert result.success
    out = {}
    for event in run_events(instance, result.run_id, "ASSET_MATERIALIZATION"):
        mat = event.event_specific_data.materialization
        out[(mat.asset_key.to_user_string(), mat.partition)] = {k: v.value for k, v in mat.metadata.items()}
    return out


def rows_of(store, tenant, day=None, passages=False):
    """The tenant's records (their passage-0 rows), or with ``passages`` every row, read
    through the store interface (Milvus or pgvector)."""
    rows = as_store(store).rows_between(COLLECTION, tenant, day or "0000-00-00", day or "9999-99-99", ["pk", "day", "record_id", "content_hash", "model", "passage"])
    return [r for r in rows if passages or r["passage"] == 0]


def test_one_partition_end_to_end(resources, instance, hadoop_days, store, monkeypatch):
    monkeypatch.setenv("VECTOR_ASSETS_PRICE_PER_MTOK", "0.02")  # a configured price: the cost figure
    meta = materialize_index(resources, instance)
    assert meta["tenants_registered"].value == 1
    assert instance.get_dynamic_partitions("tenants") == ["HADOOP"]
    day = hadoop_days[0]["day"]
    expected = [r for r in hadoop_days if r["day"] == day]
    out = materialize_days(resources, instance, "HADOOP", day)
    key = f"{day}|HADOOP"
    assert out[("source_records", key)]["records_read"] == len(expected)
    assert out[("extracted_text", key)]["texts"] == len(expected)
    assert out[("milvus_vectors", key)]["embedded"] == len(expected)
    # The tokens the model read: each passage's own, counted by the model's tokenizer.
    vectors = out[("milvus_vectors", key)]
    tokenizer, window = resources["embedding_model"].tokenizer_and_window()
    texts = [t.text for t in resources["embedding_model"].split_passages(extract_records([LocatedRecord("x", i, r) for i, r in enumerate(expected, 1)])[0])[0]]
    assert vectors["tokens_embedded"] == sum(min(len(tokenizer(x)["input_ids"]), window) for x in texts) > vectors["passages_embedded"]
    assert vectors["embedding_cost_usd"] == pytest.approx(vectors["tokens_embedded"] * 0.02 / 1e6) and vectors["embedding_cost_usd"] > 0
    # What encoded them: on a CPU with the openvino package, OpenVINO (bf16 where native).
    assert vectors["encoder"] == resources["embedding_model"].encoder
    assert vectors["encoder"] == ("openvino-bf16" if embedding.native_bf16() else "openvino-fp32")
    rows = rows_of(store, "HADOOP")
    assert sorted(r["record_id"] for r in rows) == sorted(r["id"] for r in expected)
    assert all(r["day"] == day and r["model"] == "sentence-transformers/all-MiniLM-L6-v2" for r in rows)
    assert {r["pk"] for r in rows} == {primary_key("HADOOP", "jira_issue", r["id"]) for r in expected}


def test_rematerialisation_is_idempotent_and_moves_records(resources, instance, hadoop_days, workspace, store):
    materialize_index(resources, instance)
    first, last = hadoop_days[0]["day"], hadoop_days[-1]["day"]
    out = materialize_days(resources, instance, "HADOOP", first, last)
    assert sum(m.get("embedded", 0) for (a, _), m in out.items() if a == "milvus_vectors") == len(hadoop_days)
    before = sorted((r["pk"], r["day"], r["content_hash"]) for r in rows_of(store, "HADOOP", passages=True))
    assert len(rows_of(store, "HADOOP")) == len(hadoop_days) < len(before)  # long issues have passages

    again = materialize_days(resources, instance, "HADOOP", first, last)
    vec = [m for (a, _), m in again.items() if a == "milvus_vectors"]
    assert sum(m.get("embedded", 0) for m in vec) == 0
    assert sum(m.get("skipped_unchanged", 0) for m in vec) == len(hadoop_days)
    assert sorted((r["pk"], r["day"], r["content_hash"]) for r in rows_of(store, "HADOOP", passages=True)) == before

    # The first record moves to a later day (its export now has a new timestamp).
    moved = dict(hadoop_days[0], created_at=hadoop_days[-1]["created_at"])
    write_jsonl(workspace["landing"] / "jira.jsonl", [moved] + hadoop_days[1:])
    materialize_index(resources, instance)
    materialize_days(resources, instance, "HADOOP", first)
    materialize_days(resources, instance, "HADOOP", last)
    assert moved["id"] not in {r["record_id"] for r in rows_of(store, "HADOOP", first)}
    assert moved["id"] in {r["record_id"] for r in rows_of(store, "HADOOP", last)}
    assert len(rows_of(store, "HADOOP")) == len(hadoop_days)


def test_deleted_and_edited_records_propagate(resources, instance, workspace, store):
    bugs = sample_records("bugzilla_seamonkey.jsonl", "SeaMonkey", "2024-01-01", "2024-01-31")
    write_jsonl(workspace["landing"] / "bugs.jsonl", bugs)
    materialize_index(resources, instance)
    day = max({r["day"] for r in bugs}, key=lambda d: sum(r["day"] == d for r in bugs))
    same_day = [r for r in bugs if r["day"] == day]
    assert len(same_day) >= 3, "the slice needs a day with three records"
    materialize_days(resources, instance, "SeaMonkey", day)
    edited = dict(same_day[1], summary=same_day[1]["summary"] + " (edited)")
    rest = [r for r in bugs if r["day"] != day]
    write_jsonl(workspace["landing"] / "bugs.jsonl", [edited] + same_day[2:] + rest)  # same_day[0] deleted
    materialize_index(resources, instance)
    out = materialize_days(resources, instance, "SeaMonkey", day)[("milvus_vectors", f"{day}|SeaMonkey")]
    assert out["embedded"] == 1
    assert out["deleted"] == 1
    assert out["skipped_unchanged"] == len(same_day) - 2
    assert {r["record_id"] for r in rows_of(store, "SeaMonkey", day)} == {r["id"] for r in same_day[1:]}


def test_dimension_comes_from_the_model(resources, instance, hadoop_days, store, embedding_model):
    materialize_index(resources, instance)
    materialize_days(resources, instance, "HADOOP", hadoop_days[0]["day"])
    dim = embedding_model.get_model().get_embedding_dimension()
    assert store.collection_dimension(COLLECTION) == dim == 384
    with pytest.raises(ValueError, match="384-dimensional"):
        resources["milvus"].ensure_collection(embedding_model.model_id, dim + 1)


def test_bad_input_is_quarantined_and_good_records_land(resources, instance, workspace, store):
    good = sample_records("bugzilla_seamonkey.jsonl", "SeaMonkey", "2024-01-01", "2024-01-31")
    day = good[0]["day"]
    no_id = {k: v for k, v in good[0].items() if k != "id"}
    unknown = dict(good[0], id="bugzilla:SeaMonkey:x1", source="trello")
    empty = dict(good[0], id="bugzilla:SeaMonkey:x2", summary="", description="<!-- nothing -->")
    path = write_jsonl(
        workspace["landing"] / "bugs.jsonl",
        good + [no_id, unknown, empty],
        raw_lines=['{"id": "broken", "tenant": "SeaMonkey", ', json.dumps({"id": "x3", "source": "jira", "summary": "no tenant"})],
    )
    meta = materialize_index(resources, instance)
    assert meta["unattributed_lines"].value == 2
    unattributed = resources["landing"].index().quarantined("", "")
    assert [(u["line"], u["reason"].split(":")[0]) for u in unattributed] == [(len(good) + 4, "malformed JSON"), (len(good) + 5, "record has no tenant")]
    assert all(u["file"] == str(path.resolve()) for u in unattributed)

    out = materialize_days(resources, instance, "SeaMonkey", day)
    src = out[("source_records", f"{day}|SeaMonkey")]
    assert src["quarantined"] == 3
    assert "record has no id" in src["quarantine"] and "unknown record kind" in src["quarantine"]
    bad = resources["landing"].index().quarantined("SeaMonkey", day)
    assert all(b["raw"] for b in bad) and json.loads(bad[0]["raw"])["tenant"] == "SeaMonkey"
    assert sorted(b["line"] for b in bad) == [len(good) + 1, len(good) + 2, len(good) + 3]
    assert {b["reason"] for b in bad} >= {"record has no id", "extracted text is empty"}
    assert {r["record_id"] for r in rows_of(store, "SeaMonkey", day)} == {r["id"] for r in good if r["day"] == day}


def test_search_is_isolated_per_tenant(resources, instance, workspace, store, embedding_model):
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-05")
    commits = sample_records("git_commits.jsonl", "pallets/flask", "2024-01-01", "2024-01-10")
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)
    write_jsonl(workspace["landing"] / "git.jsonl", commits)
    materialize_index(resources, instance)
    materialize_days(resources, instance, "HADOOP", "2024-07-01", "2024-07-05")
    materialize_days(resources, instance, "pallets/flask", "2024-01-01", "2024-01-10")
    # A query that is about Flask, asked within HADOOP, must return only HADOOP records.
    hits = search(store, COLLECTION, embedding_model, "HADOOP", [commits[0]["subject"]], k=50)[0]
    assert hits and all(h.id.startswith("jira:HADOOP:") for h in hits)
    assert len(hits) == len(jira)
    own = search(store, COLLECTION, embedding_model, "pallets/flask", [commits[0]["message"]], k=3)[0]
    assert own[0].id == f"git:pallets/flask:{commits[0]['sha']}"
    with pytest.raises(SearchError, match="unknown tenant"):
        search(store, COLLECTION, embedding_model, "psf/requests", ["x"])
    with pytest.raises(SearchError, match="empty query"):
        search(store, COLLECTION, embedding_model, "HADOOP", [" "])
