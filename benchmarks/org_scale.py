"""Organisation scale (issue #20 item 1): everything but the encode, per tenant-day and per record.

Synthetic landing data shaped like the real records: the records of ../shared/data (the four
files, 27,144 records by default; ``--records N`` for fewer) re-keyed over T tenants x D days
(record k goes to tenant ``org/repo-<k mod T>``; a tenant's n records are spread evenly over the D
days from 2023-01-01, the j-th on day ``j * D div n``, its timestamp field set to that day), so
that the texts, their lengths and kinds are the real ones and only their spread changes: each
tenant's run covers all D days, and the days between its records are tenant-days without records. The same records over a grid ten times larger show
how the per-tenant-day cost grows with T x D.

The grid is run through the product as ``vector-assets backfill`` plans it (``plan_tenant_runs``:
neighbouring tenants share a run over the rectangle of their days, up to 10,000 tenant-days a
run), each run a real Dagster run in this process
(``dg.materialize`` of ``tenant_day_vectors`` against a SQLite or PostgreSQL instance, the state
database beside it), with:

* ``--embedder null`` (default): a zero-cost embedder, a benchmark option and never a product
  one: each text's vector is a unit vector drawn from a generator seeded by the text's hash
  (equal texts get equal vectors, as with a model; distinct texts near-orthogonal ones, so the
  vector checks judge them as they judge real vectors). The issue asked for constant vectors;
  those fail the duplicate and retrievability checks, which would then block every write.
* ``--embedder model``: the real all-MiniLM-L6-v2.

Printed per grid: the landing refresh (lines/s), planning, the runs' wall time split into the
step's stages (read, extract, passages, plan, encode, Milvus writes with rows/s, checks, sync
marks), Dagster's event storage (ms per tenant-day, events per tenant-day) and the rest of
Dagster (run start, step machinery); per tenant-day without records and per record. Then the
daily schedule the morning after the grid's last day, with 1 % of the tenants given new records
that day: its tick, the runs it requests and their time.

Then what one more tenant-day or record costs a run at that size (:func:`marginal_costs`: differences
of runs over probe tenants, the fixed cost of a run dropped out), the figures the issue's targets
are stated in (≤ 0.5 ms per tenant-day without records, ≤ 2 ms per record, flat as T x D grows).

Usage:
    python benchmarks/org_scale.py --grid 100x365 --grid 1000x365 [--storage sqlite|postgres]
        [--embedder null|model] [--records N] [--uri MILVUS_URI] [--json results/org_scale.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import FILES, REPO, SHARED, bench_instance, run_days, timed_event_storage  # noqa: E402

sys.path.insert(0, str(REPO))

FIRST_DAY = dt.date(2023, 1, 1)

#: The tenant-day step's stages, timed by wrapping these callables where the step looks them
#: up: ``(label, module path, attribute)``.
STAGES = [
    ("refresh", "vector_assets.assets.vectors", "record_refresh"),
    ("read", "vector_assets.ingest.landing", "LandingIndex.read_partitions"),
    ("extract", "vector_assets.store.sync", "extract_partitions"),
    ("text checks", "vector_assets.checks.evaluate", "text_frame_verdicts"),
    ("passages", "vector_assets.store.sync", "split_into_passages"),
    ("plan", "vector_assets.store.sync", "plan_embeddings"),
    ("encode", "vector_assets.store.sync", "embed_texts"),
    ("vector checks", "vector_assets.checks.evaluate", "vector_quality_verdicts"),
    ("milvus write", "vector_assets.store.sync", "write_partitions"),
    ("checks after write", "vector_assets.assets.vectors", "judge"),
    ("check events", "vector_assets.assets.vectors", "check_evaluations"),
    ("sync marks", "vector_assets.store.sync", "record_synced"),
    ("alias", "vector_assets.store.sync", "cut_over_search_alias"),
]
#: Parts of "checks after write", timed inside it (reported under ``checks_after_write_s``, not
#: added to the stages' sum).
CHECK_PARTS = [
    ("stored hashes", "vector_assets.checks.evaluate", "stored_hashes"),
    ("sample vectors", "vector_assets.checks.evaluate", "sample_vectors"),
    ("coherence", "vector_assets.checks.evaluate", "coherence_verdicts"),
    ("retrievability", "vector_assets.checks.evaluate", "retrievability_verdicts"),
    ("drift", "vector_assets.checks.evaluate", "drift_verdicts"),
]


def _null_embedder():
    from vector_assets.resources import EmbeddingModelResource

    class NullEmbedder(EmbeddingModelResource):
        """Hash-seeded unit vectors (see the module docstring); the real tokenizer splits
        passages and counts tokens, as the product does."""

        @property
        def model_id(self) -> str:
            return "null-hash-384"

        def get_model(self):
            return None

        @property
        def dimension(self) -> int:
            return 384

        @property
        def max_seq_length(self) -> int:
            return 256

        def encode_with_raw(self, texts):
            started = time.perf_counter()
            out = np.empty((len(texts), 384), dtype=np.float32)
            for i, text in enumerate(texts):
                seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
                v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
                out[i] = v / np.linalg.norm(v)
            self._stats.seconds += time.perf_counter() - started
            self._stats.texts += len(texts)
            return out, out.copy()

        def encode(self, texts):
            return self.encode_with_raw(texts)[1] if texts else np.zeros((0, 0), dtype=np.float32)

    return NullEmbedder()


def rekeyed(line: str, tenant: str, day: str) -> str:
    """The JSONL ``line`` of a real record moved to ``tenant`` on ``day``: its tenant set, its
    first timestamp field (``TIMESTAMP_FIELDS``) set to noon UTC that day, any ``day`` field
    dropped. Returns the new line, newline included."""
    from vector_assets.ingest.records import TIMESTAMP_FIELDS

    record = json.loads(line)
    record["tenant"] = tenant
    for field in TIMESTAMP_FIELDS:
        if record.get(field):
            record[field] = f"{day}T12:00:00Z"
            break
    record.pop("day", None)
    return json.dumps(record) + "\n"


def synthetic_landing(out: Path, tenants: int, days: int, limit: int | None) -> tuple[int, set]:
    """Write the re-keyed records to ``out`` (one JSONL file). Returns ``(records, tenant-days)``."""

    total = limit if limit is not None else sum(sum(1 for _ in open(SHARED / name, encoding="utf-8")) for name in FILES)
    per_tenant = -(-total // tenants)
    k = 0
    keys = set()
    with open(out, "w", encoding="utf-8") as dst:
        for name in FILES:
            with open(SHARED / name, encoding="utf-8") as src:
                for line in src:
                    if limit is not None and k >= limit:
                        return k, keys
                    tenant = f"org/repo-{k % tenants:04d}"
                    day = (FIRST_DAY + dt.timedelta(days=(k // tenants) * days // per_tenant)).isoformat()
                    dst.write(rekeyed(line, tenant, day))
                    keys.add((tenant, day))
                    k += 1
    return k, keys


@contextlib.contextmanager
def timed_stages(stages=STAGES):
    """Wrap each of ``stages`` (:data:`STAGES`) to sum its seconds; yields ``{label: seconds}``."""
    import importlib

    spent = {label: 0.0 for label, _, _ in stages}
    with contextlib.ExitStack() as stack:
        for label, module, attr in stages:
            owner = importlib.import_module(module)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = getattr(owner, name)

            def wrapped(*args, __original=original, __label=label, **kwargs):
                started = time.perf_counter()
                try:
                    return __original(*args, **kwargs)
                finally:
                    spent[__label] += time.perf_counter() - started

            stack.enter_context(mock.patch.object(owner, name, wrapped))
        yield spent


def _rows(milvus, model_id: str) -> int:
    client = milvus.get_client()
    name = milvus.collection_for(model_id)
    if not client.has_collection(name):
        return 0
    return int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])


def run_grid(tenants: int, days: int, storage: str, embedder: str, limit: int | None, uri: str | None) -> dict:
    """One grid (:func:`grid_figures`) in a fresh working folder, removed afterwards with the
    Milvus Lite server it started, whether the grid ends, fails or is interrupted (Ctrl-C, or
    SIGTERM: :func:`main` turns it into an exit); a killed (SIGKILL) benchmark leaves the server
    to ``vector-assets server stop``."""
    from vector_assets.store import milvus_store

    work = Path(tempfile.mkdtemp(prefix="va-org-"))
    try:
        return grid_figures(work, tenants, days, storage, embedder, limit, uri)
    finally:
        if not uri:
            milvus_store.stop_local_server(work / "home" / "milvus.db")
        shutil.rmtree(work, ignore_errors=True)


def grid_figures(work: Path, tenants: int, days: int, storage: str, embedder: str, limit: int | None, uri: str | None) -> dict:
    """The figures of one grid of T ``tenants`` x D ``days`` (module docstring), its files
    under ``work``: one dict, the JSON line :func:`main` prints."""
    import dagster as dg

    import vector_assets.definitions  # noqa: F401  (the event batching every code location process sets)
    from vector_assets.assets import tenant_day_vectors
    from vector_assets.embed.quality import QualityThresholds
    from vector_assets.partitions import MAX_PARTITIONS_PER_RUN, TENANTS, plan_tenant_runs
    from vector_assets.resources import EmbeddingModelResource, LandingResource, MilvusResource

    (work / "landing").mkdir()
    records, keys = synthetic_landing(work / "landing" / "synthetic.jsonl", tenants, days, limit)
    out = {
        "grid": f"{tenants}x{days}", "tenants": tenants, "days": days, "tenant_days": tenants * days,
        "tenant_days_with_records": len(keys), "records": records, "storage": storage, "embedder": embedder,
        "milvus": "server" if uri else "lite",
    }
    with bench_instance(storage) as instance:
        from vector_assets import state

        state._ENGINES.clear()  # a fresh database per grid: its tables are created anew
        model = _null_embedder() if embedder == "null" else EmbeddingModelResource()
        model.get_model()
        landing = LandingResource(landing_dir=str(work / "landing"), state_dir=str(work / "home"))
        milvus = MilvusResource(uri=uri or str(work / "home" / "milvus.db"))
        resources = {"landing": landing, "embedding_model": model, "milvus": milvus, "quality": QualityThresholds()}

        started = time.perf_counter()
        report = landing.refresh()
        out["refresh_s"] = round(time.perf_counter() - started, 2)
        out["refresh_lines_per_s"] = round(report.lines_scanned / max(out["refresh_s"], 1e-9))
        started = time.perf_counter()
        index = landing.index()
        instance.add_dynamic_partitions(TENANTS, index.tenants())
        unsynced = index.unsynced_partitions(None)
        # The runs `vector-assets backfill` would make (neighbouring tenants share a run).
        order = instance.get_dynamic_partitions(TENANTS)
        runs = plan_tenant_runs(unsynced, order, MAX_PARTITIONS_PER_RUN, may_include=set(order))
        out["plan_s"] = round(time.perf_counter() - started, 2)
        out["runs"] = len(runs)
        covered = sum(r.tenant_days for r in runs)
        out["tenant_days_materialised"] = covered

        failed = 0
        with timed_stages() as stages, timed_stages(CHECK_PARTS) as check_parts, timed_event_storage(instance) as events:
            started = time.perf_counter()
            for i, run in enumerate(runs):
                result = dg.materialize([tenant_day_vectors], resources=resources, instance=instance, raise_on_error=False, tags=run.tags())
                failed += not result.success
                if (i + 1) % max(1, len(runs) // 10) == 0:
                    print(f"  {out['grid']} {storage}: {i + 1}/{len(runs)} runs, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            runs_s = time.perf_counter() - started
        out["runs_failed"] = failed
        out["runs_s"] = round(runs_s, 2)
        rows = _rows(milvus, model.model_id)
        out["milvus_rows"] = rows
        event_s = sum(v[1] for v in events.values())
        event_n = sum(v[0] for v in events.values())
        out["stages_s"] = {k: round(v, 2) for k, v in stages.items()}
        out["checks_after_write_s"] = {k: round(v, 2) for k, v in check_parts.items()}
        out["event_storage_s"] = round(event_s, 2)
        out["events"] = event_n
        out["events_by_type"] = {k: {"events": v[0], "ms_each": round(1000 * v[1] / max(v[0], 1), 3)} for k, v in sorted(events.items())}
        out["dagster_rest_s"] = round(runs_s - sum(stages.values()) - event_s, 2)
        out["milvus_write_rows_per_s"] = round(rows / max(stages["milvus write"], 1e-9))
        out["ms_per_tenant_day_all"] = round(1000 * (runs_s - stages["encode"]) / covered, 3)
        out["event_ms_per_tenant_day"] = round(1000 * event_s / covered, 3)
        out["events_per_tenant_day"] = round(event_n / covered, 2)
        per_record = ("read", "extract", "text checks", "passages", "plan", "vector checks", "milvus write", "checks after write", "check events", "sync marks")
        out["ms_per_record_stages"] = round(1000 * sum(stages[k] for k in per_record) / max(records, 1), 3)
        out["ms_per_run_fixed"] = round(1000 * (out["dagster_rest_s"] + stages["refresh"] + stages["alias"]) / max(len(runs), 1), 1)

        # The morning after the grid's last day: 1 % of the tenants got records that day.
        day = (FIRST_DAY + dt.timedelta(days=days)).isoformat()
        changed = [f"org/repo-{i:04d}" for i in range(0, tenants, 100)]
        with open(SHARED / FILES[0], encoding="utf-8") as src, open(work / "landing" / "morning.jsonl", "w") as dst:
            for tenant, line in zip(changed, src):
                record = json.loads(line)
                record.update(tenant=tenant, author_date_utc=f"{day}T08:00:00Z")
                dst.write(json.dumps(record) + "\n")
        at = dt.datetime.combine(dt.date.fromisoformat(day) + dt.timedelta(days=1), dt.time(0, 15), tzinfo=dt.timezone.utc)
        before = len(instance.get_runs())
        recorded = []
        from vector_assets.sensors import schedules

        def counted(instance, materializations, __record=schedules.record_runless_materializations):
            recorded.append(__record(instance, materializations))
            return recorded[-1]

        with mock.patch.object(schedules, "record_runless_materializations", counted):
            started = time.perf_counter()
            with dg.build_schedule_context(instance=instance, scheduled_execution_time=at, resources={k: resources[k] for k in ("landing", "milvus", "embedding_model")}) as context:
                requests = schedules.daily_schedule(context)
            tick_s = time.perf_counter() - started
        requests = requests if isinstance(requests, list) else []
        started = time.perf_counter()
        ok = sum(dg.materialize([tenant_day_vectors], partition_key=r.partition_key, tags=dict(r.tags), resources=resources, instance=instance, raise_on_error=False).success for r in requests)
        out["schedule"] = {
            "day": day, "tenants_with_new_records": len(changed), "tick_s": round(tick_s, 2),
            "materialisations_without_run": sum(recorded), "runs_requested": len(requests), "runs_ok": ok,
            "runs_s": round(time.perf_counter() - started, 2), "runs_before": before,
            "runs_requested_before_issue_20": tenants,
        }
        out["marginal"] = marginal_costs(instance, resources, landing, work, FIRST_DAY + dt.timedelta(days=days + 2))
        milvus.reset_client()
    return out


def marginal_costs(instance, resources: dict, landing, work: Path, start: dt.date, empty_days: int = 5000, sparse: tuple[int, int] = (100, 1000), dense: tuple[int, int] = (10, 100), per_day: int = 10, repeats: int = 3) -> dict:
    """What one more tenant-day or record costs a run on the instance as the grid left it (its
    tables and its collection grown), each the difference of two runs of one tenant that differ
    only in size, divided by the difference, so that a run's fixed costs drop out:

    * ``ms_per_empty_tenant_day``: a run over ``10 + empty_days`` days without records (from
      the partitions' first day, ``settings.start_date()``: a run of a backfill's size, so that the runs' jitter of a
      few tenths of a second weighs little) against one over 10 such days; ``run_fixed_ms``: the
      10-day run less its 10 days;
    * ``ms_per_record_sparse``: tenants with one record on each of ``sparse[1]`` days against
      ``sparse[0]`` days, each run writing its records (a tenant-day with records costs 3
      materialisations and its checks' 8 evaluations);
    * ``ms_per_record_dense``: ``per_day`` records on each of ``dense[1]`` days against
      ``dense[0]`` days, the same.

    A run's own Milvus queries (what it holds for the run's tenant-days, the drift history, the
    retrievability searches: scans of the collection on Milvus Lite) are per run, not per record,
    and drop out with the rest of its fixed cost. Each figure is measured ``repeats`` times
    (fresh tenants for the records) and given as the median with its range (``*_range``): single
    figures moved by a third from one to the next. On PostgreSQL the grid's tables are vacuumed
    and analysed first (``VACUUM ANALYZE``, what autovacuum does within a minute of the grid's
    inserts; run during the probes it took a core from them). The encode is left out (the
    stage's own seconds subtracted). Tenants ``probe/...`` are added; the days of those with
    records start at ``start`` (after the grid's and the morning's). Their records are lines of
    ../shared/data's commits."""
    from vector_assets import settings
    from vector_assets.partitions import TENANTS

    engine = getattr(instance.event_log_storage, "_engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        import sqlalchemy as sa

        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    probes = {f"probe/{kind}-{size}-{i}": (size, 1 if kind == "sparse" else per_day) for i in range(repeats) for kind, sizes in (("sparse", sparse), ("dense", dense)) for size in sizes}
    instance.add_dynamic_partitions(TENANTS, ["probe/empty", *probes])
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(max(sparse + dense))]
    wanted = [(tenant, day) for tenant, (size, n) in probes.items() for day in days[:size] for _ in range(n)]
    with open(SHARED / FILES[0], encoding="utf-8") as src, open(work / "landing" / "probe.jsonl", "w", encoding="utf-8") as dst:
        for (tenant, day), line in zip(wanted, src, strict=False):
            dst.write(rekeyed(line, tenant, day))
    landing.refresh()

    def run(tenant: str, n: int, first: dt.date = start) -> float:
        with timed_stages([s for s in STAGES if s[0] == "encode"]) as spent:
            wall, _ = run_days(instance, resources, tenant, first.isoformat(), n)
        return wall - spent["encode"]

    first_day = dt.date.fromisoformat(settings.start_date())
    figures: dict[str, list[float]] = {"ms_per_empty_tenant_day": [], "run_fixed_ms": [], "ms_per_record_sparse": [], "ms_per_record_dense": []}
    for _ in range(repeats):  # the runs without records first: those with records leave Milvus busy
        small, large = run("probe/empty", 10, first_day), run("probe/empty", 10 + empty_days, first_day)
        figures["ms_per_empty_tenant_day"].append(1000 * (large - small) / empty_days)
        figures["run_fixed_ms"].append(1000 * small - 10 * figures["ms_per_empty_tenant_day"][-1])
    for i in range(repeats):
        for kind, (a, b), n in (("sparse", sparse, 1), ("dense", dense, per_day)):
            small, large = run(f"probe/{kind}-{a}-{i}", a), run(f"probe/{kind}-{b}-{i}", b)
            figures[f"ms_per_record_{kind}"].append(1000 * (large - small) / ((b - a) * n))
    out = {}
    for name, values in figures.items():
        out[name] = round(float(np.median(values)), 3)
        out[f"{name}_range"] = [round(min(values), 3), round(max(values), 3)]
    return out


def _line(r: dict) -> str:
    s, m = r["schedule"], r["marginal"]
    return (
        f"| {r['grid']} | {r['storage']} | {r['records']:,} | {r['tenant_days_materialised']:,} | {r['runs']} | {r['refresh_lines_per_s']:,} | "
        f"{r['runs_s']:.1f} | {r['event_ms_per_tenant_day']:.3f} | {r['events_per_tenant_day']:.2f} | {r['ms_per_tenant_day_all']:.3f} | "
        f"{r['ms_per_record_stages']:.2f} | {r['milvus_write_rows_per_s']:,} | {r['ms_per_run_fixed']:.0f} | "
        f"{s['tick_s']:.2f} s, {s['runs_requested']} runs ({s['runs_s']:.1f} s) | "
        f"{m['ms_per_empty_tenant_day']:.3f} ({m['ms_per_empty_tenant_day_range'][0]:.3f}-{m['ms_per_empty_tenant_day_range'][1]:.3f}) | "
        f"{m['ms_per_record_sparse']:.2f} ({m['ms_per_record_sparse_range'][0]:.2f}-{m['ms_per_record_sparse_range'][1]:.2f}) | "
        f"{m['ms_per_record_dense']:.2f} ({m['ms_per_record_dense_range'][0]:.2f}-{m['ms_per_record_dense_range'][1]:.2f}) |"
    )


HEADER = (
    "| grid TxD | storage | records | tenant-days | runs | refresh lines/s | runs s | events ms/tenant-day | events/tenant-day | "
    "all but encode ms/tenant-day | stages ms/record | Milvus rows/s | fixed ms/run | daily tick (1 % changed) | "
    "one more empty tenant-day, ms (median, range of 3) | one more record, ms: 1 a day | 10 a day |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", action="append", default=[], help="TxD, e.g. 100x365 (repeatable)")
    parser.add_argument("--storage", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--embedder", default="null", choices=["null", "model"])
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--uri", default=None, help="a Milvus server's URI (default: a fresh Milvus Lite file)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    # SIGTERM (timeout, kill) as an exit, so that run_grid's cleanup stops the Milvus Lite server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = []
    for grid in args.grid or ["100x365"]:
        t, d = (int(x) for x in grid.lower().split("x"))
        results.append(run_grid(t, d, args.storage, args.embedder, args.records, args.uri))
        print(json.dumps(results[-1]), flush=True)
    print(HEADER)
    for r in results:
        print(_line(r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
