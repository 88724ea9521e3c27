"""Landing data in an object store, and state that two machines share (issue #19 items 1-2).

The object store is moto's S3-compatible server, started on loopback by the test; the state
database is a PostgreSQL database of the local cluster (``scripts/local_postgres.sh``, as root)
or, without root, a SQLite file both "machines" open. Each simulated machine has its own empty
``VECTOR_ASSETS_HOME``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from vector_assets.ingest.landing import LandingIndex
from vector_assets.embed.quality import QualityThresholds
from vector_assets.resources import LandingResource, MilvusResource

from .conftest import register_tenants, sample_records
from .test_pipeline import materialize_days, materialize_index, rows_of

LOCAL_POSTGRES = Path(__file__).resolve().parent.parent / "scripts" / "local_postgres.sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a loopback port, for the module; the AWS variables that boto3 (and
    s3fs) read point at it."""
    port = _free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """An s3fs filesystem on the moto server with an empty bucket ``landing``."""
    import s3fs

    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if fs.exists("landing"):
        fs.rm("landing", recursive=True)
    fs.mkdir("landing")
    fs.invalidate_cache()
    return fs


@pytest.fixture
def state_url(tmp_path):
    """The shared state database: a fresh Postgres database (root), else a SQLite file."""
    if os.geteuid() != 0:
        return f"sqlite:///{tmp_path / 'shared' / 'state.sqlite'}"
    out = subprocess.run([str(LOCAL_POSTGRES), "--fresh", "va_test_state"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    env = dict(pair.split("=", 1) for pair in out.stdout.split()[1:])
    return f"postgresql+psycopg2://{env['DAGSTER_PG_USER']}:{env['DAGSTER_PG_PASSWORD']}@{env['DAGSTER_PG_HOST']}:{env['DAGSTER_PG_PORT']}/{env['DAGSTER_PG_DB']}"


def _lines(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _machine(tmp_path, name: str, landing: str, state_url: str, workspace, embedding_model) -> dict:
    """The resources of one simulated machine: its own empty home, the shared landing URL,
    state database and Milvus."""
    home = tmp_path / name
    home.mkdir()
    return {
        "landing": LandingResource(landing_dir=landing, state_dir=str(home), state_url=state_url),
        "embedding_model": embedding_model,
        "milvus": MilvusResource(uri=str(workspace["db"])),
        "quality": QualityThresholds(),
    }


def test_landing_in_an_object_store_on_two_machines(s3, state_url, workspace, embedding_model, instance, milvus_client, tmp_path):
    records = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-06")
    day = records[0]["day"]
    bad = '{"id": "HADOOP-broken", "tenant": "HADOOP", '
    s3.pipe("landing/exports/jira.jsonl", _lines(records) + bad.encode() + b"\n")
    url = "s3://landing/exports"

    one = _machine(tmp_path, "machine1", url, state_url, workspace, embedding_model)
    meta = materialize_index(one, instance)
    assert meta["files"].value == 1 and meta["unattributed_lines"].value == 1
    index = one["landing"].index()
    assert index.source == url and index.files() == ["s3://landing/exports/jira.jsonl"]
    # The bad line's report names the object's URL and line.
    (report,) = index.quarantined("", "")
    assert report["file"] == "s3://landing/exports/jira.jsonl" and report["line"] == len(records) + 1
    assert report["reason"].startswith("malformed JSON") and report["raw"] == bad

    register_tenants(instance, ["HADOOP"])
    first = materialize_days(one, instance, "HADOOP", day)
    expected = [r for r in records if r["day"] == day]
    assert first[("source_records", f"{day}|HADOOP")]["records_read"] == len(expected)
    assert first[("milvus_vectors", f"{day}|HADOOP")]["embedded"] == len(expected)
    assert {r["record_id"] for r in rows_of(milvus_client, "HADOOP", day)} == {r["id"] for r in expected}

    # Machine 2: another empty home, the same database. Its index is machine 1's (no re-scan),
    # and a re-run of the tenant-day embeds nothing.
    two = _machine(tmp_path, "machine2", url, state_url, workspace, embedding_model)
    assert not list((tmp_path / "machine2").iterdir())
    index2 = two["landing"].index()
    assert index2.count_lines() == len(records) + 1 and index2.refresh().files_scanned == []
    assert index2.unsynced_partitions(two["milvus"].store_key(embedding_model.model_id), day, day) == []
    again = materialize_days(two, instance, "HADOOP", day)
    assert again[("milvus_vectors", f"{day}|HADOOP")].get("embedded", 0) == 0
    assert not any(p.suffix in (".sqlite", ".db") for p in (tmp_path / "machine2").rglob("*"))

    # An edit of the object (a new ETag) is seen by content: only its tenant-day changed.
    edited = [dict(r, summary=r["summary"] + " (edited)") if r["id"] == expected[0]["id"] else r for r in records]
    s3.pipe("landing/exports/jira.jsonl", _lines(edited))
    s3.invalidate_cache()
    refreshed = two["landing"].refresh()
    assert refreshed.files_scanned == ["s3://landing/exports/jira.jsonl"] and refreshed.changed_partitions == {("HADOOP", day)}
    edit = materialize_days(one, instance, "HADOOP", day)
    assert edit[("milvus_vectors", f"{day}|HADOOP")]["embedded"] == 1
    assert edit[("milvus_vectors", f"{day}|HADOOP")]["skipped_unchanged"] == len(expected) - 1
    # The bad line is gone from the object: its report is cleared by the next index run.
    materialize_index(two, instance)
    assert index.quarantined("", "") == []


def test_a_landing_index_file_of_before_is_migrated(workspace, tmp_path, capfd):
    """An existing ``landing_index-<hash>.sqlite`` hands its sync marks to the state database,
    is renamed ``.migrated`` and a message says so."""
    import hashlib
    import sqlite3

    landing = workspace["landing"]
    (landing / "x.jsonl").write_text("")
    resolved = str(landing.resolve())
    old = workspace["home"] / f"landing_index-{hashlib.blake2b(resolved.encode(), digest_size=6).hexdigest()}.sqlite"
    old.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE synced (store TEXT, tenant TEXT, day TEXT, fingerprint TEXT, rows INTEGER)")
        db.execute("CREATE TABLE partitions_seen (tenant TEXT, day TEXT)")
        db.execute("INSERT INTO synced VALUES ('s', 'HADOOP', '2024-07-01', 'abc', 3)")
        db.execute("INSERT INTO partitions_seen VALUES ('HADOOP', '2024-07-01')")
    resource = LandingResource(landing_dir=str(landing), state_dir=str(workspace["home"]))
    index = resource.index()
    assert "moved to the state database" in capfd.readouterr().err
    assert not old.exists() and old.with_name(old.name + ".migrated").exists()
    assert index.synced_partitions("s") == [("HADOOP", "2024-07-01")] and index.synced_rows("s", [("HADOOP", "2024-07-01")]) == 3
    assert index.partitions() == [("HADOOP", "2024-07-01")]  # seen once: its rows are to be deleted
    assert isinstance(LandingIndex(landing, index.state_url), LandingIndex)
