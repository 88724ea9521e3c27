"""The model's precision (issue #20 item 3): picked per machine, vectors of bf16 in the fp32
model's space. Real model, real records of the bundled sample."""

import json
import os

import numpy as np
import pytest

from vector_assets.embed import embedding
from vector_assets.ingest.extraction import extract_records
from vector_assets.ingest.records import LocatedRecord
from vector_assets.resources import EmbeddingModelResource

from .conftest import SAMPLE


def test_auto_picks_per_machine(monkeypatch):
    """auto: fp16 on CUDA; on a CPU bf16 with OpenVINO where the CPU computes it natively, else
    fp32 (torch bf16 on request only)."""
    monkeypatch.setattr(embedding, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert embedding.pick_precision("auto", "cpu") == "fp32"
    assert embedding.pick_precision("auto", "cpu", "openvino") == "bf16"
    assert embedding.pick_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(embedding, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert embedding.pick_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(embedding, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert embedding.pick_precision("auto", "cpu", "openvino") == "fp32"
    with pytest.raises(ValueError, match="native bfloat16"):
        embedding.pick_precision("bf16", "cpu")
    assert embedding.pick_precision("bf16", "cuda") == "bf16"
    assert embedding.pick_precision("auto", "cuda:0") == "fp16"
    assert embedding.pick_precision("fp32", "cuda") == "fp32"


def test_auto_picks_openvino_on_a_cpu_where_it_is_installed(monkeypatch):
    from vector_assets.embed import openvino_backend

    assert embedding.pick_backend("auto", "cpu") == "openvino"  # a dependency: installed by make install
    assert embedding.pick_backend("auto", "cuda") == "torch"
    assert embedding.pick_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="runs on a CPU"):
        embedding.pick_backend("openvino", "cuda")
    with pytest.raises(ValueError, match="not one of auto, torch, openvino"):
        embedding.pick_backend("onnx", "cpu")
    monkeypatch.setattr(openvino_backend, "available", lambda: False)
    assert embedding.pick_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="pip install openvino"):
        embedding.pick_backend("openvino", "cpu")
    monkeypatch.setenv("VECTOR_ASSETS_BACKEND", "torch")
    from vector_assets.resources import embedding_resource

    assert embedding_resource().encoder == "torch-fp32"


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


def test_tokenized_texts_answer_as_the_tokenizer_does():
    """Each text is tokenised once per resource (issue #20: a run asked the tokenizer four
    times per text); the answers equal the tokenizer's own, for texts the model truncates too."""
    texts = _sample_passages(60)
    long = " ".join(["Thunderbird hangs when opening a large mailbox"] * 80)  # > 256 tokens
    texts = texts + [long, texts[0], long.upper()]
    tokenizer, limit = embedding.load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    model = EmbeddingModelResource()
    cached = model.tokenized
    assert model.model_inputs(texts) == embedding.model_inputs(tokenizer, limit, texts)
    assert model.truncated_flags(texts) == embedding.truncated_flags(tokenizer, limit, texts)
    assert sum(model.truncated_flags([long])) == 1 and len(model.model_inputs([long])[0]) == limit
    assert [len(ids) for ids in cached.arrays(texts)] == [min(n, limit) for n in tokenizer(texts, truncation=False, return_length=True)["length"]]
    assert cached.tokenizer_calls == 1  # every later question was answered from the first call
    # The ids are fed to the model as they are: the vectors of sentence-transformers' own encode
    # of the same batches (which tokenises again).
    view = embedding._raw_view(model.get_model())
    fed = embedding._encode_by_tokens(view, texts, embedding.TokenBudget(tokens=4096, grow=False), cached.arrays(texts))
    again = embedding._encode_by_tokens(view, texts, embedding.TokenBudget(tokens=4096, grow=False))
    assert fed.shape == (len(texts), 384) and np.abs(fed - again).max() < 1e-5
    assert cached.tokenizer_calls == 1
    # Ids that are not what the model's own preprocessing gives (a module that lower-cases or
    # adds a prompt would do that) are not fed: the texts go through encode as before.
    from sentence_transformers import SentenceTransformer

    other = SentenceTransformer(modules=list(view), device="cpu")
    wrong = [ids[1:] for ids in cached.arrays(texts)]
    assert not embedding._ids_are_the_models(other, texts, wrong) and embedding._ids_are_the_models(view, texts, cached.arrays(texts))
    assert np.abs(embedding._encode_by_tokens(other, texts, embedding.TokenBudget(tokens=4096, grow=False), wrong) - again).max() < 1e-5
    # At most max_texts kept, oldest first out; answers stay right past it.
    small = embedding.TokenizedTexts(tokenizer, limit, max_texts=10)
    assert small.inputs(texts) == embedding.model_inputs(tokenizer, limit, texts)
    assert len(small._known) == 10 and small.inputs(texts[-1:]) == embedding.model_inputs(tokenizer, limit, texts[-1:])
    assert small.tokenizer_calls == 1  # the newest text was kept
    assert small.inputs(texts[:1]) == embedding.model_inputs(tokenizer, limit, texts[:1]) and small.tokenizer_calls == 2  # the oldest was not


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


def test_openvino_vectors_are_torch_fp32_vectors_within_the_measured_tolerance(tmp_path, monkeypatch):
    """OpenVINO (the CPU default where installed): the sample's passages against torch fp32,
    cosine >= 0.999 (measured 0.99993 at worst on 800 passages, README "Encode backends"), the
    same nearest neighbours, unit norms; the converted model is cached and read back."""
    from vector_assets.embed import openvino_backend

    monkeypatch.setenv("VECTOR_ASSETS_HOME", str(tmp_path))
    texts = _sample_passages(50)
    reference = EmbeddingModelResource(backend="torch", precision="fp32").encode(texts)
    precision = "bf16" if embedding.native_bf16() else "fp32"
    model = embedding.load_model.__wrapped__(embedding.DEFAULT_MODEL, "cpu", precision, "openvino")
    assert embedding.OPENVINO_REFUSED.get((embedding.DEFAULT_MODEL, precision)) is None
    assert "forward" in vars(model[0].model)  # the transformer's forward is OpenVINO's
    assert len(list((tmp_path / "cache" / "openvino").glob("*.xml"))) == 1
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    cosine = np.sum(vectors * reference, axis=1)
    assert cosine.min() >= openvino_backend.MIN_PROBE_COSINE, cosine.min()
    sims_a, sims_b = reference @ reference.T, vectors @ vectors.T
    np.fill_diagonal(sims_a, -2)
    np.fill_diagonal(sims_b, -2)
    assert np.mean(sims_a.argmax(1) == sims_b.argmax(1)) > 0.95
    # A second load reads the cached model (no conversion).
    monkeypatch.setattr("openvino.convert_model", lambda *a, **k: pytest.fail("converted again"))
    again = embedding.load_model.__wrapped__(embedding.DEFAULT_MODEL, "cpu", precision, "openvino")
    assert np.sum(again.encode(texts[:8], normalize_embeddings=True) * vectors[:8], axis=1).min() > 0.9999


def test_openvino_is_refused_when_its_probe_vectors_are_not_the_models(tmp_path, monkeypatch):
    """A backend whose vectors leave the model's space is not used: the model stays torch fp32
    and the reason is recorded (here: a probe threshold no backend can pass)."""
    from sentence_transformers import SentenceTransformer

    from vector_assets.embed import openvino_backend

    monkeypatch.setenv("VECTOR_ASSETS_HOME", str(tmp_path))
    monkeypatch.setattr(openvino_backend, "MIN_PROBE_COSINE", 1.01)
    folder = embedding.resolve_model_path(embedding.DEFAULT_MODEL)
    model = SentenceTransformer(folder, device="cpu")
    before = model.encode(["Fix crash when the config file is missing"])
    refused = openvino_backend.attach(model, folder, "fp32")
    assert refused and "cosine" in refused and "< 1.01" in refused
    assert "forward" not in vars(model[0].model)
    assert np.array_equal(model.encode(["Fix crash when the config file is missing"]), before)


def test_openvino_serves_uncached_where_the_cache_cannot_be_written(tmp_path, monkeypatch):
    """A home that cannot be written (here: the cache path runs through a file) costs the
    conversion at each load, not the backend."""
    from sentence_transformers import SentenceTransformer

    from vector_assets.embed import openvino_backend

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(openvino_backend, "cache_dir", lambda: blocker / "openvino")
    folder = embedding.resolve_model_path(embedding.DEFAULT_MODEL)
    model = SentenceTransformer(folder, device="cpu")
    assert openvino_backend.attach(model, folder, "fp32") is None
    assert "forward" in vars(model[0].model) and not (blocker / "openvino").exists()


def test_encode_threads_reach_openvino_and_one_process_converts_at_a_time(tmp_path, monkeypatch):
    """``VECTOR_ASSETS_ENCODE_THREADS`` becomes OpenVINO's ``INFERENCE_NUM_THREADS``; a bad value
    is refused naming the variable. Loads started together convert the model once: the others
    wait on the lock beside the cache and read the IR it wrote."""
    import threading

    import openvino as ov
    from sentence_transformers import SentenceTransformer

    from vector_assets import settings
    from vector_assets.embed import openvino_backend

    for bad in ("two", "-1"):
        monkeypatch.setenv("VECTOR_ASSETS_ENCODE_THREADS", bad)
        with pytest.raises(ValueError, match="VECTOR_ASSETS_ENCODE_THREADS"):
            settings.encode_threads()
    monkeypatch.setenv("VECTOR_ASSETS_ENCODE_THREADS", "1")
    assert settings.encode_threads() == 1

    monkeypatch.setenv("VECTOR_ASSETS_HOME", str(tmp_path))
    configs, conversions = [], []
    compile_model, convert_model = ov.Core.compile_model, ov.convert_model

    def compiled(self, model, device, config=None):
        configs.append(dict(config or {}))
        return compile_model(self, model, device, config or {})

    def converted(*args, **kwargs):
        conversions.append(threading.get_ident())
        return convert_model(*args, **kwargs)

    monkeypatch.setattr(ov.Core, "compile_model", compiled)
    monkeypatch.setattr(ov, "convert_model", converted)
    folder = embedding.resolve_model_path(embedding.DEFAULT_MODEL)
    models = [SentenceTransformer(folder, device="cpu") for _ in range(2)]
    refused = [None, None]

    def load(i):
        refused[i] = openvino_backend.attach(models[i], folder, "fp32", threads=settings.encode_threads())

    workers = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert refused == [None, None]
    assert len(conversions) == 1 and [c["INFERENCE_NUM_THREADS"] for c in configs] == [1, 1]
    assert len(list((tmp_path / "cache" / "openvino").glob("*.xml"))) == 1


_TELEMETRY_PROBE = """
import sys
import openvino_telemetry
from openvino_telemetry.backend import backend_ga4
calls = []
openvino_telemetry.Telemetry.send_event = lambda self, *a, **k: calls.append(a)
backend_ga4.GA4Backend.send = lambda self, *a, **k: calls.append(a)
from sentence_transformers import SentenceTransformer
from vector_assets.embed import embedding, openvino_backend
assert openvino_backend.available()
folder = embedding.resolve_model_path(embedding.DEFAULT_MODEL)
assert openvino_backend.attach(SentenceTransformer(folder, device="cpu"), folder, "fp32") is None
assert list(openvino_backend.cache_dir().glob("*.xml"))  # converted here, in a fresh home
print("telemetry events:", len(calls))
"""


def test_openvino_sends_no_telemetry_when_it_loads_or_converts(tmp_path):
    """OpenVINO's converter reports usage to Google Analytics unless a consent file says no (33
    events for an import and a conversion, measured): the product imports openvino with its
    telemetry package blocked, so the converter uses OpenVINO's own stub. A fresh interpreter
    (openvino not imported yet), a fresh cache (the model is converted): no event."""
    import subprocess
    import sys

    env = {**os.environ, "VECTOR_ASSETS_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("CI", None)  # openvino_telemetry keeps quiet on CI machines by itself
    out = subprocess.run([sys.executable, "-c", _TELEMETRY_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "telemetry events: 0" in out.stdout, out.stdout
