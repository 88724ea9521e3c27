"""Records -> extracted text -> embeddings in Milvus, per tenant-day.

The three assets are computed by one multi-asset step so that a run covering many
tenant-days reads them in one pass and loads the model once. How a run is recorded in Dagster
(issue #10):

* A run covers a range of days of one tenant, or the rectangle of several tenants' days
  (``BackfillPolicy.single_run``: a UI backfill is one run per rectangle of the tenant-days it
  targets, :func:`vector_assets.partitions.tile_rectangles`). The step records one
  materialisation of each asset for every tenant-day of the range it wrote, a day without
  records too (it is in sync, empty), with its data provenance (code version, data versions:
  nothing is "Unsynced" after a run) and its dimension tags, stored straight through the
  instance in batches (:func:`vector_assets.instance.runs.record_step_events`; Dagster's own
  expansion of a ranged output into per-partition events cost more than storing them, issue #20).
* Each tenant-day's figures (records read, texts, embedded, unchanged, deleted, truncated,
  quarantined) are the metadata of its own materialisation (days with records or deletes; an
  empty day has none), so the UI shows them per partition and ``vector-assets status`` reads
  them back.
* Checks are partitioned like the assets: one evaluation of each check per tenant-day with
  records or deletes, recorded in batches (:mod:`vector_assets.checks.outcomes`), so that each
  tenant-day keeps its own status in the UI. A tenant-day that fails a blocking check is not
  written; the run then records materialisations for the written tenant-days only, and fails
  (not retried: the input is at fault).
"""


import datetime as dt
import functools
import time
from collections.abc import Mapping

import dagster as dg

from .. import settings
from ..checks import evaluate, outcomes
from ..checks.specs import CHECK_SPECS, CHECKS
from ..embed.quality import QualityThresholds, Verdict
from ..instance import launch, runs
from ..keys import ASSET_KEYS, EXTRACTED_TEXT, MILVUS_VECTORS, SOURCE_RECORDS
from ..local import freeze_startup_objects
from ..partitions import make_key, split_key, tenant_day_partitions
from ..resources import EmbeddingModelResource, LandingResource, MilvusResource
from ..store import milvus_store, sync
from ..store.sync import PartitionKey, PartitionResult
from .landing_index import record_refresh


class TenantDayConfig(dg.Config):
    """Run configuration of the tenant-day step.

    Attributes:
        delete_vanished_tenants: delete the rows of tenants that no longer have any line in the
            landing data. Off by default, so that an empty or unmounted landing directory
            never deletes a tenant's vectors: such partitions are refused and the run fails,
            naming them and the rows that would be deleted.
    """

    delete_vanished_tenants: bool = False

#: Bumped when extraction or row layout changes (part of every asset's code_version).
PIPELINE_VERSION = "1"


_CODE_VERSION = {
    SOURCE_RECORDS: PIPELINE_VERSION,
    EXTRACTED_TEXT: PIPELINE_VERSION,
    MILVUS_VECTORS: f"{PIPELINE_VERSION}:{settings.model_name()}",
}


def _quarantine_table(result: PartitionResult, limit: int = 20, bad_only: bool = False) -> str:
    """The tenant-day's quarantined lines as a Markdown table: reason first (the widest column,
    kept readable at the UI's widths), then the line number and the file's name (its folder in
    the ``quarantine`` files). ``bad_only``: without superseded lines."""
    from pathlib import PurePath

    lines = result.bad_lines if bad_only else result.quarantined
    rows = ["| reason | line | file |", "|---|---:|---|"]
    rows += [f"| {evaluate.md_cell(b.reason)} | {b.line} | {evaluate.md_cell(PurePath(b.path).name)} |" for b in lines[:limit]]
    if len(lines) > limit:
        rows.append(f"| … {len(lines) - limit} more: `vector-assets quarantine --tenant {result.tenant} --day {result.day}` | | |")
    return "\n".join(rows)


