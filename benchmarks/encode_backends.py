"""Encode backends side by side on this CPU (issue #20 item 3): speed, agreement with fp32, recall.

Backends of all-MiniLM-L6-v2 (the bundled weights, nothing downloaded):

* ``torch-fp32``: sentence-transformers as the product has always run it.
* ``torch-bf16``: the same model with its weights cast to bfloat16 (``model.to(torch.bfloat16)``);
  on CPUs with AVX-512 BF16 or AMX PyTorch's oneDNN kernels run bf16 matmuls natively.
* ``torch-autocast``: fp32 weights under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
* ``onnx-fp32``, ``onnx-int8``: ONNX Runtime on the transformer exported locally with
  ``torch.onnx.export`` (int8: ``onnxruntime.quantization.quantize_dynamic``), mean pooling and
  L2 normalisation in numpy. (sentence-transformers' own ``backend="onnx"`` needs optimum-onnx,
  which pins transformers < 5 and cannot be installed beside sentence-transformers 6.2.)
* ``openvino-fp32``, ``openvino-bf16``: OpenVINO on the same ONNX file
  (``INFERENCE_PRECISION_HINT`` f32 / bf16).
* ``openvino-int8``: the same after NNCF's post-training int8 quantisation (``nncf.quantize``,
  transformer preset, calibrated on 300 sample passages that are not among the timed ones),
  bf16 where not int8.
* ``product-torch``, ``product-openvino``: the product's own encode
  (``EmbeddingModelResource.encode``: batches of 4,096 tokens) with ``backend=torch`` fp32 (the
  CPU default before issue #20) and ``backend=openvino`` (the CPU default now: bf16 where the
  CPU has native bfloat16).

Exported files are cached under ``$VECTOR_ASSETS_HOME/exported/`` (default ``.vector_assets``).

Figures: passages/s on the bundled sample's passages (what the demo backfill embeds: their mean
length in tokens is printed) and on full 248-token windows, per core; cosine to torch-fp32
(mean and minimum); with ``--recall``, recall@10 by exact search on ../shared/data/eval_pr_commits
(all 2,548 queries, within each query's tenant, the corpus's own text) and on the long-issue
known-item set of ``benchmarks/long_issues.py`` (the long records' passages as the corpus,
best passage per record), each against torch-fp32's.

Needs ``pip install -e ".[bench]"`` (onnxruntime, onnx, onnxscript, nncf) for the ONNX and int8 rows
(a backend whose package is missing is reported as skipped).

Usage: python benchmarks/encode_backends.py [--backends B...] [--texts 800] [--windows 200]
       [--batch 64] [--recall] [--shared ../shared/data] [--json results/encode_backends.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vector_assets.embed import embedding  # noqa: E402
from vector_assets.ingest.extraction import extract_records  # noqa: E402
from vector_assets.ingest.records import LocatedRecord  # noqa: E402
from vector_assets.resources import EmbeddingModelResource  # noqa: E402
from vector_assets.settings import DEFAULT_MODEL  # noqa: E402

BACKENDS = ["torch-fp32", "torch-bf16", "torch-autocast", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8", "product-torch", "product-openvino"]


def sample_passages(limit: int) -> list[str]:
    """The passages the demo backfill embeds (the bundled sample through extraction and the
    product's passage split), the first ``limit`` of them."""
    located = []
    for path in sorted((REPO / "data" / "sample").glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            located += [LocatedRecord(str(path), i, json.loads(line)) for i, line in enumerate(fh, 1)]
    texts, _ = extract_records(located)
    return [t.text for t in EmbeddingModelResource().split_passages(texts)[0]][:limit]


def full_windows(texts: list[str], tokenizer, window: int, limit: int) -> list[str]:
    """Up to ``limit`` texts of exactly ``window`` tokens: the long sample texts cut at a window."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        if len(ids) >= window:
            out.append(tokenizer.decode(ids[:window]))
    while out and len(out) < limit:
        out += out[: limit - len(out)]
    return out[:limit]


class TorchBackend:
    """sentence-transformers, fp32, bf16 weights or bf16 autocast."""

    def __init__(self, mode: str, batch: int):
        import torch
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(embedding.resolve_model_path(DEFAULT_MODEL), device="cpu")
        if mode == "bf16":
            self.model.to(torch.bfloat16)
        self.autocast = mode == "autocast"
        self.batch = batch

    def encode(self, texts: list[str]) -> np.ndarray:
        import contextlib

        import torch

        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with ctx, torch.inference_mode():
            out = self.model.encode(texts, batch_size=self.batch, normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
        out = out.float().numpy()  # normalised in bf16: normalised again in fp32, as the product does
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def export_onnx(cache: Path) -> Path:
    """The model's transformer exported to ONNX (cached): inputs ``input_ids``,
    ``attention_mask``, ``token_type_ids`` of dynamic batch and length; output the last hidden
    state."""
    path = cache / "model.onnx"
    if path.exists():
        return path
    import torch
    from transformers import AutoModel, AutoTokenizer

    cache.mkdir(parents=True, exist_ok=True)
    folder = embedding.resolve_model_path(DEFAULT_MODEL)
    model = AutoModel.from_pretrained(folder).eval()
    dummy = AutoTokenizer.from_pretrained(folder)(["a short text", "a somewhat longer text to pad"], return_tensors="pt", padding=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"last_hidden_state": {0: "batch", 1: "sequence"}}

    from vector_assets.embed.openvino_backend import last_hidden_state

    torch.onnx.export(last_hidden_state(model), tuple(dummy[n] for n in names), str(path), input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def quantize_int8(fp32: Path) -> Path:
    """Dynamic int8 quantisation of the exported model (cached)."""
    path = fp32.with_name("model_int8.onnx")
    if not path.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    return path


class ProductBackend:
    """The product's encode, ``EmbeddingModelResource(backend=...).encode`` on the CPU."""

    def __init__(self, backend: str):
        self.resource = EmbeddingModelResource(device="cpu", backend=backend, precision="fp32" if backend == "torch" else "auto")
        self.resource.get_model()

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.resource.encode(texts)


def quantize_nncf(fp32: Path, calibration: list[str]) -> Path:
    """NNCF int8 post-training quantisation of the exported model for OpenVINO (cached):
    transformer preset, calibrated on ``calibration`` in batches of 8."""
    path = fp32.with_name("model_nncf_int8.xml")
    if path.exists():
        return path
    import nncf
    import openvino as ov

    tokenizer, limit = embedding.load_tokenizer(DEFAULT_MODEL)
    data = []
    for start in range(0, len(calibration), 8):
        enc = tokenizer(calibration[start : start + 8], padding=True, truncation=True, max_length=limit, return_tensors="np")
        data.append({n: enc[n].astype(np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")})
    quantized = nncf.quantize(ov.Core().read_model(str(fp32)), nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data))
    ov.save_model(quantized, str(path))
    return path


class GraphBackend:
    """ONNX Runtime or OpenVINO on the exported transformer; tokenisation, mean pooling and L2
    normalisation as sentence-transformers does them (max 256 tokens, texts sorted by length so
    batches pad little)."""

    def __init__(self, kind: str, path: Path, batch: int, precision: str = "f32"):
        self.tokenizer, self.limit = embedding.load_tokenizer(DEFAULT_MODEL)
        self.batch = batch
        if kind == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = os.cpu_count() or 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.run = lambda feeds: session.run(["last_hidden_state"], feeds)[0]
        else:
            import openvino as ov

            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            self.run = lambda feeds: request.infer(feeds)[compiled.output(0)].copy()

    def encode(self, texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), self.batch):
            idx = order[start : start + self.batch]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.limit, return_tensors="np")
            feeds = {n: enc[n].astype(np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")}
            hidden = self.run(feeds)
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


def make(name: str, batch: int, cache: Path, calibration: list[str] = ()):
    """The backend ``name`` (see :data:`BACKENDS`); raises ImportError when its package is missing."""
    family, mode = name.split("-")
    if family == "product":
        return ProductBackend(mode)
    if family == "torch":
        return TorchBackend(mode, batch)
    onnx_path = export_onnx(cache)
    if family == "onnx":
        return GraphBackend("onnx", quantize_int8(onnx_path) if mode == "int8" else onnx_path, batch)
    if mode == "int8":
        return GraphBackend("openvino", quantize_nncf(onnx_path, list(calibration)), batch, precision="bf16")
    return GraphBackend("openvino", onnx_path, batch, precision={"fp32": "f32", "bf16": "bf16"}[mode])


def timed(backend, texts: list[str], repeat: int = 2) -> tuple[float, np.ndarray]:
    """Best texts/s of ``repeat`` passes (after one warm-up batch) and the vectors."""
    backend.encode(texts[:16])
    best, vectors = 0.0, None
    for _ in range(repeat):
        started = time.perf_counter()
        vectors = backend.encode(texts)
        best = max(best, len(texts) / (time.perf_counter() - started))
    return best, vectors


def recall_sets(shared: Path, tokenizer) -> dict:
    """The two recall sets: ``{"eval_pr_commits": (queries, corpus, relevant), "long_issues": ...}``,
    each query ``{"id", "tenant", "text"}``, corpus ``{"id", "tenant", "doc", "text"}`` (``doc``:
    the record a passage belongs to), relevant ``{query id: set of doc ids}``."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from long_issues import build_set, extracted_texts

    base = shared / "eval_pr_commits"
    corpus = [json.loads(line) for line in open(base / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(line) for line in open(base / "queries.jsonl", encoding="utf-8")]
    relevant = defaultdict(set)
    for line in open(base / "qrels.jsonl", encoding="utf-8"):
        row = json.loads(line)
        if int(row.get("score", 1)) > 0:
            relevant[row["query-id"] if "query-id" in row else row["query_id"]].add(row["corpus-id"] if "corpus-id" in row else row["corpus_id"])
    commits = (
        [{"id": q["_id"], "tenant": q["tenant"], "text": q["text"]} for q in queries],
        [{"id": d["_id"], "tenant": d["tenant"], "doc": d["_id"], "text": d["text"]} for d in corpus],
        dict(relevant),
    )
    long_queries, _ = build_set(shared)
    answers = {q["answer"] for q in long_queries}
    records = [text for text in extracted_texts(shared) if text.record_id in answers]
    passages = EmbeddingModelResource().split_passages(records)[0]
    issues = (
        [{"id": q["id"], "tenant": q["tenant"], "text": q["text"]} for q in long_queries],
        [{"id": p.pk, "tenant": p.tenant, "doc": p.record_id, "text": p.text} for p in passages],
        {q["id"]: {q["answer"]} for q in long_queries},
    )
    return {"eval_pr_commits": commits, "long_issues": issues}


def recall_at_10(query_vectors: np.ndarray, corpus_vectors: np.ndarray, queries: list[dict], corpus: list[dict], relevant: dict) -> float:
    """Mean recall@10 of exact (cosine) search within each query's tenant, documents ranked by
    their best passage."""
    by_tenant = defaultdict(list)
    for i, row in enumerate(corpus):
        by_tenant[row["tenant"]].append(i)
    total, n = 0.0, 0
    for qi, query in enumerate(queries):
        rel = relevant.get(query["id"])
        rows = by_tenant.get(query["tenant"])
        if not rel or not rows:
            continue
        scores = corpus_vectors[rows] @ query_vectors[qi]
        ranked, seen = [], set()
        for j in np.argsort(-scores):
            doc = corpus[rows[j]]["doc"]
            if doc not in seen:
                seen.add(doc)
                ranked.append(doc)
                if len(ranked) == 10:
                    break
        total += len(rel & set(ranked)) / len(rel)
        n += 1
    return total / n if n else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    parser.add_argument("--texts", type=int, default=800, help="sample passages timed (default 800)")
    parser.add_argument("--windows", type=int, default=200, help="full 248-token windows timed (default 200)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--recall", action="store_true", help="also score recall@10 on both sets (minutes per backend)")
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--json", default=str(REPO / "results" / "encode_backends.json"))
    args = parser.parse_args()
    cache = Path(os.environ.get("VECTOR_ASSETS_HOME", REPO / ".vector_assets")) / "exported" / DEFAULT_MODEL.replace("/", "__")
    tokenizer, limit = embedding.load_tokenizer(DEFAULT_MODEL)
    texts = sample_passages(args.texts + 300)
    texts, calibration = texts[: args.texts], texts[args.texts :]
    window = limit - 8
    windows = full_windows(texts, tokenizer, window, args.windows)
    tokens = [len(x) for x in tokenizer(texts, add_special_tokens=True, truncation=True, max_length=limit, verbose=False)["input_ids"]]
    cores = len(os.sched_getaffinity(0))
    flags = open("/proc/cpuinfo").read().split()
    print(f"{len(texts)} sample passages (mean {np.mean(tokens):.0f} tokens), {len(windows)} windows of {window} tokens; {cores} cores; "
          f"CPU flags: {', '.join(f for f in ('avx512_vnni', 'avx512_bf16', 'amx_bf16', 'amx_int8') if f in flags) or 'none of avx512_vnni/bf16, amx'}")
    sets = recall_sets(Path(args.shared), tokenizer) if args.recall else {}
    reference: dict[str, np.ndarray] = {}
    rows = []
    print(f"{'backend':16} {'texts/s':>8} {'per core':>8} {'windows/s':>9} {'vs fp32':>7} {'cos mean':>8} {'cos min':>8}" + "".join(f" {name + ' R@10':>22}" for name in sets))
    for name in args.backends:
        try:
            backend = make(name, args.batch, cache, calibration)
        except ImportError as err:
            print(f"{name:16} skipped: {err}")
            continue
        rate, vectors = timed(backend, texts)
        window_rate, _ = timed(backend, windows, repeat=1)
        row = {"backend": name, "texts_per_s": round(rate, 1), "per_core": round(rate / cores, 1), "windows_per_s": round(window_rate, 1)}
        if name == "torch-fp32":
            reference["speed"] = rate
            reference["sample"] = vectors
        if "sample" in reference:
            cos = np.sum(vectors * reference["sample"], axis=1)
            row |= {"vs_fp32": round(rate / reference["speed"], 2), "cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5)}
        for set_name, (queries, corpus, relevant) in sets.items():
            q = backend.encode([x["text"] for x in queries])
            c = backend.encode([x["text"] for x in corpus])
            row[f"recall@10 {set_name}"] = round(recall_at_10(q, c, queries, corpus, relevant), 4)
        rows.append(row)
        print(f"{name:16} {row['texts_per_s']:8.1f} {row['per_core']:8.1f} {row['windows_per_s']:9.1f} {row.get('vs_fp32', 0):7.2f} {row.get('cosine_mean', 0):8.5f} {row.get('cosine_min', 0):8.5f}"
              + "".join(f" {row[f'recall@10 {s}']:22.4f}" for s in sets), flush=True)
        del backend
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"texts": len(texts), "mean_tokens": float(np.mean(tokens)), "windows": len(windows), "cores": cores, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
