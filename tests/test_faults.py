"""The command line after faults (issue #9): another database, a fresh Dagster instance,
vanished files, kill -9, SIGTERM, a killed worker, an unreachable server. Real model, Milvus
Lite, real records, the ``vector-assets`` executable."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from vector_assets.store import milvus_store
from vector_assets.settings import DEFAULT_MODEL

from .test_cli import EXE, run_cli, summary

NAME = milvus_store.collection_name(DEFAULT_MODEL)


@pytest.fixture
def env(workspace):
    return dict(os.environ)


def count(uri, expr=""):
    client = milvus_store.connect(str(uri))
    try:
        return milvus_store.count_records(client, NAME, expr)
    finally:
        client.close()


def test_another_database_and_a_fresh_dagster_instance_get_every_row(env, hadoop_days, workspace, tmp_path):
    """Items 1 and 10: a backfill into an empty database B after one into A writes every
    record to B; a fresh DAGSTER_HOME (no materialisation recorded) runs every tenant-day again."""
    first = run_cli("backfill", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    other = tmp_path / "b" / "milvus.db"
    try:
        second = run_cli("backfill", env=dict(env, VECTOR_ASSETS_MILVUS_URI=str(other)))
        assert second.returncode == 0, second.stderr[-2000:]
        stats = summary(second.stdout)
        assert stats["unchanged_partitions"] == 0 and stats["rows_written"] == len(hadoop_days)
        assert count(other) == len(hadoop_days)
    finally:
        milvus_store.stop_local_server(other)

    fresh = dict(env, DAGSTER_HOME=str(tmp_path / "fresh_dagster_home"))
    third = run_cli("backfill", env=fresh)
    assert third.returncode == 0, third.stderr[-2000:]
    stats = summary(third.stdout)
    assert stats["unchanged_partitions"] == 0 and stats["embedded"] == 0 and stats["skipped"] == len(hadoop_days)
    os.environ["DAGSTER_HOME"] = fresh["DAGSTER_HOME"]
    with dg.DagsterInstance.get() as instance:
        materialised = instance.get_materialized_partitions(dg.AssetKey("milvus_vectors"))
    # Every day with records, and the empty days between them (one run over the tenant's range).
    assert len(materialised) == stats["materialised_partitions"] and {f"{r['day']}|HADOOP" for r in hadoop_days} <= materialised


def test_vanished_files_do_not_delete_a_tenant_unless_asked(env, hadoop_days, workspace):
    """Item 5: files gone (an unmounted disk): the backfill refuses, says what it would delete,
    exits non-zero and deletes nothing; with --delete-vanished-tenants it deletes."""
    assert run_cli("backfill", env=env).returncode == 0
    (workspace["landing"] / "jira.jsonl").unlink()
    refused = run_cli("backfill", env=env)
    assert refused.returncode == 1
    assert "refusing: tenant HADOOP has no line in the landing data any more" in refused.stderr
    assert f"({len(hadoop_days)} records)" in refused.stderr
    assert count(workspace["db"]) == len(hadoop_days)
    deleted = run_cli("backfill", "--delete-vanished-tenants", env=env)
    assert deleted.returncode == 0, deleted.stderr[-2000:]
    assert summary(deleted.stdout)["deleted"] == len(hadoop_days)
    assert count(workspace["db"]) == 0


def _spawn(env, *args):
    return subprocess.Popen([EXE, "backfill", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_line(proc, prefix, timeout=300):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no line starting {prefix!r}: {''.join(lines)[-2000:]}")


def _started_runs(dagster_home):
    if not (Path(dagster_home) / "dagster.yaml").exists():
        return []
    os.environ["DAGSTER_HOME"] = dagster_home
    with dg.DagsterInstance.get() as instance:
        return instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))


def _dequeue_lock_held(dagster_home: str) -> bool:
    """Whether a process holds the backfill command's dequeue lock of the instance
    (``$DAGSTER_HOME/cli-dequeue.lock``, :class:`vector_assets.instance.launch.RunDequeuer`): a
    child of a killed command that inherited the lock's descriptor would keep every later
    command from dequeuing its runs."""
    import fcntl

    path = Path(dagster_home) / "cli-dequeue.lock"
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _wait_until_no_started_runs(dagster_home: str, timeout: float = 300) -> list:
    deadline = time.monotonic() + timeout
    while (started := _started_runs(dagster_home)) and time.monotonic() < deadline:
        time.sleep(1)
    return started


def test_a_killed_backfill_does_not_hang_the_next(env, hadoop_days, workspace):
    """Item 7 (issue #19: runs go through the instance): kill -9 a backfill twice while its runs
    run. Its dequeue lock is not left held; its queued runs are cancelled by the next backfill, its
    started runs finish on their own or are failed as gone; the next backfill completes and
    every record lands."""
    for _ in range(2):
        proc = _spawn(env, "--max-partitions-per-run", "2", "--all")
        _wait_for_line(proc, "indexed ")  # the instance's storage exists by now
        deadline = time.monotonic() + 300
        while not _started_runs(env["DAGSTER_HOME"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert (Path(env["DAGSTER_HOME"]) / "cli-dequeue.lock").exists()  # it was dequeuing
        deadline = time.monotonic() + 60
        while _dequeue_lock_held(env["DAGSTER_HOME"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _dequeue_lock_held(env["DAGSTER_HOME"]), "the killed backfill's dequeue lock is still held"
    done = run_cli("backfill", env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert _wait_until_no_started_runs(env["DAGSTER_HOME"]) == []
    assert count(workspace["db"]) == len(hadoop_days)
    again = run_cli("backfill", env=env, timeout=600)
    assert again.returncode == 0 and summary(again.stdout)["embedded"] == 0, again.stdout[-2000:] + again.stderr[-2000:]


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_backfill_and_reports(env, hadoop_days, workspace, signum, status):
    """Item 8: SIGTERM, or Ctrl-C (SIGINT to the process group, as a terminal sends it), stops a
    backfill: no further run starts, the summary is printed and the exit status says it was
    stopped (128 + the signal)."""
    proc = _spawn(env, "--max-partitions-per-run", "1")
    _wait_for_line(proc, "[1/")
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # the terminal signals the whole foreground group
    else:
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == status, err[-2000:]
    name = signal.Signals(signum).name
    assert f"stopped by {name} after" in err
    stats = summary(out)
    finished = int(err.split(f"stopped by {name} after ")[1].split()[0])
    assert finished < stats["runs"]


def test_a_killed_milvus_lite_server_is_restarted_and_every_record_lands(env, hadoop_days, workspace):
    """Item 9: the milvus-lite server killed (-9) while a backfill runs: the next connection
    starts a new server on the same data, retries reconnect, and every record lands."""
    proc = _spawn(env, "--max-partitions-per-run", "2")
    _wait_for_line(proc, "[1/")
    state = Path(str(workspace["db"]) + ".server.json")
    server_pid = json.loads(state.read_text())["pid"]
    os.kill(server_pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert json.loads(state.read_text())["pid"] != server_pid
    assert summary(out)["failed_partitions"] == 0
    assert count(workspace["db"]) == len(hadoop_days)


def _run_workers_of(dagster_home: str) -> list[int]:
    """Pids of the run worker processes of the instance ``dagster_home``: the processes a code
    server (``dagster api grpc``) started with multiprocessing's spawn to execute a run."""
    found = []
    for pid in subprocess.run(["pgrep", "-f", "spawn_main"], capture_output=True, text=True).stdout.split():
        try:
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            if b"api\0grpc" not in Path(f"/proc/{ppid}/cmdline").read_bytes():
                continue
            if f"DAGSTER_HOME={dagster_home}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_killed_worker_does_not_abandon_the_backfill(env, hadoop_days, workspace):
    """Item 9 (issue #19: runs go through the instance): a run's worker process killed with
    SIGKILL mid-run: the run fails as killed (its pool slot freed) and is submitted again; the
    backfill ends with a summary and every record lands."""
    from vector_assets.instance import runs

    proc = _spawn(env, "--max-partitions-per-run", "3", "--workers", "2")
    _wait_for_line(proc, "[1/")
    deadline = time.monotonic() + 300
    victims: list[int] = []
    # Only a run seen entering its step: one already in its step when the first run finished
    # may be writing its success as it is killed (seen with two suites on two cores: the kill
    # landed after the run's last event, and nothing died).
    late = {run.run_id for run in _started_runs(env["DAGSTER_HOME"]) if run.tags.get(runs.PID_TAG, "").isdigit()}
    while not victims and time.monotonic() < deadline:
        # A run in its step: the run's process killed (an out-of-memory kill, a lost machine).
        workers = _run_workers_of(env["DAGSTER_HOME"])
        for run in _started_runs(env["DAGSTER_HOME"]):
            step = run.tags.get(runs.PID_TAG, "")
            if run.run_id not in late and step.isdigit() and int(step) in workers:  # the run's process, in its step (in-process executor)
                victims = [int(step)]
        time.sleep(0.1)
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert "died (" in err and "submitted again" in err, err[-2000:] + out[-3000:]
    assert proc.returncode == 0, err[-2000:]
    assert summary(out)["failed_partitions"] == 0
    assert count(workspace["db"]) == len(hadoop_days)


def test_an_unreachable_milvus_is_a_one_line_error(env, workspace):
    """Item 9: search against a server that is not there: one line naming the cause."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = run_cli("search", "--tenant", "HADOOP", "x", env=dict(env, VECTOR_ASSETS_MILVUS_URI=f"http://127.0.0.1:{port}"), timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith(f"error: Milvus at http://127.0.0.1:{port}: "), out.stderr
