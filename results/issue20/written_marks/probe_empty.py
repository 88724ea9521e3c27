"""Profile one more empty tenant-day: the grid 10x365 (3,000 records), then runs of probe/empty over 10 and 5,010 days."""
import datetime as dt, sys, tempfile, time, os
from pathlib import Path
REPO = Path(os.environ.get("REPO", "/work/main"))
sys.path.insert(0, str(REPO / "benchmarks")); sys.path.insert(0, str(REPO))
import org_scale
from pipeline import bench_instance, run_days
import dagster as dg
import vector_assets.definitions  # noqa
from vector_assets.assets import tenant_day_vectors
from vector_assets.embed.quality import QualityThresholds
from vector_assets.partitions import MAX_PARTITIONS_PER_RUN, TENANTS, plan_tenant_runs
from vector_assets.resources import LandingResource, MilvusResource
from vector_assets import settings, state
work = Path(tempfile.mkdtemp(prefix="va-probe-")); (work / "landing").mkdir()
org_scale.synthetic_landing(work / "landing" / "synthetic.jsonl", 10, 365, 3000)
with bench_instance("postgres") as instance:
    state._ENGINES.clear()
    model = org_scale._null_embedder(); model.get_model()
    landing = LandingResource(landing_dir=str(work / "landing"), state_dir=str(work / "home"))
    milvus = MilvusResource(uri=str(work / "home" / "milvus.db"))
    resources = {"landing": landing, "embedding_model": model, "milvus": milvus, "quality": QualityThresholds()}
    landing.refresh(); index = landing.index()
    instance.add_dynamic_partitions(TENANTS, index.tenants())
    for run in plan_tenant_runs(index.unsynced_partitions(None), instance.get_dynamic_partitions(TENANTS), MAX_PARTITIONS_PER_RUN, may_include=set(index.tenants())):
        assert dg.materialize([tenant_day_vectors], resources=resources, instance=instance, tags=run.tags()).success
    instance.add_dynamic_partitions(TENANTS, ["probe/empty"])
    first = settings.start_date()
    for i in range(3):
        small, _ = run_days(instance, resources, "probe/empty", first, 10)
        if i == 2 and os.environ.get("PROFILE"):
            from pyinstrument import Profiler
            p = Profiler(interval=0.005); p.start()
        large, _ = run_days(instance, resources, "probe/empty", first, 5010)
        if i == 2 and os.environ.get("PROFILE"):
            p.stop(); Path(os.environ["PROFILE"]).write_text(p.output_text(unicode=False, color=False, show_all=False))
        print(f"empty: 10 days {small:.2f}s, 5010 days {large:.2f}s, ms per empty tenant-day {1000*(large-small)/5000:.3f}", flush=True)
