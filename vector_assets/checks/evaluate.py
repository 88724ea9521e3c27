"""Per-partition evaluation of the checks, as plain functions over a run's sync results.

Each function returns ``{(tenant, day): Verdict}`` for the partitions it judged.
"""

from __future__ import annotations

import functools
import json
import random
from typing import Callable

import numpy as np

from ..store.base import SearchRequest, VectorStore
from ..embed.quality import QualityThresholds, Verdict, drift_series, drift_verdict, graded, vector_quality
from ..ingest.passages import record_pk
from ..store.sync import Collection, Embedder, PartitionChange, PartitionKey, PartitionResult


def gx_suite(t: QualityThresholds | None = None):
    """``(batch definition, suite)``: the extracted-text suite for ``t``'s text-length bounds,
    built once per process (importing Great Expectations, about 1.1 s on this 2-core CPU, is
    most of it)."""
    t = t or QualityThresholds()
    return _gx_suite(t.max_text_chars, t.min_text_chars)


@functools.lru_cache(maxsize=1)
def _gx_suite(max_chars: int, min_chars: int):
    """An ephemeral Great Expectations context with the extracted-text suite (built once)."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    try:
        context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    except Exception:  # older/newer GX without that variable: bars only, no effect on results
        pass
    batch_definition = context.data_sources.add_pandas("frames").add_dataframe_asset("extracted_text").add_batch_definition_whole_dataframe("run")
    suite = gx.ExpectationSuite("extracted_text")
    suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column="record_id"))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeUnique(column="record_id"))
    suite.add_expectation(gx.expectations.ExpectColumnPairValuesToBeEqual(column_A="tenant", column_B="partition_tenant"))
    suite.add_expectation(gx.expectations.ExpectColumnPairValuesToBeEqual(column_A="day", column_B="partition_day"))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeBetween(column="text_chars", min_value=min_chars, max_value=max_chars))
    return batch_definition, suite


def text_frame(results: dict[PartitionKey, PartitionResult], extra_rows: list[dict] | None = None):
    """The extracted-text frame of a run: one row per text with its partition's tenant and day."""
    import pandas as pd

    rows = [
        {"record_id": t.record_id, "tenant": t.tenant, "day": t.day, "partition_tenant": key[0], "partition_day": key[1], "text_chars": len(t.text)}
        for key, result in results.items()
        for t in result.texts
    ]
    return pd.DataFrame(rows + list(extra_rows or []), columns=["record_id", "tenant", "day", "partition_tenant", "partition_day", "text_chars"])


def text_frame_verdicts(frame, t: QualityThresholds | None = None) -> dict[PartitionKey, Verdict]:
    """Validate the run's extracted-text frame with Great Expectations, once, and judge each
    partition by the rows of it that failed an expectation. Metadata: the GX summary."""
    t = t or QualityThresholds()
    if frame.empty:
        return {}
    batch_definition, suite = gx_suite(t)
    frame = frame.reset_index(drop=True)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format={"result_format": "COMPLETE"})
    failed_rows: dict[str, set[int]] = {}
    for item in result.results:
        kwargs = item.expectation_config.kwargs
        columns = ",".join(str(kwargs[c]) for c in ("column", "column_A", "column_B") if c in kwargs)
        name = f"{item.expectation_config.type}({columns})"
        failed_rows[name] = set(item.result.get("unexpected_index_list") or [])
        if not item.success and not failed_rows[name]:
            failed_rows[name] = set(range(len(frame)))  # failed without row detail: all rows
    stats = result.statistics
    verdicts: dict[PartitionKey, Verdict] = {}
    for key, rows in frame.groupby(["partition_tenant", "partition_day"]).groups.items():
        rows = set(int(i) for i in rows)
        bad = {name: len(rows & idx) for name, idx in failed_rows.items() if rows & idx}
        verdicts[tuple(key)] = Verdict(
            not bad,
            metadata={
                "rows": len(rows),
                "failed_expectations": json.dumps(bad) if bad else "none",
                "gx_evaluated_expectations": int(stats["evaluated_expectations"]),
                "gx_successful_expectations_run": int(stats["successful_expectations"]),
                "gx_success_percent_run": round(float(stats["success_percent"] or 0.0), 1),
            },
        )
    return verdicts


