"""The Dagster definitions of vector_assets: assembled from the subpackages, nothing more."""

import dagster as dg

from .assets import all_assets
from .checks import all_checks
from .checks.audit import audit_job
from .jobs import all_jobs
from .resources import default_resources
from .sensors import all_schedules, all_sensors

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[*all_jobs, audit_job],
    sensors=all_sensors,
    schedules=all_schedules,
    resources=default_resources(),
)
