"""Check outcomes per tenant-day: recorded where Dagster keeps a partitioned check's status, and
read back from there (issue #18).

Every check is declared with the tenant x day partitions (``AssetCheckSpec(partitions_def=...)``)
and a run records one evaluation of each check for each tenant-day it judged (days with records
or deletes; an empty day has nothing to judge and is not evaluated). Dagster keeps a check's
status per partition: the latest evaluation of that tenant-day, as long as it targets the
tenant-day's latest materialisation. So a tenant-day that failed stays failing until an
evaluation of that same tenant-day passes, whatever runs of other tenants record, and the UI's
Checks tab and each check's Partitions view show the worst current status over all tenant-days
(the asset overview's "Latest check results" shows only the latest materialised tenant-day's).

Recording cost: Dagster stores each check evaluation with its own ``store_event`` (three SQLite
transactions). :func:`record_evaluations` hands a run's evaluations to the storage in batches
(Dagster's event batching, ``DAGSTER_EVENT_BATCH_SIZE``), which the project's storages
(:mod:`vector_assets.instance.storage`) write in one transaction per batch. Figures: README,
"Performance", ``benchmarks/pipeline.py recording``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import dagster as dg

from ..partitions import key_string, split_key
from ..embed.quality import Verdict
from ..instance.runs import record_step_events
from .specs import CHECKS

PartitionKey = tuple[str, str]


@dataclass
class Outcome:
    """The current outcome of one check on one tenant-day.

    Attributes:
        check: the check's name (a key of :data:`vector_assets.checks.specs.CHECKS`).
        tenant, day: the tenant-day (``day`` as ``YYYY-MM-DD``).
        status: ``"passed"``, ``"WARN"``, ``"ERROR"`` (a failed evaluation's severity), or
            ``"not evaluated"`` (planned in a run that ended without evaluating it, or the
            tenant-day was materialised again since its last evaluation).
        run_id: the run of the latest evaluation (or plan).
        timestamp: Unix seconds of the latest evaluation (``None`` when not evaluated).
        figures: the evaluation's metadata values (filled for failures only, see
            :func:`latest_outcomes`).
        description: the evaluation's description (the reason, for a failure).
        storage_id: the event log storage id of the latest check event.
        seen_storage_id: the newest storage id this outcome reflects (its check event or the
            tenant-day's latest materialisation): a cursor for :func:`latest_outcomes`.
        planned: the latest check record is a plan (its run has not evaluated it, or ended
            without evaluating it).
    """

    check: str
    tenant: str
    day: str
    status: str
    run_id: str = ""
    timestamp: float | None = None
    figures: dict = field(default_factory=dict)
    description: str = ""
    storage_id: int = 0
    seen_storage_id: int = 0
    planned: bool = False

    @property
    def failed(self) -> bool:
        return self.status in ("WARN", "ERROR")


def check_keys() -> list[dg.AssetCheckKey]:
    """The keys of every check of :data:`CHECKS`."""
    return [dg.AssetCheckKey(asset_key, name) for name, (asset_key, _, _) in CHECKS.items()]


def target_materializations(instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: Iterable[PartitionKey], written: dict[PartitionKey, tuple[str, float]] | None = None) -> dict[PartitionKey, object]:
    """The latest materialisation of each tenant-day of ``keys`` of ``asset_key``, as the
    ``target_materialization_data`` of a check evaluation (Dagster counts a partition's check
    status as current only while its evaluation targets the partition's latest materialisation).

    One query for the storage ids. ``written``: ``{(tenant, day): (run id, Unix time)}`` of the
    tenant-days the calling run has just materialised (their events are not read back); the others
    (not written by the caller, e.g. blocked, or audited) are read back, 500 a query.
    Tenant-days never materialised are left out.

    Returns:
        ``{(tenant, day): AssetCheckEvaluationTargetMaterializationData}``.
    """
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData
    from dagster._core.events import DagsterEventType

    by_partition = {key_string(*k): k for k in keys}
    if not by_partition:
        return {}
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(asset_key, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(by_partition))
    found = {storage_id: written[by_partition[p]] for p, storage_id in latest.items() if written and by_partition[p] in written}
    others = [storage_id for storage_id in latest.values() if storage_id not in found]
    for i in range(0, len(others), 500):
        chunk = others[i : i + 500]
        for record in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=chunk), limit=len(chunk)).records:
            found[record.storage_id] = (record.run_id, record.timestamp)
    return {
        by_partition[p]: AssetCheckEvaluationTargetMaterializationData(storage_id=storage_id, run_id=found[storage_id][0], timestamp=found[storage_id][1])
        for p, storage_id in latest.items()
        if storage_id in found
    }


def evaluations(check_name: str, verdicts: dict[PartitionKey, Verdict], targets: dict[PartitionKey, object], descriptions: dict[PartitionKey, str] | None = None, extra: dict | None = None) -> list[dg.AssetCheckEvaluation]:
    """One :class:`dagster.AssetCheckEvaluation` of check ``check_name`` per tenant-day of
    ``verdicts``, partitioned (``partition`` = the tenant-day's key), with the verdict's figures
    as metadata (plus ``extra``, run-wide figures), the severity of a failure, the blocking flag of
    :data:`CHECKS`, the tenant-day's latest materialisation as target (``targets``, from
    :func:`target_materializations`) and a description (``descriptions``: the reason, for a
    failure)."""
    asset_key, blocking, _ = CHECKS[check_name]
    out = []
    for key, verdict in sorted(verdicts.items()):
        metadata = {**(extra or {}), **verdict.metadata}
        out.append(
            dg.AssetCheckEvaluation(
                asset_key=asset_key,
                check_name=check_name,
                passed=verdict.passed,
                metadata=metadata,
                severity=dg.AssetCheckSeverity.WARN if verdict.severity == "WARN" else dg.AssetCheckSeverity.ERROR,
                description=(descriptions or {}).get(key),
                blocking=blocking,
                partition=key_string(*key),
                target_materialization_data=targets.get(key),
            )
        )
    return out


def record_evaluations(context: dg.OpExecutionContext | dg.AssetExecutionContext, evaluations: list[dg.AssetCheckEvaluation]) -> Iterator[object]:
    """What a step yields to record ``evaluations``: the outputs of its asset checks (Dagster's,
    for dependants; they carry nothing), then nothing more when the evaluations were stored
    straight through the instance in batches of ``DAGSTER_EVENT_BATCH_SIZE``
    (:func:`vector_assets.instance.runs.record_step_events`; where Dagster's internals are
    missing, the evaluations themselves, stored one by one).

    A failed blocking evaluation recorded this way does not stop the step (Dagster raises its
    ``DagsterAssetCheckFailedError`` only for evaluations it converts itself); the tenant-day
    step fails the run itself (``vector_assets.assets.vectors``).
    """
    # (The audit job's op declares no check outputs.)
    op_context = getattr(context, "op_execution_context", context)
    if op_context.has_assets_def:
        selected = op_context.selected_asset_check_keys
        for output_name, spec in op_context.assets_def.check_specs_by_output_name.items():
            if spec.key in selected:
                yield dg.Output(None, output_name=output_name)
    yield from record_step_events(context, evaluations)


def _status(info, evaluation) -> str:
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    if info.latest_execution_status == AssetCheckExecutionRecordStatus.PLANNED or not info.is_current:
        return "not evaluated"
    if info.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED:
        return "passed"
    return evaluation.severity.value if evaluation is not None else "ERROR"


def _latest_evaluation(instance: dg.DagsterInstance, key: dg.AssetCheckKey, partition: str):
    """The newest stored evaluation (not a plan) of check ``key`` on ``partition``, with its run
    id and Unix timestamp: ``(AssetCheckEvaluation, run_id, timestamp)`` or ``None``."""
    from dagster._core.event_api import PartitionKeyFilter

    cursor = None
    while True:
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=5, cursor=cursor, partition_filter=PartitionKeyFilter(key=partition))
        for record in records:
            event = record.event.dagster_event if record.event else None
            if event is not None and event.event_type_value == "ASSET_CHECK_EVALUATION":
                return event.event_specific_data, record.run_id, record.event.timestamp
        if len(records) < 5:
            return None
        cursor = records[-1].id


def latest_outcomes(instance: dg.DagsterInstance, tenants: Iterable[str] | None = None, partitions: Iterable[PartitionKey] | None = None, after_storage_id: int | None = None, with_figures: bool = True) -> list[Outcome]:
    """The current outcome of every check on every tenant-day Dagster holds a check status for,
    read from Dagster's per-partition check records (``get_asset_check_partition_info``: one
    query per check); the figures and reason of each failure from its evaluation event (one
    query per failing tenant-day and check, ``with_figures``).

    Args:
        tenants: only these tenants (default all).
        partitions: only these tenant-days (default all).
        after_storage_id: only outcomes whose check event or materialisation is newer than
            this event log storage id (what the alert sensor reads since its cursor).
        with_figures: read each failure's evaluation (figures, reason, severity); without, a
            failure's status is ``"ERROR"`` whatever its severity.

    Returns:
        ``[Outcome]`` sorted by check, tenant, day.
    """
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    keys = check_keys()
    partition_keys = [key_string(*k) for k in partitions] if partitions is not None else None
    infos = instance.event_log_storage.get_asset_check_partition_info(keys, after_storage_id=after_storage_id, partition_keys=partition_keys)
    wanted = set(tenants) if tenants is not None else None
    out = []
    for info in infos:
        if info.partition_key is None or "|" not in info.partition_key:
            continue  # an evaluation recorded before checks were partitioned (one per run)
        tenant, day = split_key(info.partition_key)
        if wanted is not None and tenant not in wanted:
            continue
        failed = info.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED and info.is_current
        evaluation = run_id = timestamp = None
        if failed and with_figures:
            found = _latest_evaluation(instance, info.check_key, info.partition_key)
            if found:
                evaluation, run_id, timestamp = found
        outcome = Outcome(
            info.check_key.name, tenant, day, _status(info, evaluation), run_id=run_id or info.latest_planned_run_id, timestamp=timestamp,
            storage_id=info.latest_check_event_storage_id, seen_storage_id=max(info.latest_check_event_storage_id, info.latest_materialization_storage_id or 0),
            planned=info.latest_execution_status == AssetCheckExecutionRecordStatus.PLANNED,
        )
        if evaluation is not None:
            outcome.figures = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
            outcome.description = evaluation.description or ""
        out.append(outcome)
    return sorted(out, key=lambda o: (o.check, o.tenant, o.day))


def iso(timestamp: float | None) -> str:
    """``YYYY-MM-DD HH:MM UTC`` of Unix seconds (``"-"`` for ``None``)."""
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))