def vector_quality_verdicts(changes: dict[PartitionKey, PartitionChange], embedder: Embedder, collection: Collection, t: QualityThresholds | None = None) -> dict[PartitionKey, Verdict]:
    """The blocking vector check (:func:`vector_assets.embed.quality.vector_quality`) on each
    tenant-day's vectors before the write: the stage *gate* between *embed* and *write*.
    Refused tenant-days are not judged (they are not written anyway). The expected dimensions
    are the model's and, when the collection exists, the collection's."""
    verdicts = {}
    for key, change in changes.items():
        if change.refused is not None:
            continue
        dims = {}
        if change.changed:
            dims["model"] = embedder.dimension
            if collection.dimension is not None:
                dims["collection"] = collection.dimension
        inputs = embedder.model_inputs([x.text for x in change.changed]) if change.changed else []
        verdicts[key] = vector_quality(change.raw, change.normalised, dims, t, inputs=inputs, records=[record_pk(x.pk) for x in change.changed])
    return verdicts


def coverage_verdicts(results: dict[PartitionKey, PartitionResult], stored: dict[PartitionKey, dict[str, str]], model_id: str) -> dict[PartitionKey, Verdict]:
    """Reconciliation per written partition: ``records_read == records + quarantined``, one
    Milvus row for every passage of every record (:mod:`vector_assets.ingest.passages`; a record that
    fits in the model's window is one passage) and no other, and every stored content hash
    equals the hash of its current passage text.

    ``stored``: ``{(tenant, day): {pk: content_hash}}`` read from Milvus after the write.
    """
    verdicts = {}
    for key, result in results.items():
        if not result.written:
            continue
        rows = stored.get(key, {})
        expected = {t.pk: t.hash_for(model_id) for t in result.texts}
        missing = [pk for pk in expected if pk not in rows]
        extra = [pk for pk in rows if pk not in expected]
        mismatched = [pk for pk, h in expected.items() if pk in rows and rows[pk] != h]
        records = result.records
        balanced = result.records_read == records + len(result.quarantined)
        ok = balanced and not missing and not extra and not mismatched
        verdicts[key] = Verdict(
            ok,
            metadata={
                "records_read": result.records_read,
                "texts": records,
                "passages": len(result.texts),
                "passages_per_record": round(len(result.texts) / records, 3) if records else 0.0,
                "quarantined": len(result.quarantined),
                "milvus_rows": len(rows),
                "missing_rows": len(missing),
                "extra_rows": len(extra),
                "hash_mismatches": len(mismatched),
                "coverage": round((len(expected) - len(missing) - len(mismatched)) / len(expected), 4) if expected else 1.0,
            },
        )
    return verdicts


