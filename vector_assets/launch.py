"""Runs submitted through the Dagster instance, as the UI's backfills are.

``vector-assets backfill`` does not execute runs itself: it creates each run from the code
location of ``workspace.yaml`` (the one the UI and the daemon load) and submits it to the
instance's run coordinator (``dagster.yaml``: the run queue with its concurrency limits), whose
daemon hands it to the instance's run launcher (a run worker process per run by default; a
Celery, Docker or Kubernetes launcher or executor where the deployment configures one). A
laptop needs no separately started daemon: when none has sent a heartbeat lately, the command
starts one for its own duration (:class:`DaemonKeeper`).

Uses Dagster's workspace classes (``dagster._core.workspace``), read-only, as Dagster's own
``dagster job launch`` does; nothing in Dagster's internals is written.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import dagster as dg

from . import settings

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


@contextlib.contextmanager
def workspace(instance: dg.DagsterInstance) -> Iterator:
    """A request context of the workspace (``workspace.yaml``): its code location runs in a code
    server process of its own for the duration."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace_file())]), code_server_log_level="WARNING") as process_context:
        yield process_context.create_request_context()


def daemon_alive(instance: dg.DagsterInstance) -> bool:
    """Whether a ``dagster-daemon`` dequeues this instance's runs: its run queue's heartbeat is
    younger than :data:`HEARTBEAT_TOLERANCE_S`."""
    beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return beat is not None and time.time() - beat.timestamp < HEARTBEAT_TOLERANCE_S


class DaemonKeeper:
    """Makes sure a daemon dequeues this instance's runs while a command follows them.

    :meth:`ensure` (called on start and then every few seconds) does nothing while a daemon of
    the instance sends heartbeats (:func:`daemon_alive`) or the daemon this keeper started
    runs; otherwise it starts ``dagster-daemon run -w workspace.yaml`` (same environment and
    ``DAGSTER_HOME``; output to ``log_path``, default ``$DAGSTER_HOME/cli-daemon.log``). A
    daemon that stopped a moment ago still looks alive by its last heartbeat (Dagster writes
    one every 30 s): the keeper then starts its own once that heartbeat is older than
    :data:`HEARTBEAT_TOLERANCE_S`. :meth:`close` stops the daemon it started (SIGTERM, then
    SIGKILL after 30 s) and removes the heartbeats that only it wrote, so that the next command
    does not take them for a running daemon. The started daemon has a session of its own (a
    terminal's Ctrl-C reaches the command, which cancels its runs through the daemon) and gets
    SIGTERM when the command dies, even by SIGKILL.
    """

    def __init__(self, instance: dg.DagsterInstance, log_path: Path | None = None, say=print):
        self.instance = instance
        self.log_path = log_path or Path(instance.root_directory) / "cli-daemon.log"
        self.say = say
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def ensure(self) -> None:
        """Start a daemon when none runs (see the class docstring). Raises RuntimeError with
        the log's tail when the daemon it starts exits."""
        if self.proc is not None:
            if self.proc.poll() is None:
                return
            raise RuntimeError(f"dagster-daemon exited with {self.proc.returncode}: {self.log_path.read_text(errors='replace')[-1500:]}")
        if daemon_alive(self.instance):
            return
        daemon = Path(sys.executable).with_name("dagster-daemon")
        cmd = [str(daemon), "run", "-w", str(workspace_file()), "--log-level", "warning"]
        self.say(f"starting dagster-daemon for this backfill (no daemon of {self.instance.root_directory} is running; log {self.log_path})")
        self.started_at = time.time()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=settings.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_terminate_with_parent)

    def close(self) -> None:
        """Stop the daemon this keeper started, and remove its heartbeats (see the class docstring)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
                self.proc.wait()
        beats = self.instance.get_daemon_heartbeats().values()
        if beats and len({b.daemon_id for b in beats}) == 1 and all(b.timestamp >= self.started_at - 1 for b in beats):
            self.instance.wipe_daemon_heartbeats()
        self.proc = None


@contextlib.contextmanager
def daemon_kept(instance: dg.DagsterInstance, say=print) -> Iterator[DaemonKeeper]:
    """A :class:`DaemonKeeper`, ensured on entry and closed on exit."""
    keeper = DaemonKeeper(instance, say=say)
    try:
        keeper.ensure()
        yield keeper
    finally:
        keeper.close()


def _terminate_with_parent() -> None:
    """In a child before exec (Linux): SIGTERM when the parent process dies (``PR_SET_PDEATHSIG``)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


#: Run tags naming the ``vector-assets backfill`` process that submitted a run, and its host.
CLI_PID_TAG = "vector_assets/cli_pid"
CLI_HOST_TAG = "vector_assets/cli_host"


def cancel_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Cancel the queued runs that a ``vector-assets backfill`` of this host submitted and that
    nobody follows any more (its process is gone: killed, or its machine's session ended).
    Returns their run ids. Runs already started are left to finish (or to
    :func:`vector_assets.runs.fail_dead_runs` when their own process is gone)."""
    import socket

    from .runs import pid_alive

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
    ERROR) and ``message`` (the root cause of its first step failure, or of the run's failure)."""

    run_id: str
    status: str
    sums: dict[str, float] = field(default_factory=dict)
    check_errors: list[tuple[str, str]] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0


def outcome(instance: dg.DagsterInstance, run: dg.DagsterRun, root_cause) -> RunOutcome:
    """Read a finished run's :class:`RunOutcome` from the event log (``root_cause``: how to
    shorten a Dagster error to its first line)."""
    from collections import defaultdict

    sums: dict[str, float] = defaultdict(float)
    errors: list[tuple[str, str]] = []
    message = ""
    for record in instance.all_logs(run.run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.event_specific_data.materialization
            key = mat.asset_key.to_user_string()
            for name, value in mat.metadata.items():
                if isinstance(getattr(value, "value", None), (int, float)) and not isinstance(value.value, bool):
                    sums[f"{key}.{name}"] += value.value
            sums[f"{key}.partitions"] += 1
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                errors.append((evaluation.asset_check_key.name, evaluation.partition))
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE and not message and event.step_failure_data.error is not None:
            message = root_cause(event.step_failure_data.error)
        elif event.event_type == dg.DagsterEventType.ENGINE_EVENT and not message and "Run execution process for" in (record.message or ""):
            # The code server saw the run's process die (killed, out of memory): Dagster's own words.
            message = record.message.replace("[DagsterApiServer] ", "")[:300]
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and not message:
            data = event.event_specific_data
            message = root_cause(data.error) if getattr(data, "error", None) is not None else (event.message or "")
    stats = instance.get_run_stats(run.run_id)
    seconds = (stats.end_time or time.time()) - (stats.start_time or stats.launch_time or time.time()) if stats else 0.0
    return RunOutcome(run.run_id, run.status.value, dict(sums), errors, message, max(0.0, seconds))
