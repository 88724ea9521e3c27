"""The Dagster UI on Milvus Lite with the OpenVINO encode: webserver + daemon (tests/test_ui.running_ui),
landing_index by GraphQL, a backfill of HADOOP 2024-07-01..07-31; the checks; screenshots."""
import json, os, subprocess, sys, time, urllib.parse
from pathlib import Path
sys.path.insert(0, "/work/main")
from tests.test_ui import running_ui
from tests.conftest import sample_records, write_jsonl, days_between

RANGES = [("HADOOP", "2024-07-01", "2024-07-31")]
def landing(path):
    write_jsonl(path / "jira.jsonl", sample_records("jira_issues_hadoop.jsonl", *RANGES[0]))

root = Path("/tmp/uiov/root"); subprocess.run(["rm", "-rf", str(root)]); root.mkdir(parents=True)
os.environ["VECTOR_ASSETS_TEST_UI_PORT"] = "3125"
out = "/work/main/results/issue20/ui_openvino"
with running_ui(root, landing) as ui:
    print("landing_index:", ui.wait_run(ui.launch_job("landing_index_job")), flush=True)
    names = [f"{d}|{t}" for t, a, b in RANGES for d in days_between(a, b)]
    t = time.time(); bf = ui.backfill(names, timeout=1200)
    bid = next(t["value"] for r in bf["runs"] for t in r["tags"] if t["key"] == "dagster/backfill")
    print("backfill", bid, bf["status"], len(names), "partitions", f"{time.time()-t:.0f}s", [r["status"] for r in bf["runs"]], flush=True)
    for check in ("vector_quality", "coverage", "retrievability", "drift"):
        st = ui.check("milvus_vectors", check)
        vals = [x for x in st.values() if isinstance(x, str)]
        print("milvus_vectors", check, {v: vals.count(v) for v in set(vals)}, flush=True)
    base = ui.url
    key = urllib.parse.quote("2024-07-08|HADOOP")
    pairs = [["backfill", f"{base}/runs/b/{bid}?tab=partitions"], ["partition", f"{base}/assets/milvus_vectors?view=partitions&partition={key}"],
             ["checks", f"{base}/assets/milvus_vectors?view=checks"]]
    import shutil; shutil.rmtree(out, ignore_errors=True); os.makedirs(out)
    r = subprocess.run(["node", "/tmp/uipg/shot.js", out, json.dumps(pairs)], env={**os.environ, "NODE_PATH": "/root/.cache/ui-shot/node_modules"}, capture_output=True, text=True)
    print(r.stdout[-2000:], r.stderr[-2000:], flush=True)