def coherence_verdicts(
    results: dict[PartitionKey, PartitionResult],
    stored_vectors: dict[str, np.ndarray],
    reembed: Callable[[list[str]], np.ndarray],
    t: QualityThresholds | None = None,
    seed: int = 0,
    sample: int | None = None,
) -> dict[PartitionKey, Verdict]:
    """Stored vectors against the model now, per written partition.

    ``stored_vectors``: ``{pk: vector}`` read back from Milvus for a sample of rows. Rows
    embedded in this run are compared with the vectors computed for them (the round trip through
    Milvus, no extra encode); of the rows that were already stored, ``coherence_sample`` per run
    are re-embedded now with ``reembed`` (``sample`` overrides that number). Mean cosine graded by ``coherence_pass`` / ``coherence_error``.
    """
    t = t or QualityThresholds()
    rng = random.Random(seed)
    cosines: dict[PartitionKey, list[float]] = {}
    old: list[tuple[PartitionKey, str, str]] = []
    for key, result in results.items():
        if not result.written:
            continue
        cosines[key] = []
        for x in result.texts:
            if x.pk not in stored_vectors:
                continue
            if x.pk in result.vectors:
                cosines[key].append(float(np.dot(result.vectors[x.pk], stored_vectors[x.pk])))
            else:
                old.append((key, x.pk, x.text))
    todo = rng.sample(old, min(len(old), t.coherence_sample if sample is None else sample))
    if todo:
        now = reembed([text for _, _, text in todo])
        for (key, pk, _), vec in zip(todo, now):
            cosines[key].append(float(np.dot(vec, stored_vectors[pk])))
    verdicts = {}
    for key, values in cosines.items():
        mean = float(np.mean(values)) if values else 1.0
        verdict = graded(mean, t.coherence_pass, t.coherence_error, higher_is_better=True)
        verdict.metadata = {
            "mean_cosine": round(mean, 5),
            "min_cosine": round(min(values), 5) if values else 1.0,
            "compared": len(values),
            "reembedded": sum(1 for k, _, _ in todo if k == key),
        }
        verdicts[key] = verdict
    return verdicts


#: Vectors per search request of the retrievability check.
SEARCH_CHUNK = 256


def retrievability_verdicts(store: VectorStore, collection: str, results: dict[PartitionKey, PartitionResult], stored_vectors: dict[str, np.ndarray], t: QualityThresholds | None = None, search_params: dict | None = None, seed: int = 0, max_tenants: int = 100) -> dict[PartitionKey, Verdict]:
    """Up to ``retrievability_sample`` stored vectors per written partition, searched within
    their tenant: recall@1 (the row itself first, or a row of identical score) >= 0.99.

    Tenants are searched together, one dense search (per 256 vectors) over the union of up to
    ``max_tenants`` tenants' rows: a row first among them is first among its own tenant's, whose
    rows are a subset. A row found second there is searched again within its own tenant alone,
    so the verdicts are those of one search per tenant. One search per tenant had cost about
    10 ms of Milvus Lite a tenant, 10.2 s of a 1,000 x 30 backfill's 13.1 s of checks after the
    write (``benchmarks/org_scale.py``, 2026-12-02).

    A tenant with at least :data:`SEARCH_CHUNK` samples fills its own requests, so grouping saves
    it none, while a search over the union costs more per vector than one within a tenant: on
    Milvus Lite, 27,000 rows in 10 tenants, 256 vectors a request at ``ef`` 256, 0.86-0.95 ms a vector
    over all 10 tenants against 0.27-0.31 ms within one (``benchmarks/retrievability_search.py``,
    2026-12-03). Such tenants are searched alone."""
    t = t or QualityThresholds()
    rng = random.Random(seed)
    by_tenant: dict[str, list[tuple[PartitionKey, str]]] = {}
    for key, result in results.items():
        if not result.written:
            continue
        pks = [x.pk for x in result.texts if x.pk in stored_vectors]
        for pk in rng.sample(pks, min(len(pks), t.retrievability_sample)):
            by_tenant.setdefault(key[0], []).append((key, pk))
    found: dict[PartitionKey, list[bool]] = {k: [] for k, r in results.items() if r.written}

    def first_hits(tenant, items) -> list[tuple[PartitionKey, str, bool]]:
        out = []
        for i in range(0, len(items), SEARCH_CHUNK):
            chunk = items[i : i + SEARCH_CHUNK]
            vectors = [stored_vectors[pk].tolist() for _, pk in chunk]
            request = SearchRequest(tenant=tenant, mode="dense", texts=[""] * len(chunk), vectors=vectors, limit=1, params=dict(search_params or {"ef": 64}), strong=True)
            for (key, pk), top in zip(chunk, store.search(collection, request)):
                out.append((key, pk, bool(top) and (top[0]["pk"] == pk or float(top[0]["score"]) >= float(np.dot(stored_vectors[pk], stored_vectors[pk])) - 1e-5)))
        return out

    alone = sorted(tenant for tenant, items in by_tenant.items() if len(items) >= SEARCH_CHUNK)
    tenants = sorted(set(by_tenant) - set(alone))
    groups = [[tenant] for tenant in alone] + [tenants[g : g + max(1, max_tenants)] for g in range(0, len(tenants), max(1, max_tenants))]
    for group in groups:
        hits = first_hits(group if len(group) > 1 else group[0], [item for tenant in group for item in by_tenant[tenant]])
        again: dict[str, list[tuple[PartitionKey, str]]] = {}
        for key, pk, ok in hits:
            if ok or len(group) == 1:
                found[key].append(ok)
            else:
                again.setdefault(key[0], []).append((key, pk))
        for tenant, items in again.items():
            for key, _, ok in first_hits(tenant, items):
                found[key].append(ok)
    verdicts = {}
    for key, values in found.items():
        recall = sum(values) / len(values) if values else 1.0
        verdicts[key] = Verdict(recall >= t.min_recall_at_1, metadata={"recall_at_1": round(recall, 4), "sampled": len(values)})
    return verdicts


