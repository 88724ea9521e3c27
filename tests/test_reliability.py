"""No silent loss across sources, instances and restarts (issue #17): each test reproduces one
reported loss, stale row or wrong verdict on real records from the bundled sample, through the
command line, a real Dagster instance and Milvus (Lite, or the 2.3.5 server in
``scripts/server_tests.sh``); counts are what Milvus holds against the latest version of every
record in the landing data."""

import json
import os

import pytest

from vector_assets.store import milvus_store
from vector_assets.settings import DEFAULT_MODEL

from .conftest import sample_records, write_jsonl
from .test_cli import run_cli, summary

COLLECTION = milvus_store.collection_name(DEFAULT_MODEL)


def _hadoop(n: int) -> list[dict]:
    """The first ``n`` HADOOP Jira issues of the bundled sample, in file order."""
    return sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2000-01-01", "2100-01-01")[:n]


def _record_ids(db, tenant: str | None = None) -> list[str]:
    client = milvus_store.connect(str(db))
    try:
        if not client.has_collection(COLLECTION):
            return []
        expr = "passage == 0" + (f" and tenant == {milvus_store.quote(tenant)}" if tenant else "")
        return sorted(r["record_id"] for r in client.query(COLLECTION, filter=expr, output_fields=["record_id"], limit=16384))
    finally:
        client.close()


def _env(base: dict, **changes) -> dict:
    env = dict(base)
    env.update({k: str(v) for k, v in changes.items()})
    return env


@pytest.mark.parametrize("order", ["L1 first", "L2 first"])
def test_a_second_landing_folder_is_refused_not_allowed_to_delete(workspace, tmp_path, order):
    """Item 1: two landing folders (the even and the odd lines of HADOOP) feeding one store.
    Before: the second folder's backfill deleted the first's rows as stale (30 of 60 left).
    Now the collection is bound to the folder that wrote it: the other folder's backfill exits
    2 with one line naming both, and deletes nothing; ``--rebind-landing`` moves the binding."""
    records = _hadoop(24)
    l1, l2 = tmp_path / "L1", tmp_path / "L2"
    write_jsonl(l1 / "jira.jsonl", records[1::2])
    write_jsonl(l2 / "jira.jsonl", records[0::2])
    first, second = (l1, l2) if order == "L1 first" else (l2, l1)
    expected_first = sorted(r["id"] for r in (records[1::2] if first == l1 else records[0::2]))
    base = dict(os.environ)

    done = run_cli("backfill", env=_env(base, VECTOR_ASSETS_LANDING_DIR=first))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _record_ids(workspace["db"]) == expected_first

    refused = run_cli("backfill", env=_env(base, VECTOR_ASSETS_LANDING_DIR=second))
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    error = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(first.resolve()) in error[0] and str(second.resolve()) in error[0], refused.stderr
    assert "backfill:" not in refused.stdout  # no run started
    assert _record_ids(workspace["db"]) == expected_first

    # A second Dagster instance with its own state folder, writing the same database: refused too.
    other = _env(base, VECTOR_ASSETS_LANDING_DIR=second, DAGSTER_HOME=tmp_path / "dagster_home_2", VECTOR_ASSETS_HOME=tmp_path / "home_2")
    refused = run_cli("backfill", env=other)
    assert refused.returncode == 2 and str(first.resolve()) in refused.stderr, refused.stderr[-2000:]
    assert _record_ids(workspace["db"]) == expected_first

    # The folder moved for good: rebinding makes the store hold exactly the new folder's records.
    moved = run_cli("backfill", "--all", "--rebind-landing", env=other)
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert "re-bound from landing directory" in moved.stdout
    expected_second = sorted(r["id"] for r in records if r["id"] not in expected_first)
    assert _record_ids(workspace["db"]) == expected_second
    assert summary(moved.stdout)["deleted"] == len(expected_first)


