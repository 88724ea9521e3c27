"""Runs whose process is gone: found and failed, so that their pool slots are freed.

A run executing the tenant-day step holds a slot of the ``milvus_writes`` pool. When its
process is killed (``kill -9``, an out-of-memory kill, a crashed worker), Dagster leaves the
run STARTED and the slot claimed, and every later run waits for that slot for ever (seen: a
backfill printing its plan, then nothing for 12 minutes). Each run that writes records the
process that executes it in its tags (:data:`PID_TAG`, :data:`HOST_TAG`); :func:`fail_dead_runs`
(called by ``vector-assets backfill`` on start and after a worker dies, and by the new-data
sensor on every tick) marks the runs of this host whose process is gone as failed and frees
their slots; :func:`free_slots_of_finished_runs` frees the slots that finished runs still hold.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator

import dagster as dg

from ..local import pid_alive

#: Run tags naming the process that executes the run's tenant-day step, its parent (the run
#: worker that started the step's process, or a Celery worker's main process) and its host.
PID_TAG = "vector_assets/pid"
PARENT_PID_TAG = "vector_assets/parent_pid"
HOST_TAG = "vector_assets/host"

#: The pool of runs that write to Milvus (the tenant-day step's ``pool``).
POOL = "milvus_writes"


def process_tags() -> dict[str, str]:
    """``{PID_TAG: this process's pid, PARENT_PID_TAG: its parent's, HOST_TAG: this host's name}``."""
    return {PID_TAG: str(os.getpid()), PARENT_PID_TAG: str(os.getppid()), HOST_TAG: socket.gethostname()}


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed every unfinished run of this host whose recorded process is gone, and
    free the pool slots it holds. Returns the run ids failed (empty when none).

    A run whose step process died while the process that started it lives (the run worker of
    Dagster's multiprocess executor, a Celery worker) is left alone: Dagster retries the step
    there (the step's retry policy), or fails the run itself."""
    host = socket.gethostname()
    statuses = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING]
    failed = []
    for run in instance.get_runs(dg.RunsFilter(statuses=statuses)):
        pid, parent = run.tags.get(PID_TAG, ""), run.tags.get(PARENT_PID_TAG, "")
        if run.tags.get(HOST_TAG) != host or not pid.isdigit() or pid_alive(int(pid)):
            continue
        if parent.isdigit() and int(parent) > 1 and pid_alive(int(parent)):
            continue
        instance.report_run_failed(run, message=f"the process that executed this run (pid {pid} on {host}) is gone; marked failed by vector_assets")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    return failed


def free_slots_of_finished_runs(instance: dg.DagsterInstance, pool: str = POOL) -> list[str]:
    """Free the ``pool`` slots held by runs that have finished (SUCCESS, FAILURE, CANCELED) or
    no longer exist. Returns their run ids.

    A run whose process is SIGKILLed while its code server lives is marked FAILURE by Dagster
    ("terminated by signal 9") with its slot still claimed: two such kills held both slots for
    ever, and every later run waited (issue #17 item 5). The daemon frees them too
    (``run_monitoring.free_slots_after_run_end_seconds`` in ``dagster.yaml``); this
    frees them at once where no daemon runs (``vector-assets backfill``)."""
    freed = []
    for run_id in sorted(instance.event_log_storage.get_concurrency_info(pool).active_run_ids):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            freed.append(run_id)
    return freed


def free_pool_slots(instance: dg.DagsterInstance, pool: str = POOL) -> int:
    """Slots of ``pool`` not claimed now (0 when every slot is held). A pool not used yet is
    given the instance's default limit first, as Dagster's executor does on its first claim."""
    storage = instance.event_log_storage
    if pool not in storage.get_concurrency_keys():
        # Only for a pool without a row: once the row exists, dagster-postgres' method runs an
        # UPDATE in the transaction its failed INSERT aborted (InFailedSqlTransaction; seen in
        # tests/test_distributed.py, dagster 1.13.27).
        storage.initialize_concurrency_limit_to_default(pool)
    info = storage.get_concurrency_info(pool)
    return max(0, info.slot_count - info.active_slot_count)


def pool_holders(instance: dg.DagsterInstance, pool: str = POOL) -> list[tuple[str, str]]:
    """``(run id, status)`` of the runs holding slots of ``pool`` now."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    out = []
    for run_id in sorted(info.active_run_ids):
        run = instance.get_run_by_id(run_id)
        out.append((run_id, run.status.value if run else "unknown"))
    return out


def _event_batches(count: int) -> list:
    """The batch metadata of ``count`` events sent as one of Dagster's event batches (one batch id,
    the last event ending it): the instance hands them to the storage in batches of
    ``DAGSTER_EVENT_BATCH_SIZE`` instead of one write each. Dagster internals."""
    from dagster._core.events import DagsterEventBatchMetadata, generate_event_batch_id

    batch_id = generate_event_batch_id()
    return [DagsterEventBatchMetadata(batch_id, i == count - 1) for i in range(count)]


def record_runless_materializations(instance: dg.DagsterInstance, materializations: list[dg.AssetMaterialization]) -> int:
    """Record ``materializations`` outside any run (as ``report_runless_asset_event`` does, the
    UI showing them as reported), sent to the event storage in batches of
    ``DAGSTER_EVENT_BATCH_SIZE`` (Dagster's event batching) instead of one write each. Uses
    Dagster internals (``DagsterEvent``, ``StepMaterializationData``); where they are missing, the
    public method stores them one by one. Returns the number recorded."""
    if not materializations:
        return 0
    try:
        from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
        from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID
    except ImportError:  # another Dagster version: the public, slower way
        for materialization in materializations:
            instance.report_runless_asset_event(materialization)
        return len(materializations)
    for materialization, batch in zip(materializations, _event_batches(len(materializations)), strict=True):
        instance.report_dagster_event(
            DagsterEvent(
                event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                event_specific_data=StepMaterializationData(materialization),
                job_name=RUNLESS_JOB_NAME,
            ),
            run_id=RUNLESS_RUN_ID,
            batch_metadata=batch,
        )
    return len(materializations)


def record_step_events(context: dg.OpExecutionContext | dg.AssetExecutionContext, events: list[dg.AssetMaterialization | dg.AssetCheckEvaluation]) -> Iterator[object]:
    """What a step yields to record ``events`` (materialisations and check evaluations of its
    run): nothing, when they were stored here, straight through the instance
    (``handle_new_event``, in batches of ``DAGSTER_EVENT_BATCH_SIZE``); else the events
    themselves, for Dagster to record one by one (its internals missing: another version).

    Each is stored as ``DagsterEvent.from_step`` would log it (the run, job, step, node, step
    kind, logging tags, pid and message; level DEBUG), without Dagster's logging machinery
    around each event: a Python log record per event, another built to find its extras, the
    handlers' conversion and a signal-handler swap per event yielded from the step. Measured
    (py-spy, ``benchmarks/org_scale.py --grid 1000x30 --records 3000 --storage postgres``,
    2026-12-03): that machinery and Dagster's expansion of a ranged output into per-partition
    materialisations took more of the run than storing the events. The events are not in the
    step's event stream (an ``execute_in_process`` result lists none of them): read them from
    the instance (``instance.all_logs(run_id, of_type=...)``), as the UI does.
    """
    if not events:
        return
    try:
        from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
        from dagster._core.events.log import EventLogEntry

        step = getattr(context, "op_execution_context", context)._step_execution_context
        fixed = {
            "job_name": step.job_name, "step_handle": step.step.handle, "node_handle": step.step.node_handle,
            "step_kind_value": step.step.kind.value, "logging_tags": step.event_tags, "pid": os.getpid(),
        }
    except (ImportError, AttributeError):
        yield from events
        return
    instance, run_id, step_key = step.instance, step.run_id, step.step.key
    for event, batch in zip(events, _event_batches(len(events)), strict=True):
        if isinstance(event, dg.AssetMaterialization):
            kind, data = DagsterEventType.ASSET_MATERIALIZATION.value, StepMaterializationData(event)
            message = event.description or "Materialized value."
        else:
            kind, data = DagsterEventType.ASSET_CHECK_EVALUATION.value, event
            verdict = "passed" if event.passed else f"failed ({event.severity.value})"
            message = f"Asset check '{event.check_name}' on '{event.asset_key.to_user_string()}' {verdict} for {event.partition}"
        entry = EventLogEntry(
            user_message=message, level=logging.DEBUG, job_name=fixed["job_name"], run_id=run_id, error_info=None, timestamp=time.time(), step_key=step_key,
            dagster_event=DagsterEvent(event_type_value=kind, event_specific_data=data, message=message, **fixed),
        )
        instance.handle_new_event(entry, batch_metadata=batch)