def partition_metadata(result: PartitionResult, model_id: str, seconds_per_text: float, encoder: str = "") -> dict[dg.AssetKey, dict]:
    """The metadata of each asset's materialisation for one tenant-day; ``encoder`` (what
    embedded its passages, e.g. ``openvino-bf16``: ``EmbeddingModelResource.encoder``) is listed
    when it embedded any."""
    # Bad records only: superseded versions (listed in the same table, with their reason) are
    # normal data (issue #17 item 10).
    quarantine = {"quarantined": result.bad_records}
    if result.quarantined:
        quarantine["quarantine"] = dg.MetadataValue.md(_quarantine_table(result))
    texts = result.texts
    return {
        SOURCE_RECORDS: {"records_read": result.records_read, "superseded": result.superseded, **quarantine},
        EXTRACTED_TEXT: {
            "texts": result.records,
            "passages": len(texts),
            "records_split": result.records_split,
            "passages_cut": result.passages_cut,
            "mean_chars": round(sum(len(t.text) for t in texts) / len(texts), 1) if texts else 0.0,
            "kinds": ", ".join(sorted({t.kind for t in texts})) or "none",
            **quarantine,
        },
        MILVUS_VECTORS: {
            "rows": result.rows,
            "embedded": result.embedded,
            "passages_embedded": result.passages_embedded,
            "tokens_embedded": result.tokens_embedded,
            "embedding_cost_usd": settings.embedding_cost_usd(result.tokens_embedded),
            "passages_deleted": result.passages_deleted,
            "truncated": result.truncated,
            "skipped_unchanged": result.skipped,
            "moved_in": result.moved,
            "deleted": result.deleted,
            "model": model_id,
            **({"encoder": encoder} if encoder and result.passages_embedded else {}),
            "encode_seconds_est": round(seconds_per_text * result.passages_embedded, 4),
        },
    }


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            SOURCE_RECORDS,
            deps=["landing_index"],
            description="Records of one tenant-day in the landing data (read through the landing index); bad records are quarantined with file, line and reason.",
            kinds={"json"},
            group_name="vectors",
            code_version=_CODE_VERSION[SOURCE_RECORDS],
            skippable=True,
        ),
        dg.AssetSpec(
            EXTRACTED_TEXT,
            deps=[SOURCE_RECORDS],
            description="Text extracted per record kind (issue: summary, description, labels, versions, comments; commit: message and files), markup and whitespace normalised.",
            kinds={"python"},
            group_name="vectors",
            code_version=_CODE_VERSION[EXTRACTED_TEXT],
            skippable=True,
        ),
        dg.AssetSpec(
            MILVUS_VECTORS,
            deps=[EXTRACTED_TEXT],
            description="L2-normalised sentence-transformers embeddings of the extracted texts, upserted into the model's Milvus collection; only new and changed texts are embedded, rows of records gone from the partition are deleted.",
            kinds={"milvus", "pytorch"},
            group_name="vectors",
            code_version=_CODE_VERSION[MILVUS_VECTORS],
            skippable=True,
        ),
    ],
    check_specs=CHECK_SPECS,
    name="tenant_day_vectors",
    partitions_def=tenant_day_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    pool="milvus_writes",
)
def tenant_day_vectors(
    context: dg.AssetExecutionContext,
    config: TenantDayConfig,
    landing: LandingResource,
    embedding_model: EmbeddingModelResource,
    milvus: MilvusResource,
    quality: QualityThresholds,
):
    """Materialise each tenant-day of the run through the stages of :mod:`vector_assets.store.sync`
    (read, extract, gate the texts, embed what changed, gate the vectors, write, judge, record):
    a materialisation of each asset per tenant-day (derived by Dagster from the run's range) and
    one evaluation of each check per judged tenant-day (see the module docstring)."""
    started = time.perf_counter()
    freeze_startup_objects()  # full collections walk the start-up objects no more (vector_assets.local)
    settings.pool_storage_connections(context.instance)  # this step writes many events
    # Which process holds this run's pool slot: a run whose process dies is failed and its slot
    # freed by vector_assets.instance.runs.fail_dead_runs.
    context.instance.add_run_tags(context.run_id, runs.process_tags())
    keys = [split_key(k) for k in context.partition_keys]
    # A retry of this step must not reuse a client whose server went away (a restarted local
    # Milvus Lite server listens on another port).
    milvus.reset_client()
    record_refresh(context.instance, landing, landing.refresh(), f"tenant_day_vectors run {context.run_id}", context.log)
    index = landing.index()
    model_id = embedding_model.model_id
    cpu_before = embedding_model.stats.cpu_seconds

    # read, extract
    extracted = sync.extract_partitions(index.read_partitions(keys))
    index.write_quarantine({k: r.quarantined for k, r in extracted.items()})
    # gate (texts): the run's text frame, once, before passages and any Milvus work
    text_verdicts = evaluate.text_frame_verdicts(evaluate.text_frame(extracted), quality)
    results = sync.split_into_passages(extracted, embedding_model)
    # embed
    try:
        collection = sync.open_collection(milvus, model_id, index.source)
    except milvus_store.SourceMismatchError as err:
        # No retry heals it: the run reads another landing folder than the collection's.
        raise dg.Failure(description=str(err), allow_retries=False) from None
    plan = sync.plan_embeddings(results, collection, model_id, index)
    embedded = sync.embed_texts(plan, embedding_model, log=context.log.info)
    vanished = set() if config.delete_vanished_tenants else index.vanished_among(t for t, _ in keys)
    changes = sync.partition_changes(results, plan, embedded, vanished)
    for change in changes.values():
        if change.refused:
            context.log.warning(change.refused)
    # gate (vectors)
    vector_verdicts = evaluate.vector_quality_verdicts(changes, embedding_model, collection, quality)
    allowed = gate(changes, text_verdicts, vector_verdicts, context.log)
    # write
    outcome = sync.write_partitions(milvus, collection, model_id, index, results, changes, allowed, embedded)
    results = outcome.results
    stats = embedding_model.stats
    per_text = stats.seconds / stats.texts if stats.texts else 0.0
    encoder = getattr(embedding_model, "encoder", "") if stats.texts else ""  # resolving it loads nothing; only said when it encoded
    encode_cpu_s = stats.cpu_seconds - cpu_before  # the run's own encode (not the checks' re-embeds)
    # judge
    verdicts = {name: {} for name in CHECKS}
    verdicts["text_frame_valid"] = text_verdicts
    verdicts["vector_quality"] = vector_verdicts
    verdicts.update(judge(results, milvus, embedding_model, quality, reembed_sample=bool(stats.texts)))
    # Per vector: a record of several passages is several vectors.
    vectors = sum(r.passages_embedded for r in results.values())
    run_timing = evaluate.processing_time_verdict(
        1000.0 * encode_cpu_s / vectors if vectors else 0.0, vectors, quality,
        wall_ms_per_vector=1000.0 * (embedded.encode_s + outcome.write_s) / vectors if vectors else 0.0,
    )
    # Graded once for the run; listed under the tenant-days that embedded vectors.
    verdicts["processing_time"] = {k: run_timing for k, r in results.items() if r.written and r.embedded and (r.records_read or r.deleted)}
    # record: the materialisations, then the check evaluations, then the synced marks
    figures = {
        key: partition_metadata(result, model_id, per_text, encoder)
        for key, result in results.items() if result.written and (result.records_read or result.deleted)
    }
    yield from runs.record_step_events(context, materializations(results, figures))
    evaluations, failed_checks, blocked = check_evaluations(context.instance, context.run_id, results, verdicts, run_timing, quality)
    yield from outcomes.record_evaluations(context, evaluations)
    launch.report_run_totals(context, recorded_totals(results, figures), launch.failed_at_error(evaluations))
    # Only now, with the materialisations recorded, are the written partitions recorded as
    # synced: a crash before this line leaves them to be run again, never skipped unmaterialised.
    # (A blocking check's failure is raised below, after this.)
    sync.record_synced(index, milvus, model_id, results)
    moved = sync.cut_over_search_alias(
        index, milvus, model_id, settings.start_date(), dt.datetime.now(dt.timezone.utc).date().isoformat(),
        gate=lambda old, new: logged_refusal(context.log, milvus.search_alias, old, retrieval_gate(landing, milvus, embedding_model, old, new)),
    )
    if moved:
        context.log.info(moved)
    if blocked:
        # No re-run heals it (the input or the model is at fault): not retried.
        raise dg.Failure(
            description=f"blocking checks failed at ERROR for {len(blocked)} tenant-days, not written: {', '.join(f'{t}|{d}' for t, d in sorted(blocked)[:10])}",
            metadata={"checks_failed": ", ".join(failed_checks)},
            allow_retries=False,
        )
    refused = [r for r in results.values() if r.refused]
    if refused:
        raise dg.Failure(
            description=f"{len(refused)} tenant-days refused: {refused[0].refused}",
            metadata={"refused": dg.MetadataValue.md("\n".join(f"- {r.tenant}|{r.day}: {r.refused}" for r in refused[:50]))},
            allow_retries=False,
        )
    context.log.info(run_summary(results, failed_checks, stats, encode_cpu_s, time.perf_counter() - started))


