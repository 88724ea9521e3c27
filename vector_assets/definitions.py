"""The Dagster definitions of vector_assets: assembled from the subpackages, nothing more."""

import os

import dagster as dg

from . import settings
from .assets import all_assets, index_tuning_job, search_quality_job, search_quality_schedule
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
# per asset, not one per tenant-day, on any storage (vector_assets.instance.storage does it for SQLite in
# every process; for Postgres, `make dev` exports it to the webserver and daemon).
os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")



def executor_from_env():
    """The executor of every job: Dagster's in-process executor (the step runs in the run's own
    process) unless ``VECTOR_ASSETS_EXECUTOR=celery``: then dagster-celery's, with the broker
    and backend of ``deploy/celery/celery.yaml`` (``VECTOR_ASSETS_CELERY_BROKER``,
    ``VECTOR_ASSETS_CELERY_BACKEND``), whose workers execute the steps wherever they run
    (README, "Scaling out"). Raises ValueError for another value.

    In-process, not Dagster's default multiprocess executor: every job here is one step, and a
    step process of its own re-imported the code location and held the run 1.3 s longer before
    the step began (the bundled sample's backfill through the run queue: see README, "Command
    line")."""
    kind = settings.executor()
    if kind == "in_process":
        return dg.in_process_executor
    if kind != "celery":
        raise ValueError(f"VECTOR_ASSETS_EXECUTOR={kind!r}: one of in_process (default), celery")
    from dagster_celery import celery_executor
    from dagster_shared.yaml_utils import load_yaml_from_path

    from .settings import REPO_ROOT

    config = load_yaml_from_path(str(REPO_ROOT / "deploy" / "celery" / "celery.yaml"))["execution"]["config"]
    return celery_executor.configured(config, name="celery")


defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[*all_jobs, audit_job, search_quality_job, index_tuning_job],
    sensors=all_sensors,
    schedules=[*all_schedules, search_quality_schedule],
    resources=default_resources(),
    executor=executor_from_env(),
)
