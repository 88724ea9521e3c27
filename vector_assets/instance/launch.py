"""Runs submitted through the Dagster instance, as the UI's backfills are.

``vector-assets backfill`` does not execute runs itself: it creates each run from the code
location of ``workspace.yaml`` (the one the UI and the daemon load) and submits it to the
instance's run coordinator (``dagster.yaml``: the run queue with its concurrency limits), whose
daemon hands it to the instance's run launcher (a run worker process per run by default; a
Celery, Docker or Kubernetes launcher or executor where the deployment configures one). A
laptop needs no separately started daemon: when none has sent a heartbeat lately, the command
runs the daemon's queue step itself (:class:`RunDequeuer`).

Uses Dagster's workspace classes (``dagster._core.workspace``) as Dagster's own ``dagster job
launch`` does, and the daemon's queue step (``dagster._daemon``) as the daemon does, read-only;
nothing in Dagster's internals is written.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import dagster as dg

from .. import settings

#: The code location every launched run names (``workspace.yaml``'s ``location_name``).
LOCATION = "vector_assets"
JOB = "tenant_day_vectors_job"
#: A daemon heartbeat younger than this counts as a running daemon (Dagster's own tolerance is 60 s).
HEARTBEAT_TOLERANCE_S = 60.0


def workspace_file() -> Path:
    """The repository's ``workspace.yaml`` (the UI's and the daemon's code location); where the
    package is installed without the repository, one of the same content written to
    ``$DAGSTER_HOME/workspace.yaml`` (location ``vector_assets``, module
    ``vector_assets.definitions``)."""
    found = settings.REPO_ROOT / "workspace.yaml"
    if found.is_file():
        return found
    made = settings.ensure_dagster_home() / "workspace.yaml"
    if not made.is_file():
        made.write_text(
            "load_from:\n  - python_module:\n      module_name: vector_assets.definitions\n"
            f"      attribute: defs\n      location_name: {LOCATION}\n"
        )
    return made


def daemon_alive(instance: dg.DagsterInstance) -> bool:
    """Whether a ``dagster-daemon`` dequeues this instance's runs: its run queue's heartbeat is
    younger than :data:`HEARTBEAT_TOLERANCE_S`."""
    beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return beat is not None and time.time() - beat.timestamp < HEARTBEAT_TOLERANCE_S


class RunDequeuer:
    """Dequeues this instance's runs while a command follows them, when no daemon does.

    A laptop runs no ``dagster-daemon``: the command then runs the daemon's own queue step,
    Dagster's ``QueuedRunCoordinatorDaemon.run_iteration`` (the instance's concurrency limits,
    tag limits and pools; launches through the instance's run launcher via the command's code
    server), each time :meth:`step` is called. Nothing is dequeued here while a daemon of the
    instance sends heartbeats (:func:`daemon_alive`), or while another ``vector-assets`` command
    of this machine dequeues (it holds ``$DAGSTER_HOME/cli-dequeue.lock`` until it is done: one
    dequeuer at a time, as Dagster requires of its daemon).

    :meth:`close` keeps dequeuing while runs submitted by other live ``vector-assets
    backfill`` commands of this machine are unfinished (their runs may run under this
    command's code server), then releases the lock.
    """

    def __init__(self, instance: dg.DagsterInstance, process_context, say=print):
        self.instance = instance
        self.process_context = process_context
        self.say = say
        self.lock_path = Path(instance.root_directory) / "cli-dequeue.lock"
        self.lock = None
        self.daemon = None

    def _take_lock(self) -> bool:
        import fcntl

        if self.lock is not None:
            return True
        handle = open(self.lock_path, "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self.lock = handle
        return True

    def step(self) -> None:
        """Dequeue (and launch) what the instance's run queue allows now, unless a daemon or
        another command does it."""
        if daemon_alive(self.instance) or not self._take_lock():
            return
        if self.daemon is None:
            from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

            self.daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
            self.say(f"no dagster-daemon of {self.instance.root_directory} is running: this command dequeues and launches the runs")
        for _ in self.daemon.run_iteration(self.process_context):
            pass

    def _others_unfinished(self) -> int:
        """Unfinished runs submitted by other live ``vector-assets backfill`` commands of this host."""
        import socket

        from ..local import pid_alive

        statuses = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
        count = 0
        for run in self.instance.get_runs(dg.RunsFilter(statuses=statuses, tags={CLI_HOST_TAG: socket.gethostname()})):
            pid = run.tags.get(CLI_PID_TAG, "")
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                count += 1
        return count

    def close(self) -> None:
        """Keep dequeuing for other commands' runs, then release the lock (see the class docstring)."""
        if self.lock is None:
            return
        said = False
        while waiting := self._others_unfinished():
            if not said:
                self.say(f"dequeuing on for {waiting} runs of another backfill command")
                said = True
            self.step()
            time.sleep(1)
        self.lock.close()  # closing the file releases the flock
        self.lock = None


class EarlyWorkspace:
    """The workspace's code server, started in a thread by :meth:`start` so that it comes up
    while the command plans: its start (a process that imports Dagster and the code location,
    then serves) took 2.3 s of ``make demo``'s command before its first run was queued, the
    other core idle meanwhile (issue #20, 2026-12-03). Started only where runs are likely
    (the caller's choice): a backfill with nothing to run would wait for a server it does not
    use (3.2 s became 5.0-5.5 s when it always started). :meth:`get` starts it if not yet
    started, waits for it and raises what starting it raised; :meth:`close` (always call it)
    waits for a started one, then stops its server."""

    def __init__(self, instance: dg.DagsterInstance):
        self._instance = instance
        self._context = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the code server in a thread (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._start, name="vector-assets-workspace", daemon=True)
            self._thread.start()

    def _start(self) -> None:
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        try:
            self._context = WorkspaceProcessContext(self._instance, WorkspaceFileTarget(paths=[str(workspace_file())]), code_server_log_level="WARNING")
        except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread by get()
            self._error = err

    def get(self):
        """The started ``WorkspaceProcessContext``."""
        self.start()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._context

    def close(self) -> None:
        """Wait for a started server to come up, then stop it (nothing where never started)."""
        if self._thread is not None:
            self._thread.join()
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None


@contextlib.contextmanager
def dequeuing(instance: dg.DagsterInstance, workspace: EarlyWorkspace, say=print) -> Iterator[tuple]:
    """``(request context, RunDequeuer)`` of ``workspace`` (``workspace.yaml``'s code location
    in a code server process, started by :meth:`EarlyWorkspace.get` if not yet, closed by its
    owner): the runs this command's dequeuer launches run under it."""
    process_context = workspace.get()
    dequeuer = RunDequeuer(instance, process_context, say=say)
    try:
        yield process_context.create_request_context(), dequeuer
    finally:
        dequeuer.close()


#: Run tags naming the ``vector-assets backfill`` process that submitted a run, and its host.
CLI_PID_TAG = "vector_assets/cli_pid"
CLI_HOST_TAG = "vector_assets/cli_host"


def cancel_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Cancel the queued runs that a ``vector-assets backfill`` of this host submitted and that
    nobody follows any more (its process is gone: killed, or its machine's session ended).
    Returns their run ids. Runs already started are left to finish (or to
    :func:`vector_assets.instance.runs.fail_dead_runs` when their own process is gone)."""
    import socket

    from ..local import pid_alive

    host = socket.gethostname()
    cancelled = []
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED], tags={CLI_HOST_TAG: host})):
        pid = run.tags.get(CLI_PID_TAG, "")
        if pid.isdigit() and not pid_alive(int(pid)):
            instance.report_run_canceled(run, message=f"the vector-assets backfill that submitted this run (pid {pid} on {host}) is gone; cancelled by vector_assets")
            cancelled.append(run.run_id)
    return cancelled


def create_run(instance: dg.DagsterInstance, context, run_config: dict, tags: dict[str, str], job_name: str = JOB) -> dg.DagsterRun:
    """Create (not start) a run of ``job_name`` from the workspace's code location, as a UI
    launch does: the job's snapshot, execution plan and origins recorded with the run.
    ``tags`` are merged over the job's own."""
    from dagster._core.definitions.selector import JobSubsetSelector

    location = context.get_code_location(LOCATION)
    (repo,) = location.get_repositories().values()
    remote_job = location.get_job(JobSubsetSelector(location_name=LOCATION, repository_name=repo.name, job_name=job_name, op_selection=None))
    plan = location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=instance)
    return instance.create_run(
        job_name=job_name, run_id=None, run_config=run_config, resolved_op_selection=None,
        step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute, op_selection=None, status=None,
        root_run_id=None, parent_run_id=None, tags={**remote_job.tags, **tags}, job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
        asset_selection=None, asset_check_selection=None, asset_graph=repo.asset_graph,
    )


@dataclass
class RunOutcome:
    """What a finished run recorded: ``status`` (a ``DagsterRunStatus`` value), ``sums``
    (``{"<asset>.<metadata key>": total}`` of its materialisations' numeric metadata, and
    ``"<asset>.partitions"``), ``check_errors`` (``(check name, tenant-day)`` that failed at
    ERROR), ``message`` (the root cause of its first step failure, or of the run's failure) and
    ``process_died`` (the run failed because a process of it died, not because its code failed:
    see :func:`outcome`)."""

    run_id: str
    status: str
    sums: dict[str, float] = field(default_factory=dict)
    check_errors: list[tuple[str, str]] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0
    process_died: bool = False


#: The event types :func:`outcome` reads first: few per run (steps, the run's failure, engine
#: events, among them the step's :data:`RUN_TOTALS` event).
OUTCOME_EVENTS = {
    dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.RUN_FAILURE,
}
#: The events :func:`outcome` sums when a run has no usable :data:`RUN_TOTALS` event: one per
#: tenant-day and asset, and per judged tenant-day and check.
RECORDED_EVENTS = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_CHECK_EVALUATION}
#: The message of the engine event in which a step states the totals of what it recorded
#: (:func:`report_run_totals`).
RUN_TOTALS = "vector_assets: what this step recorded"