def day_sums(store: VectorStore, collection: str, tenant: str, first: str, last: str) -> dict[str, tuple[np.ndarray, int]]:
    """The sum and count of ``tenant``'s stored vectors per day, days ``first``..``last``
    (inclusive): ``{day: (sum (dim,) float64, count)}``."""
    return tenants_day_sums(store, collection, [tenant], first, last)[tenant]


def tenants_day_sums(store: VectorStore, collection: str, tenants: list[str], first: str, last: str) -> dict[str, dict[str, tuple[np.ndarray, int]]]:
    """:func:`day_sums` of each of ``tenants`` (``{tenant: {day: (sum, count)}}``), read in one
    query."""
    out: dict[str, dict[str, tuple[np.ndarray, int]]] = {t: {} for t in tenants}
    for row in store.rows_between(collection, tenants, first, last, ["tenant", "day", "vector"]):
        sums = out[row["tenant"]]
        total, n = sums.get(row["day"], (0.0, 0))
        sums[row["day"]] = (total + np.asarray(row["vector"], dtype=np.float64), n + 1)
    return out


def drift_verdicts(store: VectorStore, collection: str, results: dict[PartitionKey, PartitionResult], t: QualityThresholds | None = None, max_tenants: int = 100) -> dict[PartitionKey, Verdict]:
    """The ``drift`` check of each written tenant-day with records
    (:func:`vector_assets.embed.quality.drift_series` and
    :func:`~vector_assets.embed.quality.drift_verdict`), on each tenant's stored vectors from the
    history its first judged day needs to its last judged day.

    Tenants are read together, one query per group of up to ``max_tenants`` tenants whose spans
    lie close (the group's span at most twice its longest tenant's, plus 30 days); each tenant's
    sums are then cut to its own span, so the verdicts are those of one read per tenant. One read
    per tenant had cost about 16 ms of Milvus Lite a tenant at 1,000 tenants x 120 days
    (``benchmarks/org_scale.py``, 2026-12-02)."""
    import datetime as dt

    t = t or QualityThresholds()
    by_tenant: dict[str, list[str]] = {}
    for (tenant, day), result in results.items():
        if result.written and result.records_read:
            by_tenant.setdefault(tenant, []).append(day)
    reach = dt.timedelta(days=t.drift_current_days + t.drift_window_days + t.drift_history_days)
    spans = {tenant: ((dt.date.fromisoformat(min(days)) - reach), dt.date.fromisoformat(max(days))) for tenant, days in by_tenant.items()}
    groups: list[list[str]] = []
    for tenant in sorted(spans, key=lambda x: spans[x]):
        if groups and len(groups[-1]) < max_tenants:
            members = groups[-1] + [tenant]
            union = max(spans[m][1] for m in members) - min(spans[m][0] for m in members)
            if union <= 2 * max(spans[m][1] - spans[m][0] for m in members) + dt.timedelta(days=30):
                groups[-1] = members
                continue
        groups.append([tenant])
    verdicts: dict[PartitionKey, Verdict] = {}
    for group in groups:
        first, last = min(spans[m][0] for m in group).isoformat(), max(spans[m][1] for m in group).isoformat()
        sums_by_tenant = tenants_day_sums(store, collection, group, first, last)
        for tenant in group:
            lo, hi = spans[tenant][0].isoformat(), spans[tenant][1].isoformat()
            sums = {day: v for day, v in sums_by_tenant[tenant].items() if lo <= day <= hi}
            for day, point in drift_series(sums, sorted(by_tenant[tenant]), t).items():
                verdicts[(tenant, day)] = drift_verdict(point, t)
    return verdicts


