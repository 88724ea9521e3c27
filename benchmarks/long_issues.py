"""Known-item search over long issues: does a sentence from deep inside a record find it?

Builds a known-item set from the real long issues of ../shared/data (Jira HADOOP and Bugzilla
SeaMonkey, CC BY; ../shared/data/README.md): for every record whose extracted text (the text
the product indexes, :func:`vector_assets.ingest.extraction.extract_record`) runs past 400 tokens of
the model's tokenizer, the first sentence of 8 to 50 words that starts after token 300 is the
query and the record is its one answer. Token 300 lies past the first passage (248 tokens), so
a single vector of the record's start has never read the query's words.

Then indexes both files through the product twice, `vector-assets backfill` into a Milvus Lite
database of its own each time: with ``VECTOR_ASSETS_MAX_PASSAGES=1`` (one vector per record, its
first window: search as it was before passages) and with the default (up to 16 passages), and
scores recall@10 and MRR@10 of `vector-assets search --queries` in every mode (dense, bm25,
hybrid) for both. Prints the set's size, a table, the costs of each index (rows per record,
the Milvus Lite database's size on disk, backfill wall time) and writes
results/long_issues.json (and the set itself, results/long_issues/queries.jsonl).

Usage: python benchmarks/long_issues.py [--shared ../shared/data] [--workers 2] [--modes M...] [--build-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vector_assets.embed import embedding  # noqa: E402
from vector_assets.ingest.extraction import extract_record  # noqa: E402
from vector_assets.ingest.records import LocatedRecord, RecordError  # noqa: E402
from vector_assets.settings import DEFAULT_MODEL  # noqa: E402

FILES = ("jira_issues_hadoop.jsonl", "bugzilla_seamonkey.jsonl")
#: A record is long when its text has more tokens than this (the issue's definition).
LONG_TOKENS = 400
#: The query sentence starts at or after this token (past the first 248-token passage).
QUERY_AFTER_TOKEN = 300
# The known-item sentence rule is the product's (golden queries, issue #21).
from vector_assets.serving.retrieval import MAX_WORDS, MIN_WORDS, query_sentence  # noqa: E402


def extracted_texts(shared: Path):
    """The extracted texts of the records of :data:`FILES` (bad records skipped), in file order."""
    for name in FILES:
        with open(shared / name, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    yield extract_record(LocatedRecord(name, number, json.loads(line)))
                except (ValueError, RecordError):
                    continue


def build_set(shared: Path) -> tuple[list[dict], dict]:
    """The known-item queries ``[{"id", "tenant", "text", "answer", "tokens"}]`` and counts
    (records read, long, without a usable sentence)."""
    tokenizer = embedding.load_tokenizer(DEFAULT_MODEL)[0]
    queries: list[dict] = []
    counts = {"records": 0, "long": 0, "no_sentence": 0}
    for text in extracted_texts(shared):
        counts["records"] += 1
        offsets = tokenizer(text.text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)["offset_mapping"]
        if len(offsets) <= LONG_TOKENS:
            continue
        counts["long"] += 1
        sentence = query_sentence(text.text, offsets[QUERY_AFTER_TOKEN][0])
        if sentence is None:
            counts["no_sentence"] += 1
            continue
        queries.append({"id": f"q{len(queries)}", "tenant": text.tenant, "text": sentence, "answer": text.record_id, "tokens": len(offsets)})
    return queries, counts


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist: a store that is not Milvus
    Lite, ``VECTOR_ASSETS_STORE_URL``)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def run_index(name: str, max_passages: int | None, shared: Path, work: Path, qfile: Path, queries: list[dict], modes: list[str], workers: int) -> dict:
    """Backfill both files into ``work/name`` and score every mode; returns the figures."""
    base = work / name
    env = {
        **os.environ,
        "VECTOR_ASSETS_LANDING_DIR": str(base / "landing"),
        "VECTOR_ASSETS_HOME": str(base / "home"),
        "VECTOR_ASSETS_MILVUS_URI": str(base / "home" / "milvus.db"),
        "DAGSTER_HOME": str(base / "dagster_home"),
    }
    if max_passages is not None:
        env["VECTOR_ASSETS_MAX_PASSAGES"] = str(max_passages)
    exe = [sys.executable, "-m", "vector_assets.cli"]
    if base.exists():
        subprocess.run([*exe, "server", "stop"], env=env, capture_output=True)
        shutil.rmtree(base)
    (base / "landing").mkdir(parents=True)
    for file in FILES:
        (base / "landing" / file).symlink_to(shared / file)
    started = time.perf_counter()
    backfill = subprocess.run([*exe, "backfill", "--workers", str(workers)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary = re.search(r"^backfill: .*$", backfill.stdout, re.M)
    line = summary.group(0) if summary else ""
    print(f"[{name}] {line or backfill.stdout[-2000:] + backfill.stderr[-2000:]}", flush=True)
    if backfill.returncode != 0 and "failed_partitions=0 " not in line:
        raise SystemExit(f"[{name}] backfill failed (exit {backfill.returncode}): {backfill.stderr[-1500:]}")
    figures = dict(re.findall(r"(\w+)=([\d.]+)", line))
    rows = int(figures.get("passages_embedded", figures.get("embedded", 0)))
    records = int(figures.get("embedded", 0))
    out = {"backfill_wall_s": round(wall, 1), "backfill_summary": line, "records": records, "rows": rows,
           "rows_per_record": round(rows / records, 3) if records else None,
           "milvus_db_bytes": du(base / "home" / "milvus.db")}
    answers = {q["id"]: q["answer"] for q in queries}
    for mode in modes:
        hits_file = base / f"hits_{mode}.jsonl"
        started = time.perf_counter()
        search = subprocess.run([*exe, "search", "--queries", str(qfile), "-k", "10", "--mode", mode, "--output", str(hits_file)], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if search.returncode != 0:
            print(search.stderr[-2000:])
            raise SystemExit(f"[{name}] search --mode {mode} failed")
        found = reciprocal = 0.0
        for item in map(json.loads, open(hits_file, encoding="utf-8")):
            ranked = [h["id"] for h in item["hits"]][:10]
            if answers[item["id"]] in ranked:
                found += 1
                reciprocal += 1 / (ranked.index(answers[item["id"]]) + 1)
        out[mode] = {"recall@10": round(found / len(queries), 4), "mrr@10": round(reciprocal / len(queries), 4), "search_wall_s": round(seconds, 1)}
    subprocess.run([*exe, "server", "stop"], env=env, capture_output=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(REPO / "results" / "long_issues"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["dense", "bm25", "hybrid"], choices=["dense", "bm25", "hybrid"])
    parser.add_argument("--build-only", action="store_true", help="write the known-item set and stop")
    parser.add_argument("--indexes", nargs="+", default=["single_vector", "passages"], choices=["single_vector", "passages"], help="indexes to (re)build; the others' figures are read from results/long_issues.json")
    args = parser.parse_args()
    shared, work = Path(args.shared).resolve(), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    queries, counts = build_set(shared)
    qfile = work / "queries.jsonl"
    with open(qfile, "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps(q) + "\n")
    print(f"known-item set: {counts['records']} records read, {counts['long']} longer than {LONG_TOKENS} tokens, "
          f"{counts['no_sentence']} without a sentence of {MIN_WORDS}-{MAX_WORDS} words after token {QUERY_AFTER_TOKEN}: "
          f"{len(queries)} queries ({sum(q['answer'].startswith('jira:') for q in queries)} Jira) -> {qfile}", flush=True)
    if args.build_only:
        return 0
    saved = REPO / "results" / "long_issues.json"
    results = json.loads(saved.read_text()) if saved.exists() and len(args.indexes) < 2 else {}
    results["set"] = {**counts, "queries": len(queries)}
    for name, max_passages in (("single_vector", 1), ("passages", None)):
        if name in args.indexes:
            results[name] = run_index(name, max_passages, shared, work, qfile, queries, args.modes, args.workers)
            saved.write_text(json.dumps(results, indent=2))
    print(f"\n{'index':<14} {'mode':<7} {'recall@10':>9} {'MRR@10':>7}")
    built = [name for name in ("single_vector", "passages") if name in results]
    for name in built:
        for mode in args.modes:
            r = results[name][mode]
            print(f"{name:<14} {mode:<7} {r['recall@10']:>9.3f} {r['mrr@10']:>7.3f}")
    print(f"\n{'index':<14} {'records':>8} {'rows':>7} {'rows/record':>11} {'db MiB':>7} {'backfill s':>10}")
    for name in built:
        r = results[name]
        print(f"{name:<14} {r['records']:>8} {r['rows']:>7} {r['rows_per_record']:>11} {r['milvus_db_bytes'] / 2**20:>7.1f} {r['backfill_wall_s']:>10.1f}")
    saved.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