def _records(instance: dg.DagsterInstance, run_id: str, of_type: set, page: int = 5000):
    """The run's event records of the ``of_type`` types, in order, read a page at a time."""
    cursor = None
    while True:
        conn = instance.get_records_for_run(run_id, cursor=cursor, of_type=of_type, limit=page)
        yield from (r.event_log_entry for r in conn.records)
        if not conn.has_more:
            return
        cursor = conn.cursor


def add_figures(sums: dict[str, float], asset: str, metadata: dict) -> None:
    """Add one materialisation of ``asset`` (its user string) to ``sums``: ``"<asset>.partitions"``
    plus one, and each numeric metadata value (``int``/``float``, raw or a ``MetadataValue``;
    not ``bool``; not a ``mean_*`` figure, the average of one tenant-day, which does not add up)
    to ``"<asset>.<key>"``. The one rule :func:`outcome` and :func:`report_run_totals` share."""
    for name, value in metadata.items():
        value = getattr(value, "value", value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not name.startswith("mean_"):
            sums[f"{asset}.{name}"] = sums.get(f"{asset}.{name}", 0.0) + value
    sums[f"{asset}.partitions"] = sums.get(f"{asset}.partitions", 0.0) + 1


def failed_at_error(evaluations) -> list[tuple[str, str]]:
    """``(check name, partition)`` of the ``evaluations`` (:class:`dagster.AssetCheckEvaluation`)
    that failed at ERROR, in order: the check errors a backfill reports."""
    return [(e.check_name, e.partition) for e in evaluations if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]


def report_run_totals(context, sums: dict[str, float], check_errors: list[tuple[str, str]]) -> None:
    """Record, as one engine event of the step (message :data:`RUN_TOTALS`, shown in the run's
    log with its figures), the sums of what the step recorded (``sums``: :func:`add_figures`
    over its materialisations) and the ``(check name, tenant-day)`` its checks failed at ERROR.

    :func:`outcome` reads them instead of the run's every materialisation and check evaluation:
    3.39 s for the 26,157 events of ``make demo``'s backfill in one run, on SQLite (2026-12-02);
    at 365,000 tenant-days a run, minutes."""
    from dagster._core.events import EngineEventData

    # 12 significant digits: the float sums without their last bits of addition noise
    metadata = {name: dg.MetadataValue.int(int(value)) if float(value).is_integer() else dg.MetadataValue.float(float(f"{value:.12g}")) for name, value in sorted(sums.items())}
    metadata["check_errors"] = dg.MetadataValue.json([list(e) for e in check_errors])
    context.instance.report_engine_event(RUN_TOTALS, dagster_run=context.dagster_run, engine_event_data=EngineEventData(metadata=metadata), step_key=str(context.op_handle))


def outcome(instance: dg.DagsterInstance, run: dg.DagsterRun, root_cause, read_events: bool = False) -> RunOutcome:
    """Read a finished run's :class:`RunOutcome` from the event log (``root_cause``: how to
    shorten a Dagster error to its first line). The sums and check errors come from the step's
    :data:`RUN_TOTALS` event where it stated them (one step, one attempt), else (or with
    ``read_events``) from every materialisation and check evaluation of the run.

    ``process_died`` is read from the events' structure, not their words: a failed run one of
    whose steps started and never ended (its process was killed, or ran out of memory, before
    the step could report; the run was then failed by Dagster's code server, its run monitoring
    or :func:`vector_assets.instance.runs.fail_dead_runs`), a step failure of Dagster's
    ``ChildProcessCrashException`` (a step's child process died under the multiprocess
    executor), or a run failed from outside (a failure without an error) before any step
    started."""
    sums: dict[str, float] = {}
    errors: list[tuple[str, str]] = []
    message = ""
    started: set[str] = set()
    ended: set[str] = set()
    starts = 0
    totals = []
    crashed = failed_from_outside = False
    for record in _records(instance, run.run_id, OUTCOME_EVENTS):
        event = record.dagster_event
        if event.event_type == dg.DagsterEventType.STEP_START:
            started.add(event.step_key)
            starts += 1
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ended.add(event.step_key)
            error = event.step_failure_data.error if event.event_type == dg.DagsterEventType.STEP_FAILURE else None
            crashed |= error is not None and error.cls_name == "ChildProcessCrashException"
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            failed_from_outside = getattr(event.event_specific_data, "error", None) is None
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT and record.message == RUN_TOTALS:
            totals.append(event.engine_event_data.metadata)
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE and not message and event.step_failure_data.error is not None:
            message = root_cause(event.step_failure_data.error)
        elif event.event_type == dg.DagsterEventType.ENGINE_EVENT and not message and "Run execution process for" in (record.message or ""):
            # The code server saw the run's process die (killed, out of memory): Dagster's own words.
            message = record.message.replace("[DagsterApiServer] ", "")[:300]
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and not message:
            data = event.event_specific_data
            message = root_cause(data.error) if getattr(data, "error", None) is not None else (event.message or "")
    if len(totals) == 1 and starts == 1 and not read_events:
        # One step, run once, that stated its totals (a retried step's earlier attempt may have
        # recorded more: then every event is read).
        sums = {name: float(value.value) for name, value in totals[0].items() if name != "check_errors"}
        errors = [tuple(e) for e in totals[0]["check_errors"].value]
    else:
        evaluations = []
        for record in _records(instance, run.run_id, RECORDED_EVENTS):
            event = record.dagster_event
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                mat = event.event_specific_data.materialization
                add_figures(sums, mat.asset_key.to_user_string(), mat.metadata)
            else:
                evaluations.append(event.event_specific_data)
        errors = failed_at_error(evaluations)
    stats = instance.get_run_stats(run.run_id)
    seconds = (stats.end_time or time.time()) - (stats.start_time or stats.launch_time or time.time()) if stats else 0.0
    died = run.status == dg.DagsterRunStatus.FAILURE and (bool(started - ended) or crashed or (failed_from_outside and not started))
    return RunOutcome(run.run_id, run.status.value, dict(sums), errors, message, max(0.0, seconds), died)
