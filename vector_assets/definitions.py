"""The Dagster definitions of vector_assets: assembled from the subpackages, nothing more."""

import os

import dagster as dg

from .assets import all_assets
from .checks import all_checks
from .checks.audit import audit_job
from .jobs import all_jobs
from .resources import default_resources
from .sensors import all_schedules, all_sensors

# A run's tenant-day materialisations, derived by Dagster from the step's ranged output, are
# written in batches of this many events: one multi-row INSERT on Postgres
# (``store_event_batch``), a loop on SQLite. Set in every process that loads this code location
# (the CLI's workers, the UI's run and step workers). Measured in benchmarks/pipeline.py recording.
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
# Runs created in these processes (the CLI's) plan a ranged run's materialisations with one event
# per asset, not one per tenant-day, on any storage (vector_assets.storage does it for SQLite in
# every process; for Postgres, `make dev` exports it to the webserver and daemon).
os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[*all_jobs, audit_job],
    sensors=all_sensors,
    schedules=all_schedules,
    resources=default_resources(),
)
