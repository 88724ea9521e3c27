"""The model's transformer run by OpenVINO on a CPU, inside the sentence-transformers model.

Why not sentence-transformers' own ``backend="openvino"``: it needs ``optimum-intel``, which does
not install beside sentence-transformers 6.2 and transformers 5.24 here (it pins other torch and
transformers versions; README "Encode backends"). So the model is loaded by sentence-transformers
as always (tokenizer, pooling, normalisation, batching: unchanged), and only its transformer's
forward pass is handed to OpenVINO:

1. the Hugging Face model is converted with ``openvino.convert_model`` from the local weights
   (never downloaded), dynamic batch and length, and saved as OpenVINO IR under
   ``$VECTOR_ASSETS_HOME/cache/openvino`` (:func:`cached_ir`), keyed by the weights' files and
   the OpenVINO version, so that a run process reads it (0.1 s) instead of converting (1.6 s);
2. it is compiled for the CPU with an inference precision: ``bf16`` on a CPU with native
   bfloat16 (AVX-512 BF16 or AMX), else ``f32``;
3. before the model is used, :data:`PROBE_TEXTS` are encoded by torch fp32 and by OpenVINO: unless
   every cosine is at least :data:`MIN_PROBE_COSINE`, OpenVINO is not used (the vectors would not
   be the model's), and the reason is logged.

Measured on this project's 2-core CPU (AVX-512 BF16, no AMX), 800 passages of the bundled
sample: torch fp32 45.8 passages/s in batches of 64 texts; OpenVINO bf16 157.3 (3.43x) in
batches of 64 and 195.7 (4.27x) through the product's batches of 4,096 tokens; cosine to torch
fp32 mean 0.99999, min 0.99993; recall@10 unchanged on both labelled sets
(``benchmarks/encode_backends.py``, README "Encode backends").
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Texts both backends encode before OpenVINO is trusted: short and long, code and prose.
PROBE_TEXTS = (
    "Fix crash when the config file is missing",
    "Bump cookie-parser dependency to 1.0.1",
    "Bug 1904669 - Thunderbird hangs when opening a large mailbox with many threads; the profiler shows the main thread blocked in the message database while the folder pane repaints. " * 3,
    "def encode(self, texts): return self.model.encode(texts, batch_size=64)",
)
#: The least cosine to torch fp32 a probe vector may have: the threshold provider routing uses
#: for "the same model" (README "Provider routing"); bf16 measured 0.99993 at worst on 800 passages.
MIN_PROBE_COSINE = 0.999

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@functools.cache
def available() -> bool:
    """Whether the ``openvino`` package imports here (asked once per process: every resolution
    of ``backend=auto`` asks)."""
    try:
        _import_openvino()
    except ImportError:
        return False
    return True


def _import_openvino():
    """``import openvino``, with the usage telemetry of its converter off.

    ``import openvino`` imports the converter (``openvino.tools.ovc``). Without a consent file,
    the converter sends events to Google Analytics: one at import, 32 more and 2 requests for
    one conversion (measured 2026-12-02). A data pipeline loading local weights must not report
    to anyone, and the machines it runs on may have no network at all. Where this is the
    process's first import of openvino, ``openvino_telemetry`` is blocked in ``sys.modules`` for
    it, and OpenVINO falls back to ``openvino.tools.ovc.telemetry_stub``: its own no-op for
    where that package is not installed. Where openvino was imported before, :func:`_no_telemetry`
    swaps the stub in around a conversion. An openvino that cannot be imported without the
    telemetry package is imported with it (logged at WARNING): the backend is not given up for
    it. Raises ImportError when openvino is not installed.
    """
    import importlib
    import sys

    if "openvino" not in sys.modules:
        saved = sys.modules.get("openvino_telemetry")
        sys.modules["openvino_telemetry"] = None  # importing it raises ImportError: OpenVINO takes its stub
        try:
            importlib.import_module("openvino")
        except ImportError as err:
            if "openvino_telemetry" not in str(err):
                raise
            log.warning("openvino needs openvino_telemetry to import (%s); imported with it, its telemetry as configured", err)
        finally:
            if saved is None:
                del sys.modules["openvino_telemetry"]
            else:
                sys.modules["openvino_telemetry"] = saved
        if "openvino" not in sys.modules:
            importlib.import_module("openvino")
    return sys.modules["openvino"]


def cache_dir() -> Path:
    """Where converted models are kept: ``$VECTOR_ASSETS_HOME/cache/openvino``."""
    from .. import settings

    return settings.home_dir() / "cache" / "openvino"


def _weights_key(folder: str) -> str:
    """16 hex of SHA-256 over the model folder's files (names, sizes, modification times) and
    the OpenVINO and transformers versions: a new model, new weights or a new converter give a
    new IR."""
    import transformers

    openvino = _import_openvino()

    digest = hashlib.sha256(f"{openvino.__version__}|{transformers.__version__}|{os.path.realpath(folder)}".encode())
    root = Path(folder)
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}|{stat.st_size}|{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def last_hidden_state(hf_model):
    """``hf_model`` (a Hugging Face encoder) as a ``torch.nn.Module`` in eval mode whose forward
    takes ``input_ids``, ``attention_mask``, ``token_type_ids`` (positional, ``(batch, tokens)``
    int64) and returns only ``last_hidden_state`` ``(batch, tokens, hidden)``: the graph a
    converter (OpenVINO's, ``torch.onnx.export``) can trace."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    return LastHiddenState(hf_model).eval()


def cached_ir(hf_model, tokenizer, folder: str):
    """The OpenVINO model of ``hf_model`` (a Hugging Face encoder whose forward takes
    ``input_ids``, ``attention_mask``, ``token_type_ids`` and returns ``last_hidden_state``,
    ``(batch, tokens, hidden)``), read from :func:`cache_dir` or converted and saved there (full
    fp32 weights: ``compress_to_fp16=False``). The IR pair is written under temporary names and
    renamed, so a concurrent reader sees a whole file or none; where it cannot be written (a
    read-only home) the converted model is used uncached, with a warning. Raises what
    ``convert_model`` raises for a model it cannot trace."""
    import torch

    ov = _import_openvino()

    xml = cache_dir() / f"{Path(folder).name}-{_weights_key(folder)}.xml"
    core = ov.Core()
    if xml.exists() and xml.with_suffix(".bin").exists():
        return core.read_model(str(xml))
    # One process converts; the others (runs started together) wait for it and read its IR:
    # two conversions side by side on 2 cores took 10.4 s of each run's model load, against
    # 2.3 s for reading the IR.
    with _conversion_lock(xml):
        if xml.exists() and xml.with_suffix(".bin").exists():
            return core.read_model(str(xml))
        example = tokenizer(["a short text", "a somewhat longer text to pad"], return_tensors="pt", padding=True)
        if "token_type_ids" not in example:
            example["token_type_ids"] = torch.zeros_like(example["input_ids"])
        with torch.no_grad(), warnings.catch_warnings(), _no_telemetry():
            warnings.simplefilter("ignore")  # the tracer's warnings on data-dependent branches of the mask code
            model = ov.convert_model(last_hidden_state(hf_model), example_input={n: example[n] for n in INPUTS})
        tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
        try:
            xml.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(model, str(tmp), compress_to_fp16=False)
            os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
            os.replace(tmp, xml)
        except OSError as err:  # a read-only or full disk: the converted model serves all the same
            log.warning("OpenVINO: could not cache the converted model at %s (%s); converting at each load", xml, err)
        return model


#: The modules of OpenVINO's converter that send usage telemetry through ``openvino_telemetry``.
_TELEMETRY_USERS = ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.utils")


@contextlib.contextmanager
def _no_telemetry():
    """Inside the ``with`` block, OpenVINO's converter sends no usage telemetry, also where
    openvino was imported before :func:`_import_openvino` could turn it off: its modules' ``tm``
    is swapped for ``openvino.tools.ovc.telemetry_stub`` and restored after. Modules that are
    missing or have moved are left alone."""
    import importlib

    swapped = []
    try:
        stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
        for name in _TELEMETRY_USERS:
            module = importlib.import_module(name)
            if getattr(module, "tm", stub) is not stub:
                swapped.append((module, module.tm))
                module.tm = stub
    except ImportError:
        pass
    try:
        yield
    finally:
        for module, original in swapped:
            module.tm = original


@contextlib.contextmanager
def _conversion_lock(xml: Path):
    """An exclusive ``flock`` on ``<xml>.lock`` beside the cached IR for the ``with`` block;
    nothing (no wait) where the lock file cannot be created."""
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
        handle = open(xml.with_suffix(".lock"), "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def attach(st_model, folder: str, precision: str, threads: int = 0) -> str | None:
    """Run ``st_model``'s transformer (a CPU, fp32 :class:`SentenceTransformer` whose first
    module is a ``Transformer``) with OpenVINO at ``precision`` (``bf16`` or ``fp32``) on
    ``threads`` CPU threads (0: OpenVINO's default, every core), after the
    probe (see the module docstring). Returns None when attached, else why not (the model is
    left on torch): an unsupported first module, a failed conversion or compile, or a probe
    cosine under :data:`MIN_PROBE_COSINE`."""
    import torch

    transformer = st_model[0]
    hf_model = getattr(transformer, "model", None)
    if hf_model is None or not callable(getattr(hf_model, "forward", None)):
        return f"first module {type(transformer).__name__} has no transformer to hand over"
    reference = st_model.encode(list(PROBE_TEXTS), normalize_embeddings=True, show_progress_bar=False)
    try:
        ov = _import_openvino()

        ir = cached_ir(hf_model, st_model.tokenizer, folder)
        config = {"INFERENCE_PRECISION_HINT": {"bf16": "bf16", "fp32": "f32"}[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(ir, "CPU", config)
    except Exception as err:  # noqa: BLE001 - any failure leaves the model on torch, said why
        return f"OpenVINO could not convert or compile the model: {type(err).__name__}: {err}"
    request, output, lock = compiled.create_infer_request(), compiled.output(0), threading.Lock()

    def forward(input_ids, attention_mask, token_type_ids=None, **_ignored):
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        feeds["token_type_ids"] = (token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)).numpy()
        with lock:  # one infer request, used by one thread at a time (it holds all cores anyway)
            hidden = request.infer(feeds)[output].copy()
        return {"last_hidden_state": torch.from_numpy(hidden)}

    hf_model.forward = forward  # sentence-transformers calls getattr(model, "forward")
    probe = st_model.encode(list(PROBE_TEXTS), normalize_embeddings=True, show_progress_bar=False)
    cosine = float(np.min(np.sum(np.asarray(probe) * np.asarray(reference), axis=1)))
    if cosine < MIN_PROBE_COSINE:
        del hf_model.forward  # back to the class's torch forward
        return f"OpenVINO {precision} vectors are at cosine {cosine:.5f} to torch fp32 on the probe texts (< {MIN_PROBE_COSINE})"
    log.debug("OpenVINO %s attached (probe cosine min %.5f)", precision, cosine)
    return None