def processing_time_verdict(cpu_ms_per_vector: float, vectors: int, t: QualityThresholds | None = None, wall_ms_per_vector: float | None = None) -> Verdict:
    """CPU milliseconds of the encode per embedded vector of the run: pass < 100 ms, ERROR >
    250 ms, WARN between (seed ``000_*`` §5.2 pass line, ``001_*`` §5.2 ERROR line).

    The figure is the process's CPU time (:func:`time.process_time`) spent inside the encode
    calls, divided by the vectors embedded: the work, not the machine's load. The seeds'
    thresholds were written for wall time; wall time on a busy 2-core machine WARNed on 89 of
    106 tenant-days for the same work that passes on an idle one, so wall time is reported
    (``wall_ms_per_vector``) but not graded. A run that embedded fewer than
    ``min_vectors_for_timing`` vectors is not graded (it passes, with the figure in metadata):
    its time per vector is the fixed cost of one encode call divided by a handful of vectors.
    """
    t = t or QualityThresholds()
    verdict = graded(cpu_ms_per_vector, t.ms_per_vector_pass, t.ms_per_vector_error, higher_is_better=False)
    if vectors < t.min_vectors_for_timing:
        verdict = Verdict(True)
    verdict.metadata = {"cpu_ms_per_vector": round(cpu_ms_per_vector, 2), "vectors_in_run": vectors, "graded": vectors >= t.min_vectors_for_timing}
    if wall_ms_per_vector is not None:
        verdict.metadata["wall_ms_per_vector"] = round(wall_ms_per_vector, 2)
    return verdict


def failure_rate_verdict(result: PartitionResult, t: QualityThresholds | None = None) -> Verdict:
    """Bad records / records read of one partition: pass < 1%, ERROR > 5%, WARN between.

    Superseded lines (an older version of a record exported again later: normal data, not a
    failure; issue #17 item 10) count in neither: the rate is
    ``(quarantined - superseded) / (records_read - superseded)``."""
    t = t or QualityThresholds()
    bad = result.bad_records
    read = result.records_read - result.superseded
    rate = bad / read if read > 0 else 0.0
    verdict = graded(rate, t.failure_rate_pass, t.failure_rate_error, higher_is_better=False)
    verdict.metadata = {"failure_rate": round(rate, 4), "quarantined": bad, "superseded": result.superseded, "records_read": result.records_read}
    return verdict


def stored_hashes(store: VectorStore, collection: str, keys: list[PartitionKey]) -> dict[PartitionKey, dict[str, str]]:
    """``{(tenant, day): {pk: content_hash}}`` of the rows the store holds for ``keys`` now."""
    rows = store.partition_rows(collection, keys, ["content_hash"])
    return {k: {pk: row["content_hash"] for pk, row in rows.get(k, {}).items()} for k in keys}


