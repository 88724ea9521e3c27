"""The Dagster UI path (#10): dagster-webserver and dagster-daemon on a temporary instance, a
backfill launched through the webserver's GraphQL API as the UI launches it, and what the UI
renders read back through GraphQL: the backfill completed, every tenant-day of the range
materialised (days without records too), none unsynced, every check with a latest outcome.
"""

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

import pytest

from .conftest import REPO, SERVER_URI, days_between, sample_records, write_jsonl

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

    def launch_job(self, job: str) -> str:
        out = self.gql(
            "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }",
            {"p": {"selector": {"repositoryLocationName": "vector_assets", "repositoryName": "__repository__", "jobName": job}, "mode": "default"}},
        )["launchRun"]
        assert out["__typename"] == "LaunchRunSuccess", out
        return out["run"]["runId"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    landing, home, dagster_home = root / "landing", root / "home", root / "dagster_home"
    for d in (landing, home, dagster_home):
        d.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    write_jsonl(landing / "jira.jsonl", sample_records("jira_issues_hadoop.jsonl", *RANGES[0]))
    write_jsonl(landing / "bugs.jsonl", sample_records("bugzilla_seamonkey.jsonl", *RANGES[1]))
    env = {
        **os.environ, "DAGSTER_HOME": str(dagster_home), "VECTOR_ASSETS_LANDING_DIR": str(landing), "VECTOR_ASSETS_HOME": str(home),
        "VECTOR_ASSETS_MILVUS_URI": str(home / "milvus.db"), "HF_HUB_OFFLINE": "1",
    }
    bin_dir = Path(sys.executable).parent
    # Create the instance's storage once, before two processes race to create it (webserver and
    # daemon initialising a fresh SQLite instance at once can leave two alembic heads).
    subprocess.run([sys.executable, "-c", "from vector_assets.settings import dagster_instance; dagster_instance()"], env=env, check=True, cwd=REPO)
    port = _free_port()
    procs = [
        subprocess.Popen([str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"], cwd=REPO, env=env, stdout=open(root / "webserver.log", "w"), stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=REPO, env=env, stdout=open(root / "daemon.log", "w"), stderr=subprocess.STDOUT, start_new_session=True),
    ]
    ui = UI(f"http://127.0.0.1:{port}", env, procs, root)
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
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run([sys.executable, "-m", "vector_assets.cli", "server", "stop"], env=env, capture_output=True)


def test_a_ui_backfill_is_green_materialises_every_tenant_day_and_shows_its_checks(ui):
    # The code location is named for the project.
    assert [e["name"] for e in ui.gql("{ workspaceOrError { ... on Workspace { locationEntries { name } } } }")["workspaceOrError"]["locationEntries"]] == ["vector_assets"]
    # A new user first materialises the landing index (it registers the tenants).
    assert ui.wait_run(ui.launch_job("landing_index_job")) == "SUCCESS"
    names = [f"{day}|{tenant}" for tenant, first, last in RANGES for day in days_between(first, last)]
    launched = ui.gql(
        "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }",
        {"p": {"assetSelection": [{"path": [a]} for a in ASSETS], "partitionNames": names, "fromFailure": False}},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    query = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {
        status runs(limit: 20) { runId status startTime endTime tags { key value } }
        assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
            assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed } } } } } }"""
    deadline = time.time() + 600
    while True:
        backfill = ui.gql(query, {"id": launched["backfillId"]})["partitionBackfillOrError"]
        if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
            break
        assert time.time() < deadline, f"backfill still {backfill['status']}; logs in {ui.logs}"
        time.sleep(3)

    # 1. Green: completed, every targeted tenant-day materialised, none failed; one run per tenant.
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

    # 3. Every check has a latest outcome where the asset's Checks list reads it, and it passed.
    for asset in ASSETS:
        checks = ui.gql(
            """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode { assetChecksOrError { ... on AssetChecks {
                checks { name executionForLatestMaterialization { status evaluation { success metadataEntries { label } } } } } } } } }""",
            {"key": {"path": [asset]}},
        )["assetNodeOrError"]["assetChecksOrError"]["checks"]
        assert checks, asset if asset != "extracted_text" else "text_frame_valid"
        for check in checks:
            execution = check["executionForLatestMaterialization"]
            assert execution is not None and execution["status"] == "SUCCEEDED", (asset, check)
            assert {"tenant_days_evaluated", "failing_tenant_days"} <= {e["label"] for e in execution["evaluation"]["metadataEntries"]}

    # 4. landing_index shows the refresh's counts.
    index = ui.gql("""{ assetOrError(assetKey: {path: ["landing_index"]}) { ... on Asset { assetMaterializations(limit: 1) { metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }""")
    entries = {e["label"]: e.get("intValue") for e in index["assetOrError"]["assetMaterializations"][0]["metadataEntries"]}
    assert entries["tenants"] == 2 and entries["unattributed_lines"] == 0