def logged_refusal(log, alias: str, old: str, refused: str | None) -> str | None:
    """Log a refused cut-over at WARNING (the alias, the collection it stays on, why); returns ``refused``."""
    if refused:
        log.warning(f"search alias {alias} stays on {old}: {refused}")
    return refused


def retrieval_gate(landing: LandingResource, milvus: MilvusResource, embedding_model: EmbeddingModelResource, old: str, new: str) -> str | None:
    """Why the search alias must not move from collection ``old`` to the complete collection
    ``new`` (``embedding_model``'s), or None: a tenant whose golden queries lose
    :func:`~vector_assets.serving.retrieval.cut_over_tolerance` or more of recall@10 or MRR@10 in
    any mode on ``new`` (issue #21). Every tenant of the landing data with golden queries is
    compared, each collection searched with its own model. The outcome is kept in the state
    database with both collections' row counts: while they and the tolerance stay the same, later
    runs reuse it instead of searching again."""
    from .. import state
    from ..resources import embedding_resource
    from ..serving import retrieval

    import json

    import sqlalchemy as sa

    store = milvus.get_store()
    engine = state.engine(landing.database_url())
    # A refusal is remembered with both collections' row counts and the tolerance: the runs that
    # follow it do not search every tenant's golden queries again until one of them changes.
    memo_key = f"cutover_gate:{new}"[:64]
    seen = json.dumps([old, new, store.count_rows(old), store.count_rows(new), retrieval.cut_over_tolerance()])
    with engine.begin() as conn:
        row = conn.execute(sa.select(state.meta.c.value).where(state.meta.c.key == memo_key)).scalar()
    if row is not None and json.loads(row)["seen"] == seen:
        return json.loads(row)["refused"]
    old_model = store.collection_model(old)
    old_embedder = embedding_model if old_model in (None, embedding_model.model_id) else embedding_resource(old_model)
    index = landing.index()
    comparisons = retrieval.compare(engine, index, store, old, new, old_embedder, embedding_model, index.tenants())
    losses = [loss for c in comparisons for loss in c.losses(retrieval.cut_over_tolerance())]
    refused = f"{new} loses retrieval quality on golden queries (tolerance {retrieval.cut_over_tolerance():.2f}): " + "; ".join(losses[:20]) if losses else None
    with engine.begin() as conn:
        state.upsert(conn, state.meta, [{"key": memo_key, "value": json.dumps({"seen": seen, "refused": refused})}], ["key"])
    return refused


