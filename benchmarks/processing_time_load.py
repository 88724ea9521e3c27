"""Does ``processing_time`` grade the work or the machine? (issue #10 item 5)

Encodes the same real texts (``--texts`` pallets/flask commits of ../shared/data) with the
pipeline's encode (``vector_assets.embed.embedding.encode_with_raw``, what the tenant-day step calls)
on an idle machine and then while ``--hogs`` busy-loop processes compete for the cores, and
prints per condition the two figures per vector: wall milliseconds (what the check graded
before) and process CPU milliseconds (what it grades now), with the grade each would get
(pass < 100 ms, ERROR > 250 ms, WARN between).

Usage: python benchmarks/processing_time_load.py [--texts 400] [--hogs 4]
"""

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _hog(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _grade(ms: float) -> str:
    return "pass" if ms < 100 else "ERROR" if ms > 250 else "WARN"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--hogs", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks.pipeline import load_texts
    from vector_assets.embed import embedding

    texts = [t.text for t in load_texts(["git_commits.jsonl"]) if t.tenant == "pallets/flask"][: args.texts]
    model = embedding.load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    embedding.encode_with_raw(model, texts[:32], 64)  # warm-up
    out = {"texts": len(texts), "cores": os.cpu_count(), "hogs": args.hogs}
    for label in ("idle", "loaded"):
        stop = multiprocessing.Event()
        hogs = [multiprocessing.Process(target=_hog, args=(stop,)) for _ in range(args.hogs if label == "loaded" else 0)]
        for h in hogs:
            h.start()
        time.sleep(1 if hogs else 0)
        stats = embedding.EncodeStats()
        embedding.encode_with_raw(model, texts, 64, stats)
        stop.set()
        for h in hogs:
            h.join()
        wall_ms, cpu_ms = 1000 * stats.seconds / len(texts), 1000 * stats.cpu_seconds / len(texts)
        out[label] = {"wall_ms_per_vector": round(wall_ms, 1), "wall_grade": _grade(wall_ms), "cpu_ms_per_vector": round(cpu_ms, 1), "cpu_grade": _grade(cpu_ms)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