def sample_vectors(store: VectorStore, collection: str, results: dict[PartitionKey, PartitionResult], t: QualityThresholds | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Stored vectors of up to ``retrievability_sample`` rows per partition (``{pk: vector}``),
    read back from the store."""
    t = t or QualityThresholds()
    rng = random.Random(seed)
    pks = []
    for result in results.values():
        ids = [x.pk for x in result.texts]
        pks += rng.sample(ids, min(len(ids), max(t.retrievability_sample, 1)))
    rows = store.rows_by_pk(collection, pks, ["pk", "vector"])
    return {pk: np.asarray(row["vector"], dtype=np.float32) for pk, row in rows.items()}


def md_cell(value) -> str:
    """``value`` as the text of one Markdown table cell: a ``|`` (as in ``tenant|day``) escaped so
    it does not split the cell, line breaks as spaces."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def failure_reason(check_name: str, verdict: Verdict, result: PartitionResult | None, t: QualityThresholds) -> str:
    """One sentence saying why ``verdict`` (a failure of ``check_name`` on one tenant-day) failed,
    from its figures: the description of the tenant-day's check evaluation in the UI.

    For ``failure_rate`` it names the first bad line (file, line, reason) of ``result``; for a
    dimension mismatch, the dimensions. Empty for a passing verdict. ``t``: the thresholds the
    verdict was judged with (required: a default here once made the UI cite the defaults
    whatever the run's ``quality`` resource said).
    """
    from pathlib import PurePath

    if verdict.passed:
        return ""
    m = verdict.metadata
    if check_name == "failure_rate":
        bad = result.bad_lines if result is not None else []
        first = f"; first: {PurePath(bad[0].path).name} line {bad[0].line}: {bad[0].reason}" if bad else ""
        more = f" (and {len(bad) - 1} more in the quarantine table)" if len(bad) > 1 else ""
        return (
            f"{m.get('quarantined')} of {m.get('records_read', 0) - m.get('superseded', 0)} lines are bad "
            f"({100 * m.get('failure_rate', 0):.1f}%: WARN from {100 * t.failure_rate_pass:.0f}%, ERROR above {100 * t.failure_rate_error:.0f}%){first}{more}. "
            "Fix the lines in the landing file: the new-data sensor re-runs the tenant-day."
        )
    if check_name == "text_frame_valid":
        return f"extracted texts fail Great Expectations: {m.get('failed_expectations')} (rows per expectation); not written"
    if check_name == "vector_quality":
        return f"vectors not written: {m.get('failures')}"
    if check_name == "coverage":
        return (
            f"Milvus holds {m.get('milvus_rows')} rows for {m.get('passages')} passages: {m.get('missing_rows')} missing, "
            f"{m.get('extra_rows')} extra, {m.get('hash_mismatches')} with another content hash; records read {m.get('records_read')} = "
            f"{m.get('texts')} texts + {m.get('quarantined')} quarantined?"
        )
    if check_name == "coherence":
        return f"stored vectors differ from the model's now: mean cosine {m.get('mean_cosine')} over {m.get('compared')} rows (passes at {t.coherence_pass}, ERROR below {t.coherence_error})"
    if check_name == "retrievability":
        return f"recall@1 {m.get('recall_at_1')} over {m.get('sampled')} sampled vectors (passes at {t.min_recall_at_1})"
    if check_name == "drift":
        return (
            f"the {m.get('vectors')} vectors of the {m.get('current_days')} days to this day are further from the {m.get('window_vectors')} of the "
            f"{m.get('window_days')} days before than on any of the tenant's last {m.get('history_days')} graded days: centroid cosine distance "
            f"{m.get('centroid_cosine_distance')} (its highest before: {m.get('history_max')}, median {m.get('history_median')}). "
            "New topics, or a change of extraction or model: compare with the days around it."
        )
    if check_name == "processing_time":
        return f"encode CPU time {m.get('cpu_ms_per_vector')} ms per vector over {m.get('vectors_in_run')} vectors of the run (passes under {t.ms_per_vector_pass:.0f} ms, ERROR above {t.ms_per_vector_error:.0f} ms)"
    return ", ".join(f"{k}={v}" for k, v in m.items())
