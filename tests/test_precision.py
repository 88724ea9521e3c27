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
