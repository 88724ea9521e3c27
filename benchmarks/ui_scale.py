"""Scale of the Dagster UI and of the automation ticks with many tenants (issue #10 item 8).

Registers ``--tenants`` synthetic tenants (``tenant-000`` ...) beside the bundled sample's
(so the assets span ``tenants x days`` partitions of the default window), backfills one slice
(HADOOP, 2024-07-01..12) so the pages have data, starts ``dagster-webserver`` on loopback and
measures in headless Chromium (``benchmarks/ui_timing.js``) how long the asset page, its
Partitions tab, the Checks view and the backfill dialog take until their data shows. Then it
times one evaluation of ``new_data_sensor``, ``check_alert_sensor`` and ``daily_schedule``
against the same instance (the body of a daemon tick; Dagster's limit for a tick is 60 s).

Prints one JSON object and writes it to results/ui_scale.json; screenshots in results/ui_scale/.

Usage: python benchmarks/ui_scale.py [--tenants 100]
Needs /usr/bin/chromium and playwright-core (``../shared/tools/ui-shot`` installs both into
~/.cache/ui-shot).
"""

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODE_MODULES = Path(os.environ.get("HOME", "/root")) / ".cache" / "ui-shot" / "node_modules"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="va-ui-scale-"))
    env = {
        **os.environ, "DAGSTER_HOME": str(work / "dagster_home"), "VECTOR_ASSETS_HOME": str(work / "home"),
        "VECTOR_ASSETS_MILVUS_URI": str(work / "home" / "milvus.db"), "HF_HUB_OFFLINE": "1",
    }
    env.pop("VECTOR_ASSETS_LANDING_DIR", None)  # the bundled sample
    (work / "dagster_home").mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", work / "dagster_home" / "dagster.yaml")
    cli = [sys.executable, "-m", "vector_assets.cli"]
    subprocess.run([*cli, "backfill", "--tenant", "HADOOP", "--start", "2024-07-01", "--end", "2024-07-12"], env=env, check=True, capture_output=True)
    os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "VECTOR_ASSETS_HOME", "VECTOR_ASSETS_MILVUS_URI")})
    os.environ.pop("VECTOR_ASSETS_LANDING_DIR", None)
    import dagster as dg

    from vector_assets.definitions import defs
    from vector_assets.partitions import TENANTS, day_partitions
    from vector_assets.sensors import check_alert_sensor, daily_schedule, new_data_sensor

    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(TENANTS, [f"tenant-{i:03d}" for i in range(args.tenants)])
    tenants = len(instance.get_dynamic_partitions(TENANTS))
    partitions = tenants * len(day_partitions.get_partition_keys())
    out = {"tenants": tenants, "partitions_per_asset": partitions, "machine": f"{os.cpu_count()} CPU cores"}

    port = _free_port()
    web = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"], cwd=REPO, env=env, stdout=open(work / "webserver.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            try:
                body = json.dumps({"query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"}).encode()
                data = json.loads(urllib.request.urlopen(urllib.request.Request(f"{base}/graphql", data=body, headers={"Content-Type": "application/json"}), timeout=30).read())
                if all(e["loadStatus"] == "LOADED" for e in data["data"]["workspaceOrError"]["locationEntries"]):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit((work / "webserver.log").read_text()[-3000:])
            time.sleep(2)
        shots = REPO / "results" / "ui_scale"
        shots.mkdir(parents=True, exist_ok=True)
        timing = subprocess.run(["node", str(REPO / "benchmarks" / "ui_timing.js"), base, str(shots)], env={**env, "NODE_PATH": str(NODE_MODULES)}, capture_output=True, text=True, timeout=900)
        out["pages_ms"] = json.loads(timing.stdout.strip().splitlines()[-1]) if timing.returncode == 0 else {"error": timing.stderr[-1500:]}
    finally:
        os.killpg(web.pid, 15)
        web.wait(timeout=60)

    resources = defs.resources
    ticks = {}
    started = time.perf_counter()
    new_data_sensor(dg.build_sensor_context(instance=instance, resources={"landing": resources["landing"]}))
    ticks["new_data_sensor_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    check_alert_sensor(dg.build_sensor_context(instance=instance, resources={"alerts": resources["alerts"]}))
    ticks["check_alert_sensor_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=dt.datetime.now(dt.timezone.utc), resources={k: resources[k] for k in ("landing", "milvus", "embedding_model")}) as context:
        requests = daily_schedule(context)
    ticks["daily_schedule_s"] = round(time.perf_counter() - started, 2)
    ticks["daily_schedule_runs"] = len(requests) if isinstance(requests, list) else 0
    out["ticks"] = ticks
    subprocess.run([*cli, "server", "stop"], env=env, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "ui_scale.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