def gate(changes: dict[PartitionKey, sync.PartitionChange], text_verdicts: dict, vector_verdicts: dict, log) -> set[PartitionKey]:
    """The tenant-days let through to the write: not refused, their texts valid (a tenant-day
    without a text verdict had no text to judge) and their vectors passing the blocking vector
    check. Each one held back is logged at ERROR with the vector check's failures."""
    allowed = set()
    for key, change in changes.items():
        if change.refused is not None:
            continue
        if text_verdicts.get(key, Verdict(True)).passed and vector_verdicts[key].passed:
            allowed.add(key)
        else:
            log.error(f"{key[0]}|{key[1]}: blocking check failed, partition not written ({vector_verdicts[key].metadata.get('failures')})")
    return allowed


def judge(results: dict[PartitionKey, PartitionResult], milvus: MilvusResource, embedding_model: EmbeddingModelResource, quality: QualityThresholds, reembed_sample: bool) -> dict[str, dict]:
    """The checks after the write, on what Milvus holds for the written tenant-days with records
    or deletes: ``{check name: {(tenant, day): Verdict}}`` for coverage, coherence,
    retrievability (when rows could be sampled), drift (when the collection exists) and
    failure_rate; ``{}`` when nothing was
    written. ``reembed_sample`` False (a run that embedded nothing and so loaded no model)
    leaves the stored rows' coherence to the audit job (rows written now are still compared
    through the Milvus round trip)."""
    written = {k: r for k, r in results.items() if r.written and (r.records_read or r.deleted)}
    if not written:
        return {}
    store = milvus.get_store()
    name = milvus.collection_for(embedding_model.model_id)
    exists = store.has_collection(name)
    stored = evaluate.stored_hashes(store, name, list(written)) if exists else {}
    sample = evaluate.sample_vectors(store, name, written, quality) if exists else {}
    verdicts = {
        "coverage": evaluate.coverage_verdicts(written, stored, embedding_model.model_id),
        "coherence": evaluate.coherence_verdicts(written, sample, embedding_model.encode, quality, sample=None if reembed_sample else 0),
        "failure_rate": {k: evaluate.failure_rate_verdict(r, quality) for k, r in written.items()},
    }
    if sample:
        verdicts["retrievability"] = evaluate.retrievability_verdicts(store, name, written, sample, quality, milvus.search_params)
    if exists:
        verdicts["drift"] = evaluate.drift_verdicts(store, name, written, quality)
    return verdicts


