"""Pipeline benchmarks (issue #4): prints a table and writes results/benchmarks.json.

Each figure compares, inside one run on this machine, the pipeline with the library it wraps:

* ``encode``: texts/s of records -> Milvus rows through the Dagster assets (fresh Milvus Lite,
  one materialisation of the tenant-days that hold the texts) against
  ``SentenceTransformer.encode`` on the same texts with the same batch size.
* ``backfill``: ``vector-assets backfill`` over a landing directory (default: the four files of
  ../shared/data, 27,144 records), its wall time against the raw encode time of the same
  texts; runs and per-run overhead; then the same backfill again, unchanged: the ratio and the
  number of texts re-embedded.
* ``recording``: what Dagster costs per tenant-day apart from the work: two runs of one tenant
  whose records fall on one day, over 10 and over 1,000 days; the difference in wall time and
  events per added day (issue #10).
* ``demo``: ``make demo``'s backfill from fresh state against a fresh process that loads the
  model and encodes the same texts.
* ``milvus``: insert rows/s, single-query search latency p50/p95 at N vectors in one tenant
  (real embeddings of the shared records; beyond their count, copies with small Gaussian noise,
  re-normalised) and recall@10 of the HNSW index against exact (brute-force) search; the
  latency of Milvus alone (``engine``) and of ``vector_assets.serving.search`` (``product``: the query
  embedded, the tenant checked, the search). ``--uri URI`` runs it against a Milvus server:
  ``scripts/with_milvus_server.sh .venv/bin/python sh -c '.venv/bin/python benchmarks/pipeline.py
  milvus --uri $VECTOR_ASSETS_TEST_MILVUS_URI'`` (kept under ``milvus_server``).
* ``memory``: peak RSS (ru_maxrss) of the processes of the above.
* ``gpu``: only with ``--gpu`` on a machine with CUDA: texts/s fp16 on the GPU vs fp32 on CPU.

``--storage postgres`` runs ``encode`` and ``backfill`` with Dagster's storage in a fresh
database of the local Postgres cluster (``scripts/local_postgres.sh``, as root; the instance
configured from ``dagster.postgres.yaml`` and holding a pooled connection, as the CLI does);
their results are kept under ``encode_postgres`` / ``backfill_postgres``. Default: SQLite.
``--storage postgres-unpooled`` (encode only) switches the pooling off: dagster-postgres'
default of a new connection for each event.

Usage: python benchmarks/pipeline.py [encode] [backfill] [recording] [demo] [milvus] [gpu] [--limit N] [--storage S] [--uri URI]
"""

import argparse
import datetime as dt
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FILES = ["git_commits.jsonl", "github_issues.jsonl", "jira_issues_hadoop.jsonl", "bugzilla_seamonkey.jsonl"]
sys.path.insert(0, str(REPO))


def postgres_env(database: str) -> dict:
    """``DAGSTER_PG_*`` of a fresh (dropped and created) database of the local cluster, from
    ``scripts/local_postgres.sh``. Raises CalledProcessError when the script fails."""
    out = subprocess.run([str(REPO / "scripts" / "local_postgres.sh"), "--fresh", database], capture_output=True, text=True, check=True)
    return dict(pair.split("=", 1) for pair in out.stdout.split()[1:])


@contextlib.contextmanager
def bench_instance(storage: str):
    """A throw-away Dagster instance: SQLite (``instance_for_test``) or, for ``postgres``, the
    storage section of ``dagster.postgres.yaml`` on a fresh database, pooled like the CLI's; with
    the product's ``python_logs`` section (runs' console log at INFO, as ``dagster.yaml`` and
    ``dagster.postgres.yaml`` set it: Dagster's default, DEBUG, formats and prints a line per
    event, which the product's runs do not pay)."""
    import dagster as dg
    import yaml

    from vector_assets import settings

    if storage == "sqlite":
        from vector_assets.instance.storage import storage_config

        # The storage dagster.yaml configures: Dagster's SQLite storage with batched asset events.
        python_logs = yaml.safe_load((REPO / "dagster.yaml").read_text())["python_logs"]
        with tempfile.TemporaryDirectory() as base, dg.instance_for_test(overrides={"storage": storage_config(base), "python_logs": python_logs}) as instance:
            yield instance
        return
    os.environ.update(postgres_env("va_bench_encode"))
    from vector_assets import state

    state.dispose_engines()  # the database was dropped and made anew: no engine of the old one
    product = yaml.safe_load((REPO / "dagster.postgres.yaml").read_text())
    overrides = {"storage": product["storage"], "python_logs": product["python_logs"]}
    with contextlib.ExitStack() as stack:
        if storage == "postgres-unpooled":
            # dagster-postgres' default, a connection per event: the pooling switched off
            # (here and in the tenant-day step) for the life of this instance only.
            stack.enter_context(mock.patch.object(settings, "pool_storage_connections", lambda instance: None))
        instance = stack.enter_context(dg.instance_for_test(overrides=overrides))
        settings.pool_storage_connections(instance)  # as the CLI's processes do
        yield instance


