"""The Dagster UI path (#10): dagster-webserver and dagster-daemon on a temporary instance, a
backfill launched through the webserver's GraphQL API as the UI launches it, and what the UI
renders read back through GraphQL: the backfill completed, every tenant-day of the range
materialised (days without records too), none unsynced, every check with a latest outcome.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import ON_PGVECTOR, REPO, SERVER_URI, days_between, sample_records, write_jsonl

pytestmark = pytest.mark.skipif(bool(SERVER_URI), reason="the UI test runs on Milvus Lite only")

ASSETS = ("source_records", "extracted_text", "milvus_vectors")
RANGES = [("HADOOP", "2024-07-01", "2024-07-12"), ("SeaMonkey", "2024-01-01", "2024-01-10")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UI:
    """A running dagster-webserver (+ dagster-daemon) and a GraphQL client for it."""

    def __init__(self, url: str, env: dict, procs: list, logs: Path):
        self.url, self.env, self.procs, self.logs = url, env, procs, logs

    def gql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(f"{self.url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(), headers={"Content-Type": "application/json"})
        try:
            out = json.loads(urllib.request.urlopen(request, timeout=120).read())
        except urllib.error.HTTPError as err:
            raise AssertionError(err.read().decode()[:2000]) from None
        assert "errors" not in out, out["errors"]
        return out["data"]

    def wait_run(self, run_id: str, timeout: float = 300) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.gql("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(2)
        raise AssertionError(f"run {run_id} not finished after {timeout}s; logs in {self.logs}")

    def backfill(self, names: list[str], timeout: float = 600) -> dict:
        """Launch a backfill of ``names`` ("day|tenant") of the three assets as the UI's dialog
        does, wait for it to end and return it (status, runs, per-asset counts)."""
        launched = self.gql(
            "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }",
            {"p": {"assetSelection": [{"path": [a]} for a in ASSETS], "partitionNames": names, "fromFailure": False}},
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        query = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {
            status runs(limit: 500) { runId status startTime endTime tags { key value } }
            assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
                assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed } } } } } }"""
        deadline = time.time() + timeout
        while True:
            backfill = self.gql(query, {"id": launched["backfillId"]})["partitionBackfillOrError"]
            if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
                return backfill
            assert time.time() < deadline, f"backfill still {backfill['status']}; logs in {self.logs}"
            time.sleep(3)

    def check(self, asset: str, name: str) -> dict:
        """What the UI reads of one check: ``{"statuses": {"day|tenant": status}, "numFailed":
        ..., "latest": {...}}``: the per-tenant-day statuses (``partitionStatuses``, the
        Checks tab's and the catalog's source for a partitioned check), expanded from Dagster's
        ranges over days."""
        out = self.gql(
            """query($key: AssetKeyInput!, $name: String!) { assetNodeOrError(assetKey: $key) { ... on AssetNode { assetCheckOrError(checkName: $name) { ... on AssetCheck {
                name partitionDefinition { description }
                partitionStatuses { ... on AssetCheckMultiPartitionStatuses { primaryDimensionName ranges { primaryDimStartKey primaryDimEndKey
                    secondaryDim { ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions inProgressPartitions skippedPartitions executionFailedPartitions } } } } } } } } } }""",
            {"key": {"path": [asset]}, "name": name},
        )["assetNodeOrError"]["assetCheckOrError"]
        statuses = {}
        for r in (out["partitionStatuses"] or {}).get("ranges", []):
            for day in days_between(r["primaryDimStartKey"], r["primaryDimEndKey"]):
                for field, status in (("succeededPartitions", "SUCCEEDED"), ("failedPartitions", "FAILED"), ("inProgressPartitions", "IN_PROGRESS"), ("skippedPartitions", "SKIPPED"), ("executionFailedPartitions", "EXECUTION_FAILED")):
                    for tenant in r["secondaryDim"].get(field, []):
                        statuses[f"{day}|{tenant}"] = status
        return statuses

    def evaluation(self, asset: str, name: str, partition: str) -> dict:
        """The latest evaluation of check ``name`` on ``partition`` ("day|tenant"), as the
        check's per-partition view shows it: status, severity, description, metadata labels."""
        rows = self.gql(
            """query($key: AssetKeyInput!, $name: String!, $p: String) { assetCheckExecutions(assetKey: $key, checkName: $name, partition: $p, limit: 1) {
                status partition evaluation { severity description metadataEntries { label } } } }""",
            {"key": {"path": [asset]}, "name": name, "p": partition},
        )["assetCheckExecutions"]
        return rows[0] if rows else {}

    def launch_job(self, job: str) -> str:
        out = self.gql(
            "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }",
            {"p": {"selector": {"repositoryLocationName": "vector_assets", "repositoryName": "__repository__", "jobName": job}, "mode": "default"}},
        )["launchRun"]
        assert out["__typename"] == "LaunchRunSuccess", out
        return out["run"]["runId"]


