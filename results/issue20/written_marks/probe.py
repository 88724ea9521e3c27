"""One more empty tenant-day, or one more record at one a day, on the 10x365 grid (3,000 records) on
PostgreSQL (issue #20, session 19): the grid as ``benchmarks/org_scale.py`` runs it, then

* ``empty``: runs of ``probe/empty`` over 10 and 5,010 days without records, three times;
* ``sparse``: runs of probe tenants with one commit a day over 100 and 1,000 days, twice.

``REPO=<checkout>`` picks the code (a worktree of another commit); ``PROFILE=<file>``: a
pyinstrument profile of the last large run. Prints one line per repeat.

Usage: REPO=/work/main python results/issue20/written_marks/probe.py empty|sparse
"""
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(os.environ.get("REPO", Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
import dagster as dg  # noqa: E402
import org_scale  # noqa: E402
from pipeline import FILES, SHARED, bench_instance, run_days  # noqa: E402

import vector_assets.definitions  # noqa: E402,F401  (the event batching every code location process sets)
from vector_assets import settings, state  # noqa: E402
from vector_assets.assets import tenant_day_vectors  # noqa: E402
from vector_assets.embed.quality import QualityThresholds  # noqa: E402
from vector_assets.partitions import MAX_PARTITIONS_PER_RUN, TENANTS, plan_tenant_runs  # noqa: E402
from vector_assets.resources import LandingResource, MilvusResource  # noqa: E402
from vector_assets.store import milvus_store  # noqa: E402

kind = sys.argv[1] if len(sys.argv) > 1 else "empty"
work = Path(tempfile.mkdtemp(prefix="va-probe-"))
(work / "landing").mkdir()
org_scale.synthetic_landing(work / "landing" / "synthetic.jsonl", 10, 365, 3000)
start = dt.date(2026, 1, 1)
sizes, repeats = ((10, 5010), 3) if kind == "empty" else ((100, 1000), 2)
if kind == "sparse":
    probes = {f"probe/sparse-{n}-{i}": n for i in range(repeats) for n in sizes}
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(max(sizes))]
    wanted = [(t, d) for t, n in probes.items() for d in days[:n]]
    with open(SHARED / FILES[0], encoding="utf-8") as src, open(work / "landing" / "probe.jsonl", "w", encoding="utf-8") as dst:
        for (t, d), line in zip(wanted, src):
            dst.write(org_scale.rekeyed(line, t, d))
try:
    with bench_instance("postgres") as instance:
        state._ENGINES.clear()
        model = org_scale._null_embedder()
        model.get_model()
        landing = LandingResource(landing_dir=str(work / "landing"), state_dir=str(work / "home"))
        milvus = MilvusResource(uri=str(work / "home" / "milvus.db"))
        resources = {"landing": landing, "embedding_model": model, "milvus": milvus, "quality": QualityThresholds()}
        landing.refresh()
        index = landing.index()
        grid = [t for t in index.tenants() if not t.startswith("probe/")]
        instance.add_dynamic_partitions(TENANTS, [*index.tenants(), "probe/empty"])
        for run in plan_tenant_runs([p for p in index.unsynced_partitions(None) if p[0] in grid], grid, MAX_PARTITIONS_PER_RUN, may_include=set(grid)):
            assert dg.materialize([tenant_day_vectors], resources=resources, instance=instance, tags=run.tags()).success
        first = settings.start_date() if kind == "empty" else start.isoformat()
        for i in range(repeats):
            tenant = (lambda n: "probe/empty") if kind == "empty" else (lambda n: f"probe/sparse-{n}-{i}")
            small, _ = run_days(instance, resources, tenant(sizes[0]), first, sizes[0])
            profiler = None
            if i == repeats - 1 and os.environ.get("PROFILE"):
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.005)
                profiler.start()
            large, _ = run_days(instance, resources, tenant(sizes[1]), first, sizes[1])
            if profiler is not None:
                profiler.stop()
                Path(os.environ["PROFILE"]).write_text(profiler.output_text(unicode=False, color=False, show_all=False))
            per = sizes[1] - sizes[0]  # one record a day: as many records as days
            what = "ms per empty tenant-day" if kind == "empty" else "ms per record"
            print(f"{kind}: {sizes[0]} days {small:.2f}s, {sizes[1]} days {large:.2f}s, {what} {1000 * (large - small) / per:.3f}", flush=True)
        milvus.reset_client()
finally:
    milvus_store.stop_local_server(work / "home" / "milvus.db")