def test_deletes_propagate_after_the_landing_index_is_lost(workspace):
    """Item 2: 40 HADOOP records and 5 microsoft/vscode issues backfilled; then the landing
    index removed, vscode's file removed and HADOOP's first and last days removed. Before: every
    backfill said deleted=0 and Milvus kept 36 HADOOP records (33 expected) and all 5 vscode
    ones. Now the store is reconciled against the landing data for every tenant-day it holds."""
    hadoop = _hadoop(40)
    vscode = sample_records("github_issues.jsonl", "microsoft/vscode", "2000-01-01", "2100-01-01")[:5]
    assert len(vscode) == 5
    write_jsonl(workspace["landing"] / "jira.jsonl", hadoop)
    write_jsonl(workspace["landing"] / "vscode.jsonl", vscode)
    env = dict(os.environ)
    done = run_cli("backfill", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(_record_ids(workspace["db"], "HADOOP")) == 40 and len(_record_ids(workspace["db"], "microsoft/vscode")) == 5

    for path in workspace["home"].glob("state.sqlite*"):
        path.unlink()
    (workspace["landing"] / "vscode.jsonl").unlink()
    days = sorted({r["day"] for r in hadoop})
    kept = [r for r in hadoop if r["day"] not in (days[0], days[-1])]
    assert 0 < len(kept) < len(hadoop)
    write_jsonl(workspace["landing"] / "jira.jsonl", kept)

    again = run_cli("backfill", env=env)
    # The ends of HADOOP's range are deleted; the vanished tenant is refused, its rows kept.
    assert again.returncode == 1, again.stdout[-2000:] + again.stderr[-2000:]
    assert "reconciling:" in again.stdout
    assert "refusing: tenant microsoft/vscode" in again.stderr and "(5 records)" in again.stderr
    assert _record_ids(workspace["db"], "HADOOP") == sorted(r["id"] for r in kept)
    assert summary(again.stdout)["deleted"] == len(hadoop) - len(kept)
    assert len(_record_ids(workspace["db"], "microsoft/vscode")) == 5
    # The reconcile read the whole collection: each tenant-day it held is marked written and the
    # collection claimed (issue #20), so later runs read the store only for marked tenant-days;
    # the vanished tenant's days among them, which the run below still deletes.
    import sqlalchemy as sa

    from vector_assets import state

    with state.engine(state.state_url()).connect() as conn:
        claimed = conn.execute(sa.select(state.written_stores.c.store)).scalars().all()
        marked = set(map(tuple, conn.execute(sa.select(state.written.c.tenant, state.written.c.day)).all()))
    assert len(claimed) == 1 and COLLECTION in claimed[0]
    assert marked == {(r["tenant"], r["day"]) for r in hadoop + vscode}

    gone = run_cli("backfill", "--all", "--delete-vanished-tenants", env=env)
    assert gone.returncode == 0, gone.stderr[-2000:]
    assert summary(gone.stdout)["deleted"] == 5
    assert _record_ids(workspace["db"]) == sorted(r["id"] for r in kept)


def test_a_record_moved_to_another_tenant_leaves_no_old_copy(workspace):
    """Item 3: ``jira:EDGE:777`` in tenant EDGE, then a newer line puts it in EDGE2. Before: both
    rows stayed and a search in EDGE ranked the old text first. Now the latest version wins
    across tenants: EDGE's row is deleted, the old line reported as superseded."""
    base = _hadoop(1)[0]
    old = dict(base, tenant="EDGE", id="jira:EDGE:777", updated_at="2024-05-02T09:00:00Z", summary="zebra orchard irrigation fails")
    write_jsonl(workspace["landing"] / "edge.jsonl", [old])
    env = dict(os.environ)
    done = run_cli("backfill", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _record_ids(workspace["db"], "EDGE") == ["jira:EDGE:777"]

    newer = dict(old, tenant="EDGE2", updated_at="2024-05-03T09:00:00Z", summary="zebra orchard irrigation fixed in the new project")
    write_jsonl(workspace["landing"] / "edge2.jsonl", [newer])
    moved = run_cli("backfill", env=env)
    assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr[-2000:]
    assert _record_ids(workspace["db"], "EDGE") == []
    assert _record_ids(workspace["db"], "EDGE2") == ["jira:EDGE:777"]
    assert summary(moved.stdout)["deleted"] == 1 and summary(moved.stdout)["quarantined"] == 0
    hits = run_cli("search", "--tenant", "EDGE", "--json", "zebra orchard", env=env)
    # EDGE holds no row any more: search says so (an unknown tenant), or finds nothing.
    assert (hits.returncode == 2 and "EDGE" in hits.stderr) or (hits.returncode == 0 and json.loads(hits.stdout)["hits"] == []), hits.stdout + hits.stderr


def test_superseded_re_exports_are_not_failures(workspace):
    """Item 10: 20 real HADOOP records plus a second file re-exporting 5 of them with a later
    ``updated_at``. Before: failure_rate ERROR 1.0 on the old days and exit 1. Now superseded
    lines are reported, not counted as failures: exit 0, no check error."""
    hadoop = _hadoop(20)
    again = [dict(r, updated_at="2024-12-01T10:00:00Z") for r in hadoop[:5]]
    write_jsonl(workspace["landing"] / "jira.jsonl", hadoop)
    write_jsonl(workspace["landing"] / "jira_reexport.jsonl", again)
    env = dict(os.environ)
    done = run_cli("backfill", env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stats = summary(done.stdout)
    assert stats["check_errors"] == 0 and stats["quarantined"] == 0 and stats["superseded"] == 5
    assert len(_record_ids(workspace["db"], "HADOOP")) == 20
    checks = run_cli("checks", env=env)
    assert checks.returncode == 0, checks.stdout[-2000:]


def _runs_holding_slots(status, tags=None, n=2) -> list[str]:
    """``n`` runs of the tenant-day job in the ``DAGSTER_HOME`` instance, each holding a slot
    of the ``milvus_writes`` pool, left in ``status`` (what a run whose process was SIGKILLed
    while its code server lived looks like: FAILURE with its slot claimed)."""
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun

    from vector_assets.instance import runs
    from vector_assets import settings

    instance = settings.dagster_instance()
    instance.event_log_storage.initialize_concurrency_limit_to_default(runs.POOL)
    assert _held_slots(instance) == 0
    ids = []
    for i in range(n):
        run = DagsterRun(job_name="tenant_day_vectors_job", run_id=f"{i:08d}-0000-0000-0000-killedbysig9", status=dg.DagsterRunStatus.STARTED, tags=tags or {})
        instance.add_run(run)
        claim = instance.event_log_storage.claim_concurrency_slot(runs.POOL, run.run_id, "tenant_day_vectors")
        assert claim.slot_status.value == "CLAIMED"
        if status != dg.DagsterRunStatus.STARTED:
            instance.report_run_failed(instance.get_run_by_id(run.run_id), message="terminated by signal 9")
        ids.append(run.run_id)
    assert _held_slots(instance) == 2
    return ids


def _held_slots(instance) -> int:
    """Claimed slots of the milvus_writes pool (read from Dagster, not through our helpers)."""
    from vector_assets.instance import runs

    return instance.event_log_storage.get_concurrency_info(runs.POOL).active_slot_count


def test_slots_held_by_finished_runs_are_freed(workspace):
    """Item 5: two runs marked FAILURE with their pool slots still claimed. Before: every later
    run waited (a CLI backfill printed `waiting: … slots held by runs: … (FAILURE)` for 13
    minutes). Now ``backfill`` frees them on start, and the daemon's run monitoring
    (``free_slots_after_run_end_seconds`` in dagster.yaml) frees them for UI runs."""
    import logging
    import time

    import dagster as dg
    from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration

    from vector_assets.instance import runs
    from vector_assets import settings

    write_jsonl(workspace["landing"] / "jira.jsonl", _hadoop(5))
    held = _runs_holding_slots(dg.DagsterRunStatus.FAILURE)
    started = time.monotonic()
    done = run_cli("backfill", env=dict(os.environ), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert f"freed the pool slots of 2 finished runs: {', '.join(held)}" in done.stdout
    assert len(_record_ids(workspace["db"])) == 5

    # The UI path: the daemon's monitoring iteration, with the instance's own settings.
    instance = settings.dagster_instance()
    assert instance.run_monitoring_settings.get("free_slots_after_run_end_seconds")
    for run_id in held:
        instance.event_log_storage.claim_concurrency_slot(runs.POOL, run_id, "tenant_day_vectors")
    assert _held_slots(instance) == 2
    time.sleep(instance.run_monitoring_settings["free_slots_after_run_end_seconds"] + 1)

    class Context:  # what the monitoring daemon hands its iteration
        pass

    Context.instance = instance
    list(execute_concurrency_slots_iteration(Context(), logging.getLogger("test")))
    assert _held_slots(instance) == 0


@pytest.mark.parametrize("signame, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_backfill_waiting_for_a_slot_stops_on_a_signal(workspace, signame, status):
    """Item 6: both slots held by live runs of another process; a backfill waits. Before: it
    ignored SIGTERM and SIGINT ("stopping…", then waiting on) while its worker spun at 100%
    CPU. Now it waits in a sleep, and a signal ends it at once with the summary and 143/130."""
    import signal
    import socket
    import subprocess
    import time

    import dagster as dg

    from vector_assets.instance import runs

    from .test_faults import _spawn

    grace_s = 10  # vector_assets.cli.STOP_GRACE_S

    write_jsonl(workspace["landing"] / "jira.jsonl", _hadoop(5))
    holder = subprocess.Popen(["sleep", "600"])
    try:
        _runs_holding_slots(dg.DagsterRunStatus.STARTED, tags={runs.PID_TAG: str(holder.pid), runs.HOST_TAG: socket.gethostname()})
        proc = _spawn(dict(os.environ))
        while "to materialise in" not in (line := proc.stdout.readline()):
            assert line, proc.stderr.read()[-2000:]

        def cpu_s() -> float:  # user + system CPU seconds of the backfill process
            fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu_s()
        time.sleep(4)
        spent = cpu_s() - before
        if signame == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        else:
            proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)
        assert time.monotonic() - sent < grace_s, err[-2000:]
        assert proc.returncode == status, out[-2000:] + err[-2000:]
        assert f"stopped by {signame} after 0 of 1 runs" in err
        assert summary(out)["materialised_partitions"] == 0
        assert spent < 1.0, f"the waiting backfill used {spent:.1f} CPU s in 4 s"
    finally:
        holder.kill()


def test_status_says_when_the_landing_index_is_older_than_the_files(workspace):
    """Item 11: before, `status` read the index without refreshing it and said "in sync" after
    an edit. Now it says the index is older than the files, since when, and exits 1."""
    records = _hadoop(5)
    write_jsonl(workspace["landing"] / "jira.jsonl", records)
    env = dict(os.environ)
    assert run_cli("backfill", env=env).returncode == 0
    day = records[0]["day"]
    fresh = run_cli("status", "--tenant", "HADOOP", "--day", day, env=env)
    assert fresh.returncode == 0 and "older than the landing files" not in fresh.stderr, fresh.stdout + fresh.stderr
    write_jsonl(workspace["landing"] / "jira.jsonl", [dict(records[0], summary="edited after the backfill")] + records[1:])
    stale = run_cli("status", "--tenant", "HADOOP", "--day", day, env=env)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "the landing index is older than the landing files: 1 files changed since its last refresh (20" in stale.stderr
    assert str(workspace["landing"] / "jira.jsonl") in stale.stderr


def test_a_corrupt_landing_index_names_its_file_cause_and_recovery(workspace):
    """Item 12: a corrupt landing index ended in `DagsterExecutionStepExecutionError`. Now one
    line names the file, the cause and the recovery; the vectors survive, and the documented
    recovery (remove the index) re-reads everything and embeds nothing."""
    records = _hadoop(6)
    write_jsonl(workspace["landing"] / "jira.jsonl", records)
    env = dict(os.environ)
    assert run_cli("backfill", env=env).returncode == 0
    index = workspace["home"] / "state.sqlite"
    for extra in workspace["home"].glob("state.sqlite-*"):
        extra.unlink()
    index.write_bytes(b"this is not a database, it was overwritten" * 200)
    broken = run_cli("backfill", env=env)
    assert broken.returncode == 1, broken.stdout[-2000:] + broken.stderr[-2000:]
    error = [line for line in broken.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "file is not a database" in error[0] and str(index) in error[0] and "rm " in error[0], broken.stderr
    assert "DagsterExecutionStepExecutionError" not in broken.stderr
    assert len(_record_ids(workspace["db"])) == 6
    for path in workspace["home"].glob("state.sqlite*"):
        path.unlink()
    again = run_cli("backfill", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert summary(again.stdout)["embedded"] == 0 and len(_record_ids(workspace["db"])) == 6


def test_backfill_output_and_skipped_count(workspace):
    """Item 13: no DEBUG lines of landing_index_job before the backfill's own; after an edit,
    the summary's skipped counts each unchanged record once (it said 411 for 300 records:
    unchanged tenant-days inside a run's range were counted twice)."""
    records = _hadoop(30)
    write_jsonl(workspace["landing"] / "jira.jsonl", records)
    env = dict(os.environ)
    first = run_cli("backfill", env=env)
    assert first.returncode == 0
    assert not [line for line in (first.stdout + first.stderr).splitlines() if "DEBUG" in line or "landing_index_job" in line], first.stderr[:2000]
    days = sorted({r["day"] for r in records})
    middle = next(i for i, r in enumerate(records) if r["day"] == days[len(days) // 2])
    edited = list(records)
    edited[middle] = dict(records[middle], summary=records[middle]["summary"] + " (edited)")
    write_jsonl(workspace["landing"] / "jira.jsonl", edited)
    second = run_cli("backfill", env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    stats = summary(second.stdout)
    assert stats["embedded"] == 1 and stats["skipped"] == len(records) - 1, stats