@contextlib.contextmanager
def running_ui(root: Path, write_landing) -> "Iterator[UI]":
    """dagster-webserver and dagster-daemon on a fresh instance under ``root`` (the project's
    dagster.yaml), with the landing folder ``root/landing`` filled by ``write_landing(landing)``;
    stopped (with the local Milvus server) on exit."""
    landing, home, dagster_home = root / "landing", root / "home", root / "dagster_home"
    for d in (landing, home, dagster_home):
        d.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    write_landing(landing)
    env = {
        **os.environ, "DAGSTER_HOME": str(dagster_home), "VECTOR_ASSETS_LANDING_DIR": str(landing), "VECTOR_ASSETS_HOME": str(home),
        "VECTOR_ASSETS_MILVUS_URI": str(home / "milvus.db"), "HF_HUB_OFFLINE": "1",
    }
    bin_dir = Path(sys.executable).parent
    # Create the instance's storage once, before two processes race to create it (webserver and
    # daemon initialising a fresh SQLite instance at once can leave two alembic heads).
    subprocess.run([sys.executable, "-c", "from vector_assets.settings import dagster_instance; dagster_instance()"], env=env, check=True, cwd=REPO)
    port = int(os.environ.get("VECTOR_ASSETS_TEST_UI_PORT") or _free_port())
    procs = [
        subprocess.Popen([str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"], cwd=REPO, env=env, stdout=open(root / "webserver.log", "w"), stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=REPO, env=env, stdout=open(root / "daemon.log", "w"), stderr=subprocess.STDOUT, start_new_session=True),
    ]
    ui = UI(f"http://127.0.0.1:{port}", env, procs, root)
    try:
        deadline = time.time() + 180
        while True:
            try:
                entries = ui.gql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
            except (OSError, AssertionError):
                pass
            assert time.time() < deadline, (root / "webserver.log").read_text()[-3000:]
            time.sleep(2)
        yield ui
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "vector_assets.cli", "server", "stop"], env=env, capture_output=True)


def _landing(landing: Path) -> None:
    write_jsonl(landing / "jira.jsonl", sample_records("jira_issues_hadoop.jsonl", *RANGES[0]))
    write_jsonl(landing / "bugs.jsonl", sample_records("bugzilla_seamonkey.jsonl", *RANGES[1]))


@pytest.fixture(scope="module")
def ui(tmp_path_factory, request):
    """The UI over Milvus Lite, or on pgvector (``VECTOR_ASSETS_TEST_STORE``) over a fresh
    database of the session's PostgreSQL, selected by ``VECTOR_ASSETS_STORE_URL`` in the
    webserver's, the daemon's and every run's environment."""
    with pytest.MonkeyPatch.context() as mp:
        if ON_PGVECTOR:
            server = request.getfixturevalue("pg_server")
            server.psql("DROP DATABASE IF EXISTS ui WITH (FORCE);")
            server.psql("CREATE DATABASE ui;")
            mp.setenv("VECTOR_ASSETS_STORE_URL", server.get_uri("ui"))
        with running_ui(tmp_path_factory.mktemp("ui"), _landing) as running:
            yield running


