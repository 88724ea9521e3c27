"""Vectors bound to their model: a model switch writes a new collection, search keeps
answering from the old one until the new one is complete, and switching back embeds nothing."""

import dagster as dg
import pytest

from vector_assets.store import milvus_store
from vector_assets.settings import DEFAULT_MODEL
from vector_assets.resources import EmbeddingModelResource
from vector_assets.serving.search import search

from .conftest import sample_records, write_jsonl
from .test_pipeline import materialize_days, materialize_index

OLD = milvus_store.collection_name(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def projected_model(tmp_path_factory, embedding_model):
    """A second, real sentence-transformers model: all-MiniLM-L6-v2 followed by a fixed random
    384->128 projection (another vector space, another dimension), saved to a folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    base = embedding_model.get_model()
    torch.manual_seed(0)
    dense = models.Dense(384, 128, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[base[0], base[1], dense, models.Normalize()], device="cpu")
    path = tmp_path_factory.mktemp("models") / "minilm-proj128"
    model.save(str(path))
    return EmbeddingModelResource(model=str(path))


def days_of(records):
    return sorted({r["day"] for r in records})


def test_model_switch_uses_new_collection_and_cuts_over_when_complete(resources, instance, workspace, store, projected_model, embedding_model):
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-06")
    bugs = sample_records("bugzilla_seamonkey.jsonl", "SeaMonkey", "2024-01-01", "2024-01-20")
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)
    write_jsonl(workspace["landing"] / "bugs.jsonl", bugs)
    materialize_index(resources, instance)
    materialize_days(resources, instance, "HADOOP", days_of(jira)[0], days_of(jira)[-1])
    materialize_days(resources, instance, "SeaMonkey", days_of(bugs)[0], days_of(bugs)[-1])
    alias = resources["milvus"].search_alias
    assert store.alias_target(alias) == OLD

    switched = {**resources, "embedding_model": projected_model}
    new = resources["milvus"].collection_for(projected_model.model_id)
    assert new != OLD
    out = materialize_days(switched, instance, "HADOOP", days_of(jira)[0], days_of(jira)[-1])
    assert sum(m.get("embedded", 0) for (a, _), m in out.items() if a == "milvus_vectors") == len(jira)
    assert store.collection_dimension(new) == 128
    assert store.collection_model(new) == projected_model.model_id
    # Incomplete (SeaMonkey not yet re-embedded): search still answers from the old collection,
    # which is untouched.
    assert store.alias_target(alias) == OLD
    assert store.count_rows(OLD, records=True) == len(jira) + len(bugs)
    hits = search(store, alias, embedding_model, "SeaMonkey", [bugs[0]["summary"]], k=1)[0]
    assert hits[0].id == bugs[0]["id"]

    materialize_days(switched, instance, "SeaMonkey", days_of(bugs)[0], days_of(bugs)[-1])
    assert store.alias_target(alias) == new
    assert store.count_rows(new, records=True) == len(jira) + len(bugs)
    hits = search(store, alias, projected_model, "HADOOP", [jira[0]["summary"]], k=1)[0]
    assert hits[0].id == jira[0]["id"]

    # Back to the first model: its collection is complete and current, nothing is embedded.
    back = materialize_days(resources, instance, "HADOOP", days_of(jira)[0], days_of(jira)[-1])
    back.update(materialize_days(resources, instance, "SeaMonkey", days_of(bugs)[0], days_of(bugs)[-1]))
    vec = [m for (a, _), m in back.items() if a == "milvus_vectors"]
    assert sum(m.get("embedded", 0) for m in vec) == 0 and sum(m.get("skipped_unchanged", 0) for m in vec) == len(jira) + len(bugs)
    assert store.alias_target(alias) == OLD


def test_unchanged_rematerialisation_loads_no_model(resources, instance, workspace):
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-04")
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)
    materialize_index(resources, instance)
    materialize_days(resources, instance, "HADOOP", days_of(jira)[0], days_of(jira)[-1])
    fresh = EmbeddingModelResource()  # a resource whose model would have to be loaded
    from vector_assets.embed import embedding

    embedding.load_model.cache_clear()
    out = materialize_days({**resources, "embedding_model": fresh}, instance, "HADOOP", days_of(jira)[0], days_of(jira)[-1])
    assert sum(m.get("embedded", 0) for (a, _), m in out.items() if a == "milvus_vectors") == 0
    assert embedding.load_model.cache_info().currsize == 0, "no model may be loaded when nothing changed"
