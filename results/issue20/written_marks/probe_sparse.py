"""Profile one more record at 1 a day: the grid 10x365 (3,000 records), then runs of sparse probe tenants over 100 and 1,000 days, one commit a day."""
import datetime as dt, sys, tempfile, os
from pathlib import Path
REPO = Path(os.environ.get("REPO", "/work/main"))
sys.path.insert(0, str(REPO / "benchmarks")); sys.path.insert(0, str(REPO))
import org_scale
from pipeline import FILES, SHARED, bench_instance, run_days
import dagster as dg
import vector_assets.definitions  # noqa
from vector_assets.assets import tenant_day_vectors
from vector_assets.embed.quality import QualityThresholds
from vector_assets.partitions import MAX_PARTITIONS_PER_RUN, TENANTS, plan_tenant_runs
from vector_assets.resources import LandingResource, MilvusResource
from vector_assets import state
work = Path(tempfile.mkdtemp(prefix="va-probe-")); (work / "landing").mkdir()
org_scale.synthetic_landing(work / "landing" / "synthetic.jsonl", 10, 365, 3000)
start = dt.date(2026, 1, 1)
probes = {f"probe/sparse-{n}-{i}": n for i in range(2) for n in (100, 1000)}
days = [(start + dt.timedelta(days=i)).isoformat() for i in range(1000)]
wanted = [(t, d) for t, n in probes.items() for d in days[:n]]
with open(SHARED / FILES[0], encoding="utf-8") as src, open(work / "landing" / "probe.jsonl", "w", encoding="utf-8") as dst:
    for (t, d), line in zip(wanted, src):
        dst.write(org_scale.rekeyed(line, t, d))
with bench_instance("postgres") as instance:
    state._ENGINES.clear()
    model = org_scale._null_embedder(); model.get_model()
    landing = LandingResource(landing_dir=str(work / "landing"), state_dir=str(work / "home"))
    milvus = MilvusResource(uri=str(work / "home" / "milvus.db"))
    resources = {"landing": landing, "embedding_model": model, "milvus": milvus, "quality": QualityThresholds()}
    landing.refresh(); index = landing.index()
    grid = [t for t in index.tenants() if not t.startswith("probe/")]
    instance.add_dynamic_partitions(TENANTS, index.tenants())
    for run in plan_tenant_runs([p for p in index.unsynced_partitions(None) if p[0] in grid], grid, MAX_PARTITIONS_PER_RUN, may_include=set(grid)):
        assert dg.materialize([tenant_day_vectors], resources=resources, instance=instance, tags=run.tags()).success
    for i in range(2):
        small, _ = run_days(instance, resources, f"probe/sparse-100-{i}", start.isoformat(), 100)
        if i == 1 and os.environ.get("PROFILE"):
            from pyinstrument import Profiler
            p = Profiler(interval=0.002); p.start()
        large, _ = run_days(instance, resources, f"probe/sparse-1000-{i}", start.isoformat(), 1000)
        if i == 1 and os.environ.get("PROFILE"):
            p.stop(); Path(os.environ["PROFILE"]).write_text(p.output_text(unicode=False, color=False, show_all=False))
        print(f"sparse: 100 days {small:.2f}s, 1000 days {large:.2f}s, ms per record {1000*(large-small)/900:.3f}", flush=True)