def materializations(results: dict[PartitionKey, PartitionResult], figures: dict[PartitionKey, dict[dg.AssetKey, dict]]) -> list[dg.AssetMaterialization]:
    """The run's materialisations: one of each asset (upstream first) for every written
    tenant-day, with its ``figures`` as metadata (:func:`partition_metadata`, given for the
    tenant-days with records or deletes; the others have none), the data provenance a run of
    Dagster's records (:func:`provenance_tags`) and the partition's dimension tags. A tenant-day
    not written (a blocking check failed, or it was refused: the run fails) has none."""
    from dagster._core.definitions.partitions.utils.multi import get_tags_from_multi_partition_key

    provenance = provenance_tags()
    out = []
    for key, result in results.items():
        if not result.written:
            continue
        partition = make_key(*key)
        dimensions = get_tags_from_multi_partition_key(partition)
        by_asset = figures.get(key, {})
        out += [
            dg.AssetMaterialization(asset_key=asset_key, partition=partition, metadata=by_asset.get(asset_key), tags={**provenance[asset_key], **dimensions})
            for asset_key in ASSET_KEYS
        ]
    return out


@functools.cache
def provenance_tags() -> Mapping[dg.AssetKey, Mapping[str, str]]:
    """The data-provenance tags of each asset's materialisation, as Dagster's run writes them:
    the code version, the data version Dagster computes from it and the input's
    (``compute_logical_data_version``), the input's data version, and the input's event pointer
    ``NULL`` (Dagster's own value for an unknown pointer: Dagster then compares against the
    input's latest materialisation), so that the UI shows a tenant-day in sync, not "Unsynced".
    The same for every tenant-day: each asset's input is the landing index's constant data
    version (:data:`vector_assets.assets.landing_index.INDEX_DATA_VERSION`) or the asset above it.
    Computed once per process (read-only mappings): the daily schedule and every run ask for it."""
    from types import MappingProxyType

    from dagster._core.definitions.data_version import (
        CODE_VERSION_TAG, DATA_VERSION_TAG, NULL_EVENT_POINTER, compute_logical_data_version, get_input_data_version_tag, get_input_event_pointer_tag,
    )

    from .landing_index import INDEX_DATA_VERSION

    upstream = {SOURCE_RECORDS: dg.AssetKey("landing_index"), EXTRACTED_TEXT: SOURCE_RECORDS, MILVUS_VECTORS: EXTRACTED_TEXT}
    versions = {dg.AssetKey("landing_index"): dg.DataVersion(INDEX_DATA_VERSION)}
    out = {}
    for asset_key in ASSET_KEYS:  # upstream first
        dep = upstream[asset_key]
        versions[asset_key] = compute_logical_data_version(_CODE_VERSION[asset_key], {dep: versions[dep]})
        out[asset_key] = MappingProxyType({
            CODE_VERSION_TAG: _CODE_VERSION[asset_key],
            DATA_VERSION_TAG: versions[asset_key].value,
            get_input_data_version_tag(dep): versions[dep].value,
            get_input_event_pointer_tag(dep): NULL_EVENT_POINTER,
        })
    return MappingProxyType(out)


def recorded_totals(results: dict[PartitionKey, PartitionResult], figures: dict[PartitionKey, dict[dg.AssetKey, dict]]) -> dict[str, float]:
    """The sums of what :func:`materializations` records for the run:
    :func:`vector_assets.instance.launch.add_figures` over each written tenant-day's
    materialisation of each asset, with its ``figures`` (:func:`partition_metadata` of the
    tenant-days with records or deletes; the others have none)."""
    sums: dict[str, float] = {}
    assets = [asset_key.to_user_string() for asset_key in ASSET_KEYS]
    for key, result in results.items():
        if result.written:
            by_asset = figures.get(key, {})
            for asset_key, asset in zip(ASSET_KEYS, assets):
                launch.add_figures(sums, asset, by_asset.get(asset_key, {}))
    return sums


