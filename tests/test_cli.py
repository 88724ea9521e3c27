"""The command line on a small real slice: backfill, search, errors, and overlapping processes
against the default (Milvus Lite) database."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from vector_assets.instance import launch
from vector_assets.store import milvus_store
from vector_assets.settings import DEFAULT_MODEL

from .conftest import days_between, sample_records, use_local_postgres, write_jsonl

EXE = str(Path(sys.executable).with_name("vector-assets"))
SUMMARY = re.compile(r"^backfill: (.*)$", re.M)


def run_cli(*args, env, timeout=600):
    return subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def summary(stdout: str) -> dict:
    match = SUMMARY.search(stdout)
    assert match, stdout[-2000:]
    return {k: float(v) for k, v in (p.split("=") for p in match.group(1).split())}


@pytest.fixture
def cli_env(workspace):
    return dict(os.environ)


@pytest.fixture(params=["sqlite", "postgres"])
def storage_env(request, workspace, monkeypatch):
    """The environment of a command-line run, with Dagster's storage in SQLite (the default)
    or in a fresh Postgres database of the local cluster (``scripts/local_postgres.sh``; CI
    runs as root, which the script needs)."""
    if request.param == "postgres":
        use_local_postgres(monkeypatch, "va_test_cli")
    return request.param, dict(os.environ)


@pytest.fixture
def slice_records(workspace):
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-10")
    commits = sample_records("git_commits.jsonl", "pallets/flask", "2024-01-01", "2024-02-10")
    write_jsonl(workspace["landing"] / "jira_issues_hadoop.jsonl", jira)
    write_jsonl(workspace["landing"] / "git_commits.jsonl", commits)
    return jira, commits


def test_backfill_then_search(storage_env, slice_records, workspace, tmp_path):
    storage, cli_env = storage_env
    jira, commits = slice_records
    first = run_cli("backfill", env=cli_env)
    assert first.returncode == 0, first.stderr[-3000:]
    stats = summary(first.stdout)
    with dg.DagsterInstance.get() as instance:
        assert type(instance.event_log_storage).__name__ == {"sqlite": "BatchedSqliteEventLogStorage", "postgres": "BatchedPostgresEventLogStorage"}[storage]
        materialised = instance.get_materialized_partitions(dg.AssetKey("milvus_vectors"))
        # The run's totals, as its step stated them in one engine event, are what its recorded
        # events add up to (launch.outcome reads the one, not the thousands).
        (run,) = instance.get_runs(dg.RunsFilter(job_name="tenant_day_vectors_job"))
        stated, read = launch.outcome(instance, run, str), launch.outcome(instance, run, str, read_events=True)
        assert stated.sums == pytest.approx(read.sums, rel=1e-9)  # float sums added in another order
        assert stated.check_errors == read.check_errors and stated.status == read.status == "SUCCESS"
        assert stated.sums["milvus_vectors.partitions"] == len(materialised) and stated.sums["source_records.records_read"] == len(jira) + len(commits)
        assert sum(1 for e in instance.all_logs(run.run_id) if e.message == launch.RUN_TOTALS) == 1
    # One run for both tenants (the empty tenant-days their rectangle adds cost less than a
    # second run: partitions.plan_tenant_runs); every tenant-day of it is materialised, days
    # without records too.
    assert stats["runs"] == 1
    first_day, last_day = min(r["day"] for r in jira + commits), max(r["day"] for r in jira + commits)
    expected_days = {f"{d}|{t}" for d in days_between(first_day, last_day) for t in ("HADOOP", "pallets/flask")}
    assert materialised == expected_days and stats["materialised_partitions"] == len(expected_days)
    assert stats["records_read"] == len(jira) + len(commits)
    assert stats["rows_written"] == stats["embedded"] == len(jira) + len(commits)
    assert stats["tokens_embedded"] > stats["passages_embedded"] >= stats["embedded"]
    assert stats["quarantined"] == 0 and stats["failed_partitions"] == 0
    assert stats["partitions"] == len({("H", r["day"]) for r in jira} | {("F", r["day"]) for r in commits})

    client = milvus_store.connect(str(workspace["db"]))
    assert milvus_store.count_records(client, milvus_store.collection_name(DEFAULT_MODEL)) == len(jira) + len(commits)

    checks = run_cli("checks", env=cli_env)
    assert checks.returncode == 0, checks.stdout + checks.stderr[-2000:]
    table = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in checks.stdout.splitlines()[1:9]}
    for name in ("text_frame_valid", "vector_quality", "coverage", "retrievability", "failure_rate"):
        assert table[name] == [stats["partitions"], stats["partitions"], 0, 0, 0], (name, checks.stdout)  # tenant-days, passed, WARN, ERROR, not evaluated

    # Any tenant-day's figures and check outcomes, from the command line (#10 item 4).
    day = jira[0]["day"]
    empty = next(d for d in days_between(min(r["day"] for r in jira), max(r["day"] for r in jira)) if d not in {r["day"] for r in jira})
    status = run_cli("status", "--tenant", "HADOOP", "--start", day, "--end", day, "--json", env=cli_env)
    assert status.returncode == 0, status.stderr[-2000:]
    (entry,) = json.loads(status.stdout)
    assert entry["materialised"] and entry["figures"]["source_records"]["records_read"] == sum(r["day"] == day for r in jira)
    assert entry["checks"]["coverage"] == "passed" and not entry["changed_since_written"]
    text = run_cli("status", "--tenant", "HADOOP", "--day", empty, env=cli_env)
    assert text.returncode == 0 and "no records (in sync, empty)" in text.stdout, text.stdout

    second = run_cli("backfill", env=cli_env)
    assert second.returncode == 0
    again = summary(second.stdout)
    assert again["embedded"] == 0 and again["rows_written"] == 0 and again["skipped"] == len(jira) + len(commits)
    assert milvus_store.count_records(client, milvus_store.collection_name(DEFAULT_MODEL)) == len(jira) + len(commits)

    hit = run_cli("search", "--tenant", "pallets/flask", "-k", "3", "--json", commits[0]["message"], env=cli_env)
    assert hit.returncode == 0, hit.stderr
    hits = json.loads(hit.stdout)["hits"]
    assert hits[0]["id"] == f"git:pallets/flask:{commits[0]['sha']}"
    assert set(hits[0]) == {"id", "score", "day", "kind", "preview", "passage", "passage_text"}

    text = run_cli("search", "--tenant", "HADOOP", jira[0]["summary"], env=cli_env)
    assert text.returncode == 0 and jira[0]["id"] in text.stdout.splitlines()[0]

    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "tenant": "HADOOP", "text": jira[1]["summary"]}, {"id": "q2", "tenant": "pallets/flask", "text": commits[1]["subject"]}])
    batch = run_cli("search", "--queries", str(queries), "-k", "5", env=cli_env)
    assert batch.returncode == 0, batch.stderr
    lines = [json.loads(l) for l in batch.stdout.splitlines()]
    assert [l["id"] for l in lines] == ["q1", "q2"] and all(len(l["hits"]) == 5 for l in lines)
    assert jira[1]["id"] in [h["id"] for h in lines[0]["hits"]]
    client.close()


def test_cli_errors(cli_env, slice_records, workspace):
    missing = run_cli("search", "--tenant", "HADOOP", "x", env=cli_env)
    assert missing.returncode != 0 and "no Milvus database" in missing.stderr
    assert run_cli("backfill", "--tenant", "HADOOP", env=cli_env).returncode == 0
    unknown = run_cli("search", "--tenant", "nobody", "x", env=cli_env)
    assert unknown.returncode != 0 and unknown.stderr.strip() == "error: unknown tenant 'nobody': no vectors stored for it"
    empty = run_cli("search", "--tenant", "HADOOP", "  ", env=cli_env)
    assert empty.returncode != 0 and empty.stderr.strip() == "error: empty query"
    bad_tenant = run_cli("backfill", "--tenant", "nobody", env=cli_env)
    assert bad_tenant.returncode != 0 and "unknown tenant(s) nobody" in bad_tenant.stderr


def test_overlapping_backfills_and_a_concurrent_search(cli_env, workspace):
    """Default configuration (a Milvus Lite path): two backfill processes run at once and a
    search runs while they write; all succeed and every record lands exactly once."""
    seamonkey = sample_records("bugzilla_seamonkey.jsonl", "SeaMonkey", "2024-01-01", "2024-03-31")
    hadoop = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-08-15")
    commits = sample_records("git_commits.jsonl", "BurntSushi/ripgrep", "2024-01-01", "2024-09-30")
    write_jsonl(workspace["landing"] / "bugzilla.jsonl", seamonkey)
    write_jsonl(workspace["landing"] / "jira.jsonl", hadoop)
    write_jsonl(workspace["landing"] / "git.jsonl", commits)
    assert run_cli("backfill", "--tenant", "SeaMonkey", env=cli_env).returncode == 0

    procs = [
        subprocess.Popen([EXE, "backfill", "--tenant", t, "--max-partitions-per-run", "60"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for t in ("HADOOP", "BurntSushi/ripgrep")
    ]
    time.sleep(8)
    assert all(p.poll() is None for p in procs), "the backfills should still be running while we search"
    search = run_cli("search", "--tenant", "SeaMonkey", "-k", "3", "--json", seamonkey[0]["summary"], env=cli_env)
    still_running = [p.poll() is None for p in procs]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout)["hits"][0]["id"] == seamonkey[0]["id"]
    assert any(still_running), "the search should overlap the backfills"
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert summary(out)["failed_partitions"] == 0

    client = milvus_store.connect(str(workspace["db"]))
    name = milvus_store.collection_name(DEFAULT_MODEL)
    for tenant, records in (("SeaMonkey", seamonkey), ("HADOOP", hadoop), ("BurntSushi/ripgrep", commits)):
        assert milvus_store.count_records(client, name, f'tenant == "{tenant}"') == len(records)
    client.close()
