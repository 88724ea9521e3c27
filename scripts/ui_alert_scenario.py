"""The alert sensor in the Dagster UI, end to end, for the screenshots of issue #18: ticks that say
what the sensor does and waits for, ending in an exhausted alert (a failed, red tick).

A tenant-day whose embeddings come back as zero vectors (an OpenAI-compatible endpoint, served
here on loopback, answering every text with 384 zeros: a faulty embedding service) fails the
blocking ``vector_quality`` check. That failure may be transient, so the alert sensor re-runs it:
attempt 1 at once, attempt 2 no sooner than ``VECTOR_ASSETS_RETRY_BASE_DELAY_S`` (90 s) later;
the endpoint still answers zeros, so after attempt 2 the sensor alerts. The webserver and the
daemon run on a fresh instance (``tests/test_ui.py``'s ``running_ui``); the sensor is switched on
through GraphQL, as in the UI. The UI stays up ``--hold`` seconds at the end for screenshots.

Usage: python scripts/ui_alert_scenario.py [--port 3112] [--hold 300]
"""

import argparse
import http.server
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class ZeroEmbeddings(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        out = {"object": "list", "model": body.get("model", "zero"), "usage": {"prompt_tokens": 0, "total_tokens": 0},
               "data": [{"object": "embedding", "index": i, "embedding": [0.0] * 384} for i in range(len(texts))]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def main() -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3112)
    parser.add_argument("--hold", type=float, default=300)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ZeroEmbeddings)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ.update({
        "VECTOR_ASSETS_EMBEDDING_PROVIDER": "openai", "VECTOR_ASSETS_OPENAI_BASE_URL": f"http://127.0.0.1:{server.server_port}/v1",
        "VECTOR_ASSETS_OPENAI_MODEL": "zero-vectors", "VECTOR_ASSETS_OPENAI_API_KEY": "local", "VECTOR_ASSETS_TEST_UI_PORT": str(args.port),
        "VECTOR_ASSETS_RETRY_MAX_ATTEMPTS": "2", "VECTOR_ASSETS_RETRY_BASE_DELAY_S": "90",
    })
    from tests.conftest import sample_records, write_jsonl
    from tests.test_ui import running_ui

    def landing(folder: Path) -> None:
        write_jsonl(folder / "jira.jsonl", sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-09-05", "2024-09-05"))

    with tempfile.TemporaryDirectory() as root, running_ui(Path(root), landing) as ui:
        print(f"UI at {ui.url}", flush=True)
        assert ui.wait_run(ui.launch_job("landing_index_job")) == "SUCCESS"
        print("backfill:", ui.backfill(["2024-09-05|HADOOP"])["status"], flush=True)
        selector = {"repositoryLocationName": "vector_assets", "repositoryName": "__repository__", "sensorName": "check_alert_sensor"}
        ui.gql("mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename } }", {"s": selector})
        query = """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState { ticks(limit: 10) {
            status timestamp skipReason runIds error { message } } } } } }"""
        deadline = time.time() + 900
        while time.time() < deadline:
            ticks = ui.gql(query, {"s": selector})["sensorOrError"]["sensorState"]["ticks"]
            for t in ticks[:1]:
                print(time.strftime("%H:%M:%S"), t["status"], t["skipReason"] or "", t["runIds"], (t["error"] or {}).get("message", "")[:200], flush=True)
            if any(t["status"] == "FAILURE" for t in ticks):
                break
            time.sleep(20)
        print(f"holding the UI {args.hold:.0f}s at {ui.url}/automation", flush=True)
        time.sleep(args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
