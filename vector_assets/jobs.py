"""Jobs: the landing index, and the tenant-day vectors (the job backfills and the CLI run)."""

import dagster as dg

from .keys import ASSET_KEYS
from .partitions import tenant_day_partitions

landing_index_job = dg.define_asset_job("landing_index_job", selection=dg.AssetSelection.assets("landing_index"))

vectors_job = dg.define_asset_job(
    "tenant_day_vectors_job",
    selection=dg.AssetSelection.assets(*ASSET_KEYS),
    partitions_def=tenant_day_partitions,
    description="Records -> extracted text -> Milvus vectors for the selected tenant-days.",
)

all_jobs = [landing_index_job, vectors_job]  # audit_job is added by definitions (it lives in checks)