def empty_day_materializations(tenant: str, day: str, recorded_by: str) -> list[dg.AssetMaterialization]:
    """The materialisations of a tenant-day that holds no lines and never did: one per asset,
    empty and in sync, as a run over that day would record them (:func:`materializations`), for
    a caller that records them without a run (``daily_schedule``; ``recorded_by`` names it in
    the metadata, with ``records_read`` 0 and ``rows`` 0)."""
    from dagster._core.definitions.partitions.utils.multi import get_tags_from_multi_partition_key

    key = make_key(tenant, day)
    figures = {SOURCE_RECORDS: {"records_read": 0}, EXTRACTED_TEXT: {"texts": 0}, MILVUS_VECTORS: {"rows": 0}}
    dimensions = get_tags_from_multi_partition_key(key)
    return [
        dg.AssetMaterialization(asset_key=asset_key, partition=key, metadata={**figures[asset_key], "recorded_by": recorded_by}, tags={**tags, **dimensions})
        for asset_key, tags in provenance_tags().items()
    ]


def check_evaluations(instance: dg.DagsterInstance, run_id: str, results: dict[PartitionKey, PartitionResult], verdicts: dict[str, dict], run_timing: Verdict, quality: QualityThresholds) -> tuple[list, list[str], set[PartitionKey]]:
    """One evaluation of each check per tenant-day it judged, partitioned, each targeting the
    tenant-day's materialisation (:mod:`vector_assets.checks.outcomes`); days without records or
    deletes have nothing to judge and are not evaluated, unless a check failed on them. A
    failure's description states the run's thresholds (``quality``), as its verdict applied them.
    Returns ``(evaluations, failed checks as "name (severity, n tenant-days)", tenant-days a
    blocking check failed at ERROR)``."""
    written_at = {k: (run_id, time.time()) for k, r in results.items() if r.written}
    judged = {
        name: {k: v for k, v in verdicts[name].items() if not v.passed or results[k].records_read or results[k].deleted}
        for name in CHECKS
    }
    targets = {
        asset_key: outcomes.target_materializations(instance, asset_key, {k for name, (a, _, _) in CHECKS.items() if a == asset_key for k in judged[name]}, written_at)
        for asset_key in {a for a, _, _ in CHECKS.values()}
    }
    failed_checks, blocked, to_record = [], set(), []
    for check_name, (asset_key, blocking, _) in CHECKS.items():
        by_key = judged[check_name]
        failing = {k: v for k, v in by_key.items() if not v.passed}
        if failing:
            worst = "ERROR" if any(v.severity == "ERROR" for v in failing.values()) else "WARN"
            failed_checks.append(f"{check_name} ({worst}, {len(failing)} tenant-days)")
            if blocking:
                blocked |= {k for k, v in failing.items() if v.severity == "ERROR"}
        reasons = {k: evaluate.failure_reason(check_name, v, results.get(k), quality) for k, v in failing.items()}
        if check_name == "failure_rate":
            for k in failing:
                by_key[k].metadata["quarantine"] = dg.MetadataValue.md(_quarantine_table(results[k], bad_only=True))
        to_record += outcomes.evaluations(check_name, by_key, targets[asset_key], reasons, extra=run_timing.metadata if check_name == "processing_time" else None)
    return to_record, failed_checks, blocked


def run_summary(results: dict[PartitionKey, PartitionResult], failed_checks: list[str], stats, encode_cpu_s: float, wall_s: float) -> str:
    """The run's closing log line: tenant-days, records, embedded, unchanged, deleted,
    quarantined, failed checks, encode time and speed."""
    empty = sum(1 for r in results.values() if not r.records_read and not r.deleted)
    return (
        f"{len(results)} tenant-days ({empty} without records or rows): {sum(r.records_read for r in results.values())} records, "
        f"{sum(r.embedded for r in results.values())} embedded, {sum(r.skipped for r in results.values())} unchanged, "
        f"{sum(r.deleted for r in results.values())} deleted, {sum(len(r.quarantined) for r in results.values())} quarantined; "
        f"checks failed: {', '.join(failed_checks) or 'none'}; encode {stats.seconds:.1f}s ({encode_cpu_s:.1f} CPU s) of {wall_s:.1f}s "
        f"({stats.texts / stats.seconds if stats.seconds else 0:.0f} texts/s), {stats.truncated} texts truncated, model load {stats.load_seconds:.1f}s"
    )