def peak_rss_mib(children: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024


def load_texts(files, limit=None):
    from vector_assets.ingest.extraction import extract_records
    from vector_assets.ingest.records import LocatedRecord

    located = []
    for name in files:
        with open(SHARED / name, encoding="utf-8") as fh:
            located += [LocatedRecord(name, i, json.loads(line)) for i, line in enumerate(fh, 1)]
    texts, bad = extract_records(located)
    texts.sort(key=lambda t: (t.tenant, t.day))
    return texts[:limit] if limit else texts


def raw_encode(texts: list[str], batch_size: int = 64, encoder: str = "chosen") -> float:
    """Seconds of ``SentenceTransformer.encode`` on ``texts`` (batches of ``batch_size``, after
    a warm-up batch): with the backend and precision the product picks on this machine
    (``encoder="chosen"``: :class:`EmbeddingModelResource`'s defaults, OpenVINO bf16 here), or
    ``"torch-fp32"``."""
    from vector_assets.embed.embedding import load_model
    from vector_assets.resources import EmbeddingModelResource

    if encoder == "torch-fp32":
        model = load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    else:
        chosen = EmbeddingModelResource(device="cpu")
        model = load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu", chosen.resolved_precision, chosen.resolved_backend)
    model.encode(texts[:64], batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return time.perf_counter() - started


def bench_encode(limit: int, storage: str = "sqlite") -> dict:
    """Pipeline texts/s through Dagster vs raw encode on the same texts, on two selections of
    real commits: ``consecutive`` (pallets/flask's first ``limit`` commits, the usual 1-3
    records a tenant-day) and ``busiest`` (psf/requests' busiest tenant-days, ``limit`` texts
    in all), with where the pipeline's time goes: encode, and Dagster events per tenant-day."""
    from collections import Counter

    flask = [t for t in load_texts(["git_commits.jsonl"]) if t.tenant == "pallets/flask"][:limit]
    requests = [t for t in load_texts(["git_commits.jsonl"]) if t.tenant == "psf/requests"]
    busiest, count = set(), 0
    for day, n in Counter(t.day for t in requests).most_common():
        if count >= limit:
            break
        busiest.add(day)
        count += n
    return {
        "storage": storage,
        "consecutive": _encode_through_dagster("pallets/flask", flask, storage),
        "busiest": _encode_through_dagster("psf/requests", [t for t in requests if t.day in busiest], storage),
        "consecutive_profile": _encode_through_dagster("pallets/flask", flask, storage, profile=True)["profile"],
        "recording": bench_recording(storage),
    }


#: Where a profiled run's time goes: (label, substring of "file:function" in cProfile's stats).
PROFILE_PARTS = [
    ("dagster event storage (store_event)", "event_log.py:store_event"),
    ("psycopg2 executing statements (all callers)", "extensions.cursor' objects>"),
    ("sqlite3 executing statements (all callers)", "'sqlite3.Cursor' objects>"),
    ("dagster event serialisation (serdes, all callers)", "serdes.py:serialize_value"),
    ("the encode (encode_with_raw: sentence-transformers' modules fed token ids)", "embed/embedding.py:encode_with_raw"),
    ("pymilvus calls (gRPC to milvus-lite)", "milvus_client.py:"),
    ("Great Expectations validation", "evaluate.py:text_frame_verdicts"),
]


def _profile_shares(profiler, wall_s: float) -> dict:
    """Cumulative seconds of each :data:`PROFILE_PARTS` entry (outermost calls only) as a share
    of the profiled wall time."""
    import pstats

    stats = pstats.Stats(profiler).stats
    out = {"profiled_wall_s": round(wall_s, 1)}
    for label, pattern in PROFILE_PARTS:
        matching = {k for k in stats if pattern in f"{k[0]}:{k[2]}"}
        # Leave out calls made from another matching function (recursion, wrappers).
        seconds = sum(
            ct_caller
            for k in matching
            for caller, (_, _, _, ct_caller) in stats[k][4].items()
            if caller not in matching
        )
        out[label] = round(seconds / wall_s, 3)
    return out


def _commit_workspace(tenant: str, days: set[str]) -> tuple[Path, dict, dict]:
    """A temporary landing directory with ``tenant``'s commits of ``days`` (from
    ../shared/data/git_commits.jsonl), and the resources of a fresh Milvus Lite database beside
    it, with the model loaded. Returns ``(work dir, resources, one-time seconds)``.

    What a process or a store pays once is paid here, outside the pipeline's timer, as the model
    load is outside raw encode's: the store's server is started (Milvus Lite's, as `vector-assets
    backfill` starts it before any run) and Great Expectations imported with the text suite
    built; the third value says how long those took."""
    from vector_assets.embed.quality import QualityThresholds
    from vector_assets.resources import EmbeddingModelResource, LandingResource, MilvusResource

    work = Path(tempfile.mkdtemp(prefix="va-bench-"))
    (work / "landing").mkdir()
    with open(SHARED / "git_commits.jsonl", encoding="utf-8") as src, open(work / "landing" / "git.jsonl", "w") as dst:
        for line in src:
            r = json.loads(line)
            if r["tenant"] == tenant and r["author_date_utc"][:10] in days:
                dst.write(line)
    from vector_assets.checks.evaluate import gx_suite

    model = EmbeddingModelResource()
    model.get_model()
    resources = {
        "landing": LandingResource(landing_dir=str(work / "landing"), state_dir=str(work / "home")),
        "embedding_model": model,
        "milvus": MilvusResource(uri=str(work / "home" / "milvus.db")),
        "quality": QualityThresholds(),
    }
    started = time.perf_counter()
    resources["milvus"].get_client()
    server_s = time.perf_counter() - started
    gx_suite(resources["quality"])
    return work, resources, {"store_server_start_s": round(server_s, 2), "great_expectations_import_s": round(time.perf_counter() - started - server_s, 2)}


def _encode_through_dagster(tenant: str, texts: list, storage: str, profile: bool = False) -> dict:
    import dagster as dg

    import vector_assets.definitions  # noqa: F401  (sets the event batching as every code location process does)
    from vector_assets.store import milvus_store
    from vector_assets.assets import landing_index, tenant_day_vectors
    from vector_assets.partitions import MAX_PARTITIONS_PER_RUN, plan_runs

    days = {t.day for t in texts}
    raw_s = raw_encode([t.text for t in texts])
    raw_fp32_s = raw_encode([t.text for t in texts], encoder="torch-fp32")
    work, resources, one_time = _commit_workspace(tenant, days)
    with bench_instance(storage) as instance:
        dg.materialize([landing_index], resources=resources, instance=instance)
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        # The runs `vector-assets backfill` would make (consecutive days of the tenant, gaps of
        # up to MAX_GAP_DAYS empty days inside a run: each day of a run's range costs planned events).
        runs = plan_runs(sorted((tenant, d) for d in days), MAX_PARTITIONS_PER_RUN)
        started = time.perf_counter()
        results = [
            dg.materialize(
                [tenant_day_vectors], resources=resources, instance=instance,
                tags={"dagster/asset_partition_range_start": f"{a}|{tenant}", "dagster/asset_partition_range_end": f"{b}|{tenant}"},
            )
            for _, a, b, _ in runs
        ]
        pipe_s = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
        events = sum(len(instance.all_logs(r.run_id)) for r in results)
        # The step stores its materialisations through the instance, not in the result's events.
        mats = [
            e.dagster_event.event_specific_data.materialization for r in results for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            if e.dagster_event.asset_key.to_user_string() == "milvus_vectors"
        ]
    # Days without records are materialised too, without figures.
    embedded = sum(m.metadata["embedded"].value for m in mats if "embedded" in m.metadata)
    encode_s = sum(m.metadata["encode_seconds_est"].value for m in mats if "encode_seconds_est" in m.metadata)
    milvus_store.stop_local_server(work / "home" / "milvus.db")
    shutil.rmtree(work, ignore_errors=True)
    return {
        "tenant": tenant, "texts": len(texts), "embedded_by_pipeline": int(embedded), "tenant_days": len(mats), "runs": len(runs),
        "raw_encode_s": round(raw_s, 2), "raw_texts_per_s": round(len(texts) / raw_s, 1),
        "encoder": resources["embedding_model"].encoder, "raw_torch_fp32_texts_per_s": round(len(texts) / raw_fp32_s, 1),
        "pipeline_s": round(pipe_s, 2), "pipeline_texts_per_s": round(embedded / pipe_s, 1),
        "ratio": round((embedded / pipe_s) / (len(texts) / raw_s), 3),
        "encode_share_of_pipeline": round(encode_s / pipe_s, 3),
        "dagster_events": events, "events_per_tenant_day": round(events / max(1, len(mats)), 1),
        "one_time_outside_timer": one_time,
        **({"profile": _profile_shares(profiler, pipe_s)} if profiler is not None else {}),
    }


def bench_recording(storage: str = "sqlite", spans: tuple[int, int] = (10, 1000)) -> dict:
    """What recording one tenant-day costs Dagster, apart from the work: one tenant whose
    records all fall on the first day, materialised as one run over ``spans[0]`` days and then
    over ``spans[1]`` days (the same records; the second run re-reads them and finds them
    unchanged). The difference of the two runs' wall time and event count, divided by the
    difference in days, is the recording cost of a tenant-day (its three materialisations and
    their share of the batch writes); a run's fixed cost drops out."""
    import datetime as dt

    import dagster as dg

    import vector_assets.definitions  # noqa: F401  (sets the event batching as every code location process does)
    from vector_assets.store import milvus_store
    from vector_assets.assets import landing_index

    tenant = "pallets/flask"
    flask = [t for t in load_texts(["git_commits.jsonl"]) if t.tenant == tenant]
    first = max({t.day for t in flask}, key=lambda d: sum(t.day == d for t in flask))
    work, resources, _ = _commit_workspace(tenant, {first})
    out = {"storage": storage, "event_batch_size": os.environ.get("DAGSTER_EVENT_BATCH_SIZE", "0"), "day_with_records": first}
    with bench_instance(storage) as instance:
        dg.materialize([landing_index], resources=resources, instance=instance)

        def run(days: int) -> tuple[float, int]:
            return run_days(instance, resources, tenant, first, days)

        run(1)  # writes the records; the runs below find them unchanged
        (small_s, small_events), (large_s, large_events) = run(spans[0]), run(spans[1])
        days = spans[1] - spans[0]
        out.update({
            f"run_{spans[0]}_days_s": round(small_s, 2), f"run_{spans[1]}_days_s": round(large_s, 2),
            f"events_{spans[0]}_days": small_events, f"events_{spans[1]}_days": large_events,
            "events_per_tenant_day": round((large_events - small_events) / days, 2),
            "recording_ms_per_tenant_day": round(1000 * (large_s - small_s) / days, 2),
        })
    milvus_store.stop_local_server(work / "home" / "milvus.db")
    shutil.rmtree(work, ignore_errors=True)
    out["with_records"] = bench_recording_with_records(storage)
    return out


def run_days(instance, resources: dict, tenant: str, first: str, days: int) -> tuple[float, int]:
    """Materialise ``tenant_day_vectors`` as one run over ``tenant``'s ``days`` days from
    ``first``: ``(wall seconds, events the run logged)``. Raises AssertionError when the run fails."""
    import datetime as dt

    import dagster as dg

    from vector_assets.assets import tenant_day_vectors

    last = (dt.date.fromisoformat(first) + dt.timedelta(days=days - 1)).isoformat()
    started = time.perf_counter()
    result = dg.materialize(
        [tenant_day_vectors], resources=resources, instance=instance,
        tags={"dagster/asset_partition_range_start": f"{first}|{tenant}", "dagster/asset_partition_range_end": f"{last}|{tenant}"},
    )
    wall = time.perf_counter() - started
    assert result.success
    return wall, len(instance.all_logs(result.run_id))


@contextlib.contextmanager
def timed_event_storage(instance):
    """Sum the seconds and events the instance's event log storage spends storing events
    (``store_event`` and ``store_event_batch``), by event type: the recording cost itself, apart
    from the work between events. Yields the ``{event type: [events, seconds]}`` it fills."""
    storage = instance.event_log_storage
    spent: dict[str, list] = {}
    single, batch = storage.store_event, storage.store_event_batch

    def add(events, seconds):
        for e in events:
            kind = e.dagster_event_type.value if e.is_dagster_event else "log"
            entry = spent.setdefault(kind, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds / len(events)

    def store_event(event):
        started = time.perf_counter()
        single(event)
        add([event], time.perf_counter() - started)

    def store_event_batch(events):
        started = time.perf_counter()
        batch(events)
        add(events, time.perf_counter() - started)

    with mock.patch.object(storage, "store_event", store_event), mock.patch.object(storage, "store_event_batch", store_event_batch):
        yield spent


def bench_recording_with_records(storage: str = "sqlite", days: int = 200) -> dict:
    """What recording a tenant-day *with records* costs: pallets/flask's first ``days`` days
    with commits, written once, then run again (found unchanged, every check evaluated). The
    second run's events and the seconds its event storage spent storing them
    (:func:`timed_event_storage`), per tenant-day with records: materialisations and check
    evaluations (issue #18: evaluations per tenant-day)."""
    import dagster as dg

    import vector_assets.definitions  # noqa: F401
    from vector_assets.store import milvus_store
    from vector_assets.assets import landing_index, tenant_day_vectors

    tenant = "pallets/flask"
    flask = sorted({t.day for t in load_texts(["git_commits.jsonl"]) if t.tenant == tenant})[:days]
    work, resources, _ = _commit_workspace(tenant, set(flask))
    out = {"storage": storage, "tenant_days_with_records": len(flask), "range": f"{flask[0]}..{flask[-1]}"}
    tags = {"dagster/asset_partition_range_start": f"{flask[0]}|{tenant}", "dagster/asset_partition_range_end": f"{flask[-1]}|{tenant}"}
    with bench_instance(storage) as instance:
        dg.materialize([landing_index], resources=resources, instance=instance)
        assert dg.materialize([tenant_day_vectors], resources=resources, instance=instance, tags=tags).success
        with timed_event_storage(instance) as spent:
            started = time.perf_counter()
            result = dg.materialize([tenant_day_vectors], resources=resources, instance=instance, tags=tags)
            wall = time.perf_counter() - started
        assert result.success
        n = len(flask)
        out.update({
            "run_s": round(wall, 2),
            "range_days": (dt.date.fromisoformat(flask[-1]) - dt.date.fromisoformat(flask[0])).days + 1,
            "events_per_tenant_day_with_records": round(sum(v[0] for v in spent.values()) / n, 2),
            "recording_ms_per_tenant_day_with_records": round(1000 * sum(v[1] for v in spent.values()) / n, 2),
            "by_event_type": {k: {"events": v[0], "ms": round(1000 * v[1], 1)} for k, v in sorted(spent.items())},
        })
    milvus_store.stop_local_server(work / "home" / "milvus.db")
    shutil.rmtree(work, ignore_errors=True)
    return out


_FRESH_ENCODE = """
import json, sys, time
started = time.perf_counter()
from vector_assets.embed.embedding import load_model
from vector_assets.ingest.extraction import extract_records
from vector_assets.ingest.records import LocatedRecord
located = []
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as fh:
        located += [LocatedRecord(path, i, json.loads(line)) for i, line in enumerate(fh, 1)]
from vector_assets.resources import EmbeddingModelResource
texts, _ = extract_records(located)
passages = EmbeddingModelResource().split_passages(texts)[0]  # what the backfill embeds
model = load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
model.encode([t.text for t in passages], batch_size=64, normalize_embeddings=True, show_progress_bar=False)
print(json.dumps({"texts": len(texts), "passages": len(passages), "seconds": time.perf_counter() - started}))
"""


def bench_demo(workers: int = 2) -> dict:
    """``make demo``'s backfill (the bundled sample, ``--workers 2``, fresh state) against a fresh
    Python process that imports the package, loads the model, splits the same records' texts
    into passages and encodes them (what the backfill cannot do with less)."""
    sample = sorted((REPO / "data" / "sample").glob("*.jsonl"))
    fresh = subprocess.run([sys.executable, "-c", _FRESH_ENCODE, *map(str, sample)], capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    baseline = json.loads(fresh.stdout.strip().splitlines()[-1])
    work = Path(tempfile.mkdtemp(prefix="va-bench-demo-"))
    env = {**os.environ, "VECTOR_ASSETS_HOME": str(work / "home"), "VECTOR_ASSETS_MILVUS_URI": str(work / "home" / "milvus.db"), "DAGSTER_HOME": str(work / "dagster_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("VECTOR_ASSETS_LANDING_DIR", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vector_assets.cli", "backfill", "--workers", str(workers)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    subprocess.run([sys.executable, "-m", "vector_assets.cli", "server", "stop"], env=env, capture_output=True)
    line = re.search(r"^backfill: (.*)$", proc.stdout, re.M)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "records": baseline["texts"], "passages": baseline.get("passages"), "fresh_process_encode_s": round(baseline["seconds"], 1),
        "backfill_wall_s": round(wall, 1), "summary": line.group(0) if line else proc.stderr[-800:],
        "backfill_vs_fresh_encode": round(wall / baseline["seconds"], 2),
    }


def bench_backfill(files: list[str], workers: int, storage: str = "sqlite") -> dict:
    """Full backfill through `vector-assets backfill`, then again unchanged; raw encode of the same texts."""
    texts = load_texts(files)
    raw_s = raw_encode([t.text for t in texts])
    work = REPO / "results" / ("bench_backfill" if storage == "sqlite" else f"bench_backfill_{storage}")
    pg = postgres_env("va_bench_backfill") if storage == "postgres" else {}
    env = {**os.environ, **pg, "VECTOR_ASSETS_LANDING_DIR": str(work / "landing"), "VECTOR_ASSETS_HOME": str(work / "home"), "VECTOR_ASSETS_MILVUS_URI": str(work / "home" / "milvus.db"), "DAGSTER_HOME": str(work / "dagster_home")}
    subprocess.run([sys.executable, "-m", "vector_assets.cli", "server", "stop"], env=env, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    (work / "landing").mkdir(parents=True)
    for name in files:
        (work / "landing" / name).symlink_to(SHARED / name)
    out = {"storage": storage, "records": len(texts), "raw_encode_s": round(raw_s, 1)}
    for label in ("first", "unchanged"):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "vector_assets.cli", "backfill", "--workers", str(workers)], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        line = re.search(r"^backfill: (.*)$", proc.stdout, re.M)
        stats = {k: float(v) for k, v in (p.split("=") for p in line.group(1).split())} if line else {}
        out[label] = {"wall_s": round(wall, 1), "summary": line.group(0) if line else proc.stderr[-500:], **{k: stats.get(k) for k in ("runs", "embedded", "skipped", "encode_s")}}
    out["first_vs_raw_encode"] = round(out["first"]["wall_s"] / raw_s, 2)
    out["unchanged_vs_first"] = round(out["unchanged"]["wall_s"] / out["first"]["wall_s"], 3)
    runs = out["first"]["runs"] or 1
    out["per_run_overhead_s"] = round((out["first"]["wall_s"] - raw_s / workers) / runs, 2)
    out["peak_rss_children_mib"] = round(peak_rss_mib(children=True), 1)
    out["largest_partition"] = largest_partition_rss(texts, env)
    return out


def largest_partition_rss(texts, env: dict) -> dict:
    """Peak RSS of one process that materialises the busiest tenant-day alone (``--all``, one
    worker, the model loaded in that process; the milvus-lite server is another process)."""
    from collections import Counter

    (tenant, day), records = Counter((t.tenant, t.day) for t in texts).most_common(1)[0]
    code = (
        "import resource, sys\n"
        "from vector_assets.cli import main\n"
        f"rc = main(['backfill', '--all', '--workers', '1', '--tenant', {tenant!r}, '--start', {day!r}, '--end', {day!r}])\n"
        "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    peak = re.search(r"PEAK_RSS_KIB (\d+)", proc.stdout)
    return {"tenant": tenant, "day": day, "records": records, "exit": proc.returncode, "peak_rss_mib": round(int(peak.group(1)) / 1024, 1) if peak else None}


def synthetic_vectors(n: int) -> tuple[list[str], np.ndarray]:
    """``(texts, vectors)``: the extracted texts of the shared commits and ``n`` unit vectors in
    one vector space with them: the 20,465 real commit vectors (cached in
    results/real_vectors.npy), then noisy copies of them (Gaussian noise, sigma 0.02,
    re-normalised) until there are ``n``."""
    from vector_assets.store import milvus_store
    from vector_assets.embed.embedding import load_model
    from vector_assets.settings import DEFAULT_MODEL

    texts = [t.text for t in load_texts(["git_commits.jsonl"])]
    cache = REPO / "results" / "real_vectors.npy"
    eval_db = REPO / "results" / "eval" / "home" / "milvus.db"
    if cache.exists():
        base = np.load(cache)
    elif eval_db.exists():  # the 20,465 commit vectors written by benchmarks/search_quality.py
        src = milvus_store.connect(str(eval_db))
        src.load_collection(milvus_store.collection_name(DEFAULT_MODEL))
        rows = milvus_store.query_all(src, milvus_store.collection_name(DEFAULT_MODEL), 'pk != ""', ["vector"])
        base = np.asarray([r["vector"] for r in rows], dtype=np.float32)
        np.save(cache, base)
    else:
        model = load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
        base = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False).astype(np.float32)
        cache.parent.mkdir(exist_ok=True)
        np.save(cache, base)
    rng = np.random.default_rng(0)
    reps = [base]
    while sum(len(r) for r in reps) < n:
        noisy = base + rng.normal(0, 0.02, base.shape).astype(np.float32)
        reps.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
    return texts, np.concatenate(reps)[:n]


def bench_milvus(n: int, queries: int = 200, uri: str | None = None) -> dict:
    """Insert rows/s, search p50/p95 at ``n`` vectors in one tenant, HNSW recall@10 vs exact.

    Two latencies per query, in ms: ``engine`` is one ``MilvusClient.search`` of an
    already-embedded query with the tenant filter (Milvus alone); ``product`` is
    ``vector_assets.serving.search.search`` as the CLI and the Python API call it (embeds the query on
    CPU, checks the tenant exists, searches at the product's ef). ``uri``: a Milvus server
    (``scripts/with_milvus_server.sh`` starts the 2.3.5 one); default Milvus Lite in a temp dir.
    """
    from vector_assets.store import milvus_store
    from vector_assets.embed.embedding import load_model
    from vector_assets.serving.search import DEFAULT_EF, SEARCH_CONSISTENCY, search

    texts, vectors = synthetic_vectors(n)
    model = load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    work = Path(tempfile.mkdtemp(prefix="va-milvus-"))
    db = work / "milvus.db"
    client = milvus_store.connect(uri or str(db))
    name = "bench"
    if client.has_collection(name):
        client.drop_collection(name)
    milvus_store.create_collection(client, name, vectors.shape[1], "HNSW", "COSINE", {"M": 16, "efConstruction": 200}, model_id="bench")
    started = time.perf_counter()
    for i in range(0, n, 2000):
        client.insert(name, [{"pk": f"{j:08d}", "tenant": "bench", "day": "2024-01-01", "kind": "x", "record_id": str(j), "content_hash": "", "model": "m", "created_at": 0, "embedded_at": 0, "preview": "", "passage": 0, "text": "", "vector": vectors[j].tolist()} for j in range(i, min(n, i + 2000))])
    client.flush(name)
    insert_s = time.perf_counter() - started
    client.release_collection(name)
    client.load_collection(name)
    query_texts = texts[: queries * 7 : 7]
    qv = model.encode(query_texts, batch_size=64, normalize_embeddings=True).astype(np.float32)
    exact = np.argsort(-(qv @ vectors.T), axis=1)[:, :10]
    version = milvus_store.server_version(client)
    out = {"store": f"Milvus server {'.'.join(map(str, version)) if version else '?'}" if uri else "Milvus Lite (its local server)", "vectors": n, "queries": len(qv), "insert_rows_per_s": round(n / insert_s, 1)}

    def percentiles(latencies: list[float]) -> dict:
        return {"p50_ms": round(float(np.percentile(latencies, 50)), 2), "p95_ms": round(float(np.percentile(latencies, 95)), 2)}

    # The product searches at SEARCH_CONSISTENCY ("Bounded"); "Strong" (the collection's own
    # level) is timed once for comparison.
    for ef, level in ((64, SEARCH_CONSISTENCY), (DEFAULT_EF, SEARCH_CONSISTENCY), (DEFAULT_EF, "Strong")):
        latencies, recall = [], []
        for i, q in enumerate(qv):
            t0 = time.perf_counter()
            hits = client.search(name, data=[q.tolist()], filter='tenant == "bench"', limit=10, output_fields=["pk"], search_params={"params": {"ef": ef}}, consistency_level=level)[0]
            latencies.append((time.perf_counter() - t0) * 1000)
            got = {int(h["entity"]["pk"]) for h in hits}
            recall.append(len(got & set(exact[i].tolist())) / 10)
        out[f"engine_ef{ef}" + ("_strong" if level == "Strong" else "")] = {**percentiles(latencies), "recall@10_vs_exact": round(float(np.mean(recall)), 4)}
    latencies, embed = [], []
    for text in query_texts:
        t0 = time.perf_counter()
        model.encode([text])
        embed.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        search(client, name, model, "bench", [text], k=10)
        latencies.append((time.perf_counter() - t0) * 1000)
    out[f"product_ef{DEFAULT_EF}"] = {**percentiles(latencies), "of_which_query_embedding": percentiles(embed)}
    if uri:
        client.drop_collection(name)
    client.close()
    if not uri:
        milvus_store.stop_local_server(db)
        out["search_profile"] = profile_search(db, name, qv[:50])
    shutil.rmtree(work, ignore_errors=True)
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return out


def profile_search(db: Path, name: str, queries: np.ndarray) -> dict:
    """Where one search's time goes inside Milvus Lite: the same collection opened in-process
    (the server is stopped first) and ``queries`` searched under cProfile. Returns ms per search
    and the share of time in FAISS's HNSW search against milvus-lite's per-row passes."""
    import cProfile
    import pstats

    from milvus_lite.db import MilvusLite

    lite = MilvusLite(str(db))
    collection = lite.get_collection(name)
    collection.load()
    collection.search([queries[0].tolist()], top_k=10)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for q in queries:
        collection.search([q.tolist()], top_k=10, expr='tenant == "bench"', search_params={"ef": 64})
    profiler.disable()
    elapsed = time.perf_counter() - started
    lite.close()
    stats = pstats.Stats(profiler).stats
    total = sum(tt for (_, _, tt, _, _) in stats.values())

    def share(pattern: str) -> float:
        return round(sum(tt for (file, _, fn), (_, _, tt, _, _) in stats.items() if pattern in f"{file}:{fn}") / total, 3)

    return {
        "ms_per_search_profiled": round(1000 * elapsed / len(queries), 1),
        "share_faiss_hnsw_search": share("IndexHNSW_search"),
        "share_milvus_lite_row_passes": round(share("_build_local_mask") + share("_update_max_seqs") + share("is_deleted") + share("method 'get' of 'dict'"), 3),
    }


def bench_gpu(limit: int) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    from sentence_transformers import SentenceTransformer

    from vector_assets.embed.embedding import resolve_model_path

    texts = [t.text for t in load_texts(["git_commits.jsonl", "jira_issues_hadoop.jsonl"])][:limit]
    out = {"texts": len(texts), "device": torch.cuda.get_device_name(0)}
    for device, half in (("cuda", True), ("cpu", False)):
        model = SentenceTransformer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"), device=device)
        if half:
            model.half()
        model.encode(texts[:256], batch_size=256 if device == "cuda" else 64)
        started = time.perf_counter()
        model.encode(texts, batch_size=256 if device == "cuda" else 64, show_progress_bar=False)
        out[f"{device}_texts_per_s"] = round(len(texts) / (time.perf_counter() - started), 1)
    out["gpu_vs_cpu"] = round(out["cuda_texts_per_s"] / out["cpu_texts_per_s"], 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="*", default=["encode", "milvus"], choices=["encode", "backfill", "recording", "demo", "milvus", "gpu"])
    parser.add_argument("--limit", type=int, default=1500, help="texts of the encode benchmark")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--uri", help="milvus: a Milvus server's URI (default: Milvus Lite in a temp dir); scripts/with_milvus_server.sh starts one")
    parser.add_argument("--queries", type=int, default=200, help="milvus: queries timed")
    parser.add_argument("--files", nargs="*", default=FILES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--storage", choices=["sqlite", "postgres", "postgres-unpooled"], default="sqlite", help="Dagster storage of encode and backfill (postgres-unpooled: encode only, dagster-postgres' default of a connection per event)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = {"machine": f"{os.cpu_count()} CPU cores, {os.uname().machine}"}
    path = REPO / "results" / "benchmarks.json"
    if path.exists():
        results = {**json.loads(path.read_text()), **results}
    for what in args.what:
        print(f"running {what} ...", flush=True)
        if args.storage == "postgres-unpooled" and what == "backfill":
            parser.error("--storage postgres-unpooled is for encode only")
        key = f"{what}_{args.storage.replace('-', '_')}" if args.storage != "sqlite" and what in ("encode", "backfill", "recording") else what
        key = "milvus_server" if what == "milvus" and args.uri else key
        results[key] = {"encode": lambda: bench_encode(args.limit, args.storage), "backfill": lambda: bench_backfill(args.files, args.workers, args.storage), "recording": lambda: bench_recording(args.storage), "demo": lambda: bench_demo(args.workers), "milvus": lambda: bench_milvus(args.vectors, args.queries, args.uri), "gpu": lambda: bench_gpu(20000)}[what]()
        print(json.dumps(results[key], indent=2), flush=True)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