def test_a_ui_backfill_is_green_materialises_every_tenant_day_and_shows_its_checks(ui):
    # The code location is named for the project.
    assert [e["name"] for e in ui.gql("{ workspaceOrError { ... on Workspace { locationEntries { name } } } }")["workspaceOrError"]["locationEntries"]] == ["vector_assets"]
    # A new user first materialises the landing index (it registers the tenants).
    assert ui.wait_run(ui.launch_job("landing_index_job")) == "SUCCESS"
    names = [f"{day}|{tenant}" for tenant, first, last in RANGES for day in days_between(first, last)]
    backfill = ui.backfill(names)

    # 1. Green: completed, every targeted tenant-day materialised, none failed; one run per tenant
    #    (the two tenants' day ranges differ: two rectangles).
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    assert len(backfill["runs"]) == len(RANGES) and all(r["status"] == "SUCCESS" for r in backfill["runs"])
    # The backfill's runs went one at a time, in creation order (dagster.yaml's tag limit):
    # the last created run wrote the latest materialisations, so its check rows are the ones the
    # Checks tab shows (two runs overlapping and finishing out of order left it "Not evaluated").
    spans = sorted((r["startTime"], r["endTime"]) for r in backfill["runs"])
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:])), spans
    for counts in backfill["assetBackfillData"]["assetBackfillStatuses"]:
        assert counts["numPartitionsTargeted"] == counts["numPartitionsMaterialized"] == len(names), counts
        assert counts["numPartitionsFailed"] == 0

    # 2. Every tenant-day of the range is materialised (days without records included), with
    #    its figures where it has records, and none is unsynced.
    with_records = {f"{r['day']}|HADOOP" for r in sample_records("jira_issues_hadoop.jsonl", *RANGES[0])}
    assert len(with_records) < len(days_between(*RANGES[0][1:]))  # the range has empty days
    for asset in ASSETS:
        node = ui.gql(
            """query($key: AssetKeyInput!, $names: [String!]) {
                assetNodeOrError(assetKey: $key) { ... on AssetNode { staleStatusByPartition(partitions: $names) } }
                assetOrError(assetKey: $key) { ... on Asset { assetMaterializations(partitions: $names) { partition metadataEntries { label } } } } }""",
            {"key": {"path": [asset]}, "names": names},
        )
        mats = node["assetOrError"]["assetMaterializations"]
        assert {m["partition"] for m in mats} == set(names), asset
        assert set(node["assetNodeOrError"]["staleStatusByPartition"]) == {"FRESH"}, (asset, node["assetNodeOrError"])
        if asset == "source_records":
            labelled = {m["partition"] for m in mats if any(e["label"] == "records_read" for e in m["metadataEntries"])}
            assert with_records <= labelled

    # 3. Every check has a status for every tenant-day with records, where the Checks tab reads
    #    it (per tenant-day), and it passed; empty days were not evaluated.
    for asset, check in (("source_records", "failure_rate"), ("extracted_text", "text_frame_valid"), ("milvus_vectors", "coverage"), ("milvus_vectors", "retrievability")):
        statuses = ui.check(asset, check)
        assert with_records <= {k for k, v in statuses.items() if v == "SUCCEEDED"}, (check, statuses)
        assert "FAILED" not in statuses.values() and "EXECUTION_FAILED" not in statuses.values(), (check, statuses)

    # 4. landing_index shows the refresh's counts.
    index = ui.gql("""{ assetOrError(assetKey: {path: ["landing_index"]}) { ... on Asset { assetMaterializations(limit: 1) { metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }""")
    entries = {e["label"]: e.get("intValue") for e in index["assetOrError"]["assetMaterializations"][0]["metadataEntries"]}
    assert entries["tenants"] == 2 and entries["unattributed_lines"] == 0


