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
    # The run's console log at INFO: Dagster's default (DEBUG) prints an event line for every
    # tenant-day's materialisations and check evaluations (547 lines for one 182-day backfill
    # under `make dev`); every event is still in the run's log in the UI.
    config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
)

all_jobs = [landing_index_job, vectors_job]  # audit_job is added by definitions (it lives in checks)
