"""Quality rules for vectors and coverage, as plain functions (issue #3).

Every threshold lives in :class:`QualityThresholds`, with its source:

* ``000_*`` §5.2 (seed): raw model-output norm in (0.1, 10); zero-value ratio of a vector below
  50%; coherence (re-embedded vs stored cosine) >= 0.95; processing time per vector < 100 ms.
* ``001_*`` §5.2 (seed) alert thresholds: coherence below 0.90 WARN, below 0.85 ERROR;
  processing time above 150 ms WARN, above 250 ms ERROR; failure rate below 1%, above 2% WARN,
  above 5% ERROR.
* ``003_*`` (seed) success metrics: quality score ``1 - zero_rate - duplicate_rate > 0.85``
  (duplicates: distinct texts whose vectors agree to within cosine 0.9999); 100% coverage.
* Retrievability (issue #3): a stored vector searched within its tenant finds itself first,
  recall@1 >= 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
import numpy as np

from ..ingest.extraction import MAX_TEXT_CHARS


class QualityThresholds(dg.ConfigurableResource):
    """All check thresholds, in one place (see the module docstring for each source).

    A Dagster resource (``quality``), so a deployment or a launch can override any of them;
    the plain functions below take it as an argument with these defaults.
    ``coherence_sample`` stored rows per run are re-embedded to judge coherence (0: none, and a
    run that embeds nothing then loads no model).
    """

    raw_norm_min: float = 0.1
    raw_norm_max: float = 10.0
    max_zero_value_ratio: float = 0.5
    duplicate_cosine: float = 0.9999
    #: Inputs sharing at least this share of their tokens (multiset overlap over the longer) are
    #: near-identical and may share a vector (an issue filed three times whose copies differ in a
    #: timestamp deep in a pasted log: HADOOP 2021-11-02 of the shared Jira data).
    near_identical_overlap: float = 0.9
    min_quality_score: float = 0.85
    min_text_chars: int = 1
    max_text_chars: int = MAX_TEXT_CHARS  # extraction quarantines longer records alone
    coherence_pass: float = 0.95
    coherence_error: float = 0.85
    coherence_sample: int = 8
    min_recall_at_1: float = 0.99
    retrievability_sample: int = 8
    ms_per_vector_pass: float = 100.0
    ms_per_vector_error: float = 250.0
    min_vectors_for_timing: int = 32
    failure_rate_pass: float = 0.01
    failure_rate_error: float = 0.05


@dataclass
class Verdict:
    """One rule's outcome: ``passed``; ``severity`` (``ERROR`` or ``WARN``) of a failure;
    ``metadata`` with the figures."""

    passed: bool
    severity: str = "ERROR"
    metadata: dict = field(default_factory=dict)


def _near_identical(a, b, share: float) -> bool:
    """Whether sequences ``a`` and ``b`` (token ids, or texts) are equal or share at least
    ``share`` of their elements (multiset overlap over the longer one)."""
    if a == b:
        return True
    from collections import Counter

    overlap = sum((Counter(a) & Counter(b)).values())
    return overlap >= share * max(len(a), len(b), 1)


def vector_quality(raw: np.ndarray, normalised: np.ndarray, dims: dict[str, int], t: QualityThresholds | None = None, inputs: list | None = None, records: list | None = None) -> Verdict:
    """Pre-write rules on one partition's vectors.

    Args:
        raw: ``(n, d)`` float32 model output before L2 normalisation.
        normalised: ``(n, d)`` float32 vectors about to be written.
        dims: ``{"model": ..., "collection": ...}`` expected dimensions (collection may be absent
            before the collection exists).
        inputs: per row, what the model read (its text, or better the token ids within the
            model's window, :func:`vector_assets.embed.embedding.model_inputs`); rows with equal
            inputs (a cherry-picked commit, an issue filed three times, texts differing only
            in case for an uncased model or only past ``max_seq_length``), or near-identical
            ones (``near_identical_overlap`` of their tokens shared), legitimately share a
            vector and do not count as duplicates, which are *distinct* inputs with the same
            vector (seen on the full shared dataset: 5 of 9,124 tenant-days failed when
            distinct texts were compared instead).
        records: per row, the record it is a passage of; passages of one record do not count
            as duplicates of each other (a long log or stack trace repeats itself, and its
            overlapping windows can agree to within cosine 0.9999: seen on HADOOP 2021-11-02 of
            the shared Jira data, 2 of 9 passages, which failed the tenant-day).

    Fails (ERROR) on any NaN/Inf, a dimension mismatch, a raw norm outside
    ``(raw_norm_min, raw_norm_max)``, a vector with zero-value ratio >= ``max_zero_value_ratio``,
    a zero vector, or a quality score ``1 - zero_rate - duplicate_rate`` <= ``min_quality_score``.
    """
    t = t or QualityThresholds()
    n = int(normalised.shape[0]) if normalised.ndim == 2 else 0
    dim = int(normalised.shape[1]) if normalised.ndim == 2 and n else 0
    meta: dict = {"vectors": n, "dimension": dim, **{f"{k}_dimension": v for k, v in dims.items()}}
    if n == 0:
        return Verdict(True, metadata=meta)
    finite = np.isfinite(raw).all(axis=1) & np.isfinite(normalised).all(axis=1)
    norms = np.linalg.norm(np.nan_to_num(raw), axis=1)
    zero_ratio = (normalised == 0).mean(axis=1)
    zero_vectors = norms < 1e-12
    safe = np.nan_to_num(normalised)
    unit = safe / np.maximum(np.linalg.norm(safe, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -1.0)
    for i, j in np.argwhere(sims >= t.duplicate_cosine):  # few pairs: judge each
        if (records is not None and records[i] == records[j]) or (inputs is not None and _near_identical(inputs[i], inputs[j], t.near_identical_overlap)):
            sims[i, j] = -1.0
    duplicates = (sims >= t.duplicate_cosine).any(axis=1) & ~zero_vectors
    zero_rate = float(zero_vectors.mean())
    duplicate_rate = float(duplicates.mean())
    score = 1.0 - zero_rate - duplicate_rate
    meta.update(
        nan_or_inf=int((~finite).sum()),
        raw_norm_min=round(float(norms.min()), 4),
        raw_norm_max=round(float(norms.max()), 4),
        raw_norm_out_of_range=int(((norms <= t.raw_norm_min) | (norms >= t.raw_norm_max)).sum()),
        max_zero_value_ratio=round(float(zero_ratio.max()), 4),
        vectors_mostly_zero=int((zero_ratio >= t.max_zero_value_ratio).sum()),
        zero_vectors=int(zero_vectors.sum()),
        duplicate_rate=round(duplicate_rate, 4),
        quality_score=round(score, 4),
    )
    failures = []
    if meta["nan_or_inf"]:
        failures.append("NaN/Inf values")
    if any(v != dim for v in dims.values()):
        failures.append(f"dimension {dim} != {dims}")
    if meta["raw_norm_out_of_range"]:
        failures.append(f"raw norm outside ({t.raw_norm_min}, {t.raw_norm_max})")
    if meta["vectors_mostly_zero"]:
        failures.append(f"zero-value ratio >= {t.max_zero_value_ratio}")
    if meta["zero_vectors"]:
        failures.append("zero vectors")
    if score <= t.min_quality_score:
        failures.append(f"quality score {score:.3f} <= {t.min_quality_score}")
    meta["failures"] = "; ".join(failures) or "none"
    return Verdict(not failures, metadata=meta)


def graded(value: float, pass_at: float, error_at: float, higher_is_better: bool) -> Verdict:
    """Grade a figure: pass at ``pass_at`` or better, ERROR beyond ``error_at``, WARN between.

    The seeds' WARN line (``001_*`` §5.2: coherence 0.90, 150 ms, 2%) lies inside the WARN
    band, so it does not change the outcome and is not a parameter.
    """
    if higher_is_better:
        if value >= pass_at:
            return Verdict(True)
        return Verdict(False, "ERROR" if value < error_at else "WARN")
    if value < pass_at:
        return Verdict(True)
    return Verdict(False, "ERROR" if value > error_at else "WARN")