def _run_facts(ui: UI, run_id: str) -> dict:
    """What makes a run's kind, as the webserver reports it: its tags, its code location, and
    the event types of its log in order (queued, then launched by the launcher)."""
    data = ui.gql(
        """query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } repositoryOrigin { repositoryLocationName }
            eventConnection(afterCursor: null, limit: 5000) { events { __typename } } } } }""",
        {"id": run_id},
    )["runOrError"]
    return {
        "status": data["status"],
        "tags": {t["key"]: t["value"] for t in data["tags"]},
        "location": data["repositoryOrigin"]["repositoryLocationName"],
        "events": [e["__typename"] for e in data["eventConnection"]["events"]],
    }


def test_a_cli_backfill_makes_the_same_kind_of_runs_as_a_ui_backfill(ui):
    """Issue #19 item 3: `vector-assets backfill` submits its runs through the instance: with
    the UI's daemon running it leaves the dequeuing to it, and its run is queued and launched
    as a UI backfill's run is (same code location; queued, then starting through the instance's
    run launcher, then started by its run worker; the same partition-range tags)."""
    ui_runs = ui.gql('{ runsOrError(filter: {tags: [{key: "dagster/asset_partition_range_start", value: "2024-07-01|HADOOP"}]}) { ... on Runs { results { runId tags { key value } } } } }')
    ui_run = next(r["runId"] for r in ui_runs["runsOrError"]["results"] if any(t["key"] == "dagster/backfill" for t in r["tags"]))
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "vector-assets"), "backfill", "--all", "--tenant", "HADOOP", "--start", "2024-07-01", "--end", "2024-07-03"],
        env=ui.env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    assert "this command dequeues" not in cli.stdout  # the UI's daemon dequeued the run
    runs = ui.gql('{ runsOrError(filter: {tags: [{key: "vector_assets/launched_by", value: "cli-backfill"}]}) { ... on Runs { results { runId } } } }')
    (cli_run,) = [r["runId"] for r in runs["runsOrError"]["results"]]
    ui_facts, cli_facts = _run_facts(ui, ui_run), _run_facts(ui, cli_run)
    for facts in (ui_facts, cli_facts):
        assert facts["status"] == "SUCCESS" and facts["location"] == "vector_assets"
        # Queued, then handed to the launcher (starting), then started by its run worker.
        order = ["RunEnqueuedEvent", "RunStartingEvent", "RunStartEvent"]
        assert [e for e in facts["events"] if e in order] == order, facts["events"]
    assert cli_facts["tags"]["dagster/asset_partition_range_start"] == "2024-07-01|HADOOP"
    # The run covers the window's days with records (a run's range ends at its last such day).
    last = max(r["day"] for r in sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-03"))
    assert cli_facts["tags"]["dagster/asset_partition_range_end"] == f"{last}|HADOOP"
    assert {k for k in ui_facts["tags"] if k.startswith("dagster/asset_partition_range")} == {k for k in cli_facts["tags"] if k.startswith("dagster/asset_partition_range")}


def test_a_ui_backfill_over_tenants_on_the_same_days_is_one_run(ui):
    """Issue #20: a UI backfill's runs are rectangles of tenants x days
    (vector_assets.instance.planning, in the daemon's process): both tenants over the same four
    days are one run over their rectangle, not one run per tenant, and every targeted tenant-day
    is materialised (SeaMonkey's are empty days, HADOOP's were materialised before and are
    re-read)."""
    names = [f"{day}|{tenant}" for tenant in ("HADOOP", "SeaMonkey") for day in days_between("2024-07-01", "2024-07-04")]
    backfill = ui.backfill(names)
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    (run,) = backfill["runs"]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    corners = (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"])
    assert corners in (("2024-07-01|HADOOP", "2024-07-04|SeaMonkey"), ("2024-07-01|SeaMonkey", "2024-07-04|HADOOP")), corners
    assert run["status"] == "SUCCESS"
    for counts in backfill["assetBackfillData"]["assetBackfillStatuses"]:
        assert counts["numPartitionsTargeted"] == counts["numPartitionsMaterialized"] == len(names), counts
