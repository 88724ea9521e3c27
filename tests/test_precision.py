"""The model's precision (issue #20 item 3): picked per machine, vectors of bf16 in the fp32
model's space. Real model, real records of the bundled sample."""

import json

import numpy as np
import pytest

from vector_assets.embed import embedding
from vector_assets.ingest.extraction import extract_records
from vector_assets.ingest.records import LocatedRecord
from vector_assets.resources import EmbeddingModelResource

from .conftest import SAMPLE


def test_auto_picks_per_machine(monkeypatch):
    """auto: fp16 on CUDA, fp32 on a CPU (bf16 on request, where the CPU computes it natively)."""
    monkeypatch.setattr(embedding, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert embedding.pick_precision("auto", "cpu") == "fp32"
    assert embedding.pick_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(embedding, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert embedding.pick_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(embedding, "cpu_flags", lambda: {"avx2", "avx512f"})
    with pytest.raises(ValueError, match="native bfloat16"):
        embedding.pick_precision("bf16", "cpu")
    assert embedding.pick_precision("bf16", "cuda") == "bf16"
    assert embedding.pick_precision("auto", "cuda:0") == "fp16"
    assert embedding.pick_precision("fp32", "cuda") == "fp32"


@pytest.mark.parametrize("value, device, reason", [("int4", "cpu", "not one of auto, fp32, bf16, fp16"), ("fp16", "cpu", "needs a CUDA device")])
def test_a_precision_that_cannot_run_is_refused(value, device, reason):
    with pytest.raises(ValueError, match=reason):
        embedding.pick_precision(value, device)


def test_the_precision_setting_reaches_the_resource(monkeypatch):
    from vector_assets.resources import embedding_resource

    monkeypatch.setenv("VECTOR_ASSETS_PRECISION", "fp32")
    assert embedding_resource().resolved_precision == "fp32"
    monkeypatch.setenv("VECTOR_ASSETS_PRECISION", "half")
    with pytest.raises(ValueError, match="'half'"):
        embedding_resource().resolved_precision


@pytest.mark.skipif(not embedding.cpu_flags() & {"avx512_bf16", "amx_bf16"}, reason="the CPU has no native bfloat16")
def test_bf16_vectors_are_unit_length_and_close_to_fp32():
    """The sample's passages in bf16 and in fp32: unit norms in float32, cosine to fp32 above
    the coherence check's pass mark by far, and each record's nearest neighbour among the
    others the same in both (the measured tolerance: README "Encode backends")."""
    located = []
    for name in ("github_issues.jsonl", "git_commits.jsonl"):
        with open(SAMPLE / name, encoding="utf-8") as fh:
            located += [LocatedRecord(name, i, json.loads(line)) for i, line in enumerate(fh, 1) if i <= 50]
    texts = [t.text for t in EmbeddingModelResource().split_passages(extract_records(located)[0])[0]]
    fp32 = EmbeddingModelResource(precision="fp32")
    bf16 = EmbeddingModelResource(precision="bf16")
    a, b = fp32.encode(texts), bf16.encode(texts)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(a * b, axis=1)
    assert cosine.min() > 0.99, cosine.min()
    sims_a, sims_b = a @ a.T, b @ b.T
    np.fill_diagonal(sims_a, -2)
    np.fill_diagonal(sims_b, -2)
    agree = np.mean(sims_a.argmax(1) == sims_b.argmax(1))
    assert agree > 0.95, agree
    raw, normalised = bf16.encode_with_raw(texts[:8])
    assert raw.dtype == np.float32 and np.sum(normalised * b[:8], axis=1).min() > 0.999


def _sample_passages(limit: int = 50) -> list[str]:
    located = []
    for name in ("github_issues.jsonl", "git_commits.jsonl"):
        with open(SAMPLE / name, encoding="utf-8") as fh:
            located += [LocatedRecord(name, i, json.loads(line)) for i, line in enumerate(fh, 1) if i <= limit]
    return [t.text for t in EmbeddingModelResource().split_passages(extract_records(located)[0])[0]]


def test_token_batches_respect_the_budget_and_cover_every_text():
    lengths = [256, 12, 40, 256, 7, 100, 33, 300]
    batches = embedding.token_batches(lengths, 512)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 512
    assert [7] in batches  # two of its length would pass the budget: alone


def test_token_budget_batches_give_the_fixed_batches_vectors_and_halve_on_out_of_memory(monkeypatch):
    """Batches by tokens (issue #20 item 4): the same vectors as batches of 64, in input order;
    an out-of-memory error halves the budget and the batch is encoded again in smaller pieces."""
    texts = _sample_passages(40)
    fixed = EmbeddingModelResource(token_budget=0)
    by_tokens = EmbeddingModelResource(token_budget=4096)
    a, b = fixed.encode(texts), by_tokens.encode(texts)
    assert np.sum(a * b, axis=1).min() > 0.9999
    assert by_tokens.budget.tokens >= 4096 and by_tokens.budget.best_rate > 0
    # The CPU default: 4,096 tokens, not grown (README "Batches by tokens").
    default = EmbeddingModelResource(device="cpu")
    assert np.sum(a * default.encode(texts), axis=1).min() > 0.9999
    assert (default.budget.tokens, default.budget.max_tokens) == (4096, 4096)

    view = embedding._raw_view(fixed.get_model())
    real = view.encode
    seen = []

    def tight_memory(batch, **kwargs):
        seen.append(len(batch))
        if len(batch) > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(batch, **kwargs)

    monkeypatch.setattr(view, "encode", tight_memory)
    budget = embedding.TokenBudget(tokens=8192)
    raw, normalised = embedding.encode_with_raw(fixed.get_model(), texts[:20], 64, budget=budget)
    assert budget.tokens < 8192 and not budget.grow and max(seen) > 4
    assert np.sum(normalised * a[:20], axis=1).min() > 0.9999
