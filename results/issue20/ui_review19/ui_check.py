"""UI check: webserver + daemon on a fresh home, the sample's 7 tenants x June 2025 backfilled as the
UI's dialog launches it, twice (the second reads only the marked tenant-days), screenshots while it runs."""
import json, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, "/work/main")
from tests import test_ui
OUT = Path("/work/main/results/issue20/ui_review19")
def landing(folder):
    for p in sorted(Path("/work/main/data/sample").glob("*.jsonl")):
        (folder / p.name).symlink_to(p)
days = [f"2025-06-{d:02d}" for d in range(1, 31)]
with tempfile.TemporaryDirectory(prefix="va-ui-") as root, test_ui.running_ui(Path(root), landing) as ui:
    assert ui.wait_run(ui.launch_job("landing_index_job")) == "SUCCESS"
    keys = ui.gql('{ assetNodeOrError(assetKey: {path: ["milvus_vectors"]}) { ... on AssetNode { partitionKeysByDimension { name partitionKeys } } } }')
    tenants = {d["name"]: d["partitionKeys"] for d in keys["assetNodeOrError"]["partitionKeysByDimension"]}["tenant"]
    names = [f"{day}|{t}" for t in tenants for day in days]
    summary = {}
    for label in ("first", "second"):
        b = ui.backfill(names, timeout=1200)
        summary[label] = {"status": b["status"], "runs": [(r["status"], round(r["endTime"] - r["startTime"], 1)) for r in b["runs"]],
                          "counts": [(c["assetKey"]["path"][0], c["numPartitionsTargeted"], c["numPartitionsMaterialized"], c["numPartitionsFailed"]) for c in b["assetBackfillData"]["assetBackfillStatuses"]]}
        print(label, json.dumps(summary[label]), flush=True)
    for check in ("coverage", "retrievability", "failure_rate", "drift", "coherence"):
        st = ui.check("milvus_vectors" if check != "failure_rate" else "source_records", check)
        counts = {}
        for s in st.values(): counts[s] = counts.get(s, 0) + 1
        print(check, counts, flush=True)
    print("evaluation", json.dumps(ui.evaluation("milvus_vectors", "coverage", "2025-06-16|psf/requests")), flush=True)
    runs = ui.gql("{ runsOrError(limit: 5) { ... on Runs { results { runId status } } } }")["runsOrError"]["results"]
    backfills = ui.gql("{ partitionBackfillsOrError(limit: 2) { ... on PartitionBackfills { results { id status } } } }")["partitionBackfillsOrError"]["results"]
    urls = [f"{ui.url}/runs/b/{backfills[0]['id']}?tab=partitions", f"{ui.url}/assets/milvus_vectors?view=partitions", f"{ui.url}/assets/milvus_vectors?view=checks", f"{ui.url}/runs/{runs[0]['runId']}"]
    (OUT / "urls.txt").write_text("\n".join(urls) + "\n")
    r = subprocess.run(["node", "/work/main/results/issue20/ui_session19/shot.js", str(OUT), *urls], capture_output=True, text=True, env={**__import__("os").environ, "NODE_PATH": "/root/.cache/ui-shot/node_modules"}); print(r.stdout[-800:], r.stderr[-800:])
