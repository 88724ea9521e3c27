"""How Dagster plans runs of tenant-days: a ranged run's partition subset resolved once, and a
backfill's partitions cut into rectangles.

**Resolved once.**

When a run is created, Dagster logs the run's plan: one ``ASSET_MATERIALIZATION_PLANNED``
event per asset and one ``ASSET_CHECK_EVALUATION_PLANNED`` per check
(``RunDomain._log_asset_planned_events``). For each of them it calls
``DagsterRun.get_resolved_partitions_subset_for_events(partitions_def)``, which, for a run
tagged with a partition range over a ``MultiPartitionsDefinition`` (Dagster stores no compact
subset on such runs), rebuilds every ``MultiPartitionKey`` of the range: 11 times for
``tenant_day_vectors`` (3 assets, 8 checks), the same subset each time. Measured
(``benchmarks/profile_empty_days.py postgres 1000``, 2026-12-02): 0.80 s of a 3.76 s profiled
run over 1,000 tenant-days (21 %), 46 us a key and call.

:func:`install` wraps that method so that the last run's resolution is reused while the run
id, its range tags and the (equal) partitions definition are the same: the first call of a
plan resolves, the other ten reuse it. Runs without a range, with a stored subset, or with
another definition go to Dagster's method unchanged. It is a private Dagster method, used
because of the measured cost; ``tests/test_definitions.py`` fails loudly when it changes.

**Rectangles.** A backfill launched from the UI asks ``get_partition_key_ranges`` of the
targeted partitions for its runs (``BackfillPolicy.single_run``: one run per range). For a
two-dimensional partitioning Dagster holds one dimension constant: one range per tenant, or per
day when fewer days than tenants are targeted. A backfill of 100 tenants x 365 days was 100
runs, each paying a process, imports, the model load and Great Expectations' import (about
10 s here), where ``vector-assets backfill`` makes 4 runs over rectangles of tenants
(:func:`vector_assets.partitions.plan_tenant_runs`). For the tenant x day partitioning,
:func:`install` routes ``DefaultPartitionsSubset.get_partition_key_ranges`` through
:func:`vector_assets.partitions.tile_rectangles`: rectangles that cover exactly the targeted
tenant-days (a range between two corners is that rectangle to Dagster), at most
:data:`~vector_assets.partitions.MAX_PARTITIONS_PER_RUN` each. Other partitionings, a subset
with a tenant missing from the dimension, or a caller without the dynamic partitions in reach
get Dagster's ranges unchanged. The same ranges serve the run's step (``partition_key_range``
of a rectangle run is now its one rectangle) and the automation's run requests.

The instance storages of :mod:`.storage` install both, so that every process that creates runs
(the CLI, the daemon's backfills, sensors and schedules, the webserver's launches) has them.
"""

from __future__ import annotations

import threading

import dagster as dg
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

_ORIGINAL = DagsterRun.get_resolved_partitions_subset_for_events
_ORIGINAL_RANGES = DefaultPartitionsSubset.get_partition_key_ranges
_LAST = threading.local()


def _resolved_once(self: DagsterRun, partitions_def):
    """``DagsterRun.get_resolved_partitions_subset_for_events`` with the last run's range
    resolution reused (see the module docstring). Same result, same errors as Dagster's."""
    start = self.tags.get(ASSET_PARTITION_RANGE_START_TAG)
    end = self.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if partitions_def is None or self.partitions_subset is not None or not (start and end):
        return _ORIGINAL(self, partitions_def)
    key = (self.run_id, start, end)
    last = getattr(_LAST, "value", None)
    if last is not None and last[0] == key and last[1] == partitions_def:
        return last[2]
    subset = _ORIGINAL(self, partitions_def)
    _LAST.value = (key, partitions_def, subset)
    return subset


def _tenant_dimension(partitions_def) -> dg.DynamicPartitionsDefinition | None:
    """The tenant dimension of the tenant x day partitioning, or None for any other."""
    from ..partitions import TENANTS

    if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return None
    dims = {d.name: d.partitions_def for d in partitions_def.partitions_defs}
    tenant, day = dims.get("tenant"), dims.get("day")
    if set(dims) != {"tenant", "day"} or not isinstance(tenant, dg.DynamicPartitionsDefinition) or tenant.name != TENANTS:
        return None
    if not isinstance(day, dg.TimeWindowPartitionsDefinition) or day.cron_schedule != "0 0 * * *":
        return None
    return tenant


def _rectangles(self: DefaultPartitionsSubset, partitions_def) -> list[dg.PartitionKeyRange]:
    """``DefaultPartitionsSubset.get_partition_key_ranges`` with the tenant x day
    partitioning's ranges as rectangles (see the module docstring); the same ranges as Dagster's
    for anything else."""
    from .. import partitions

    tenants = _tenant_dimension(partitions_def)
    if tenants is None:
        return _ORIGINAL_RANGES(self, partitions_def)
    try:
        order = list(tenants.get_partition_keys())  # the caller's dynamic partitions store
    except Exception:  # noqa: BLE001 - no dynamic partitions store in reach: Dagster's own ranges, as before
        return _ORIGINAL_RANGES(self, partitions_def)
    tiles = partitions.tile_rectangles([partitions.split_key(k) for k in self.get_partition_keys()], order)
    if tiles is None:
        return _ORIGINAL_RANGES(self, partitions_def)
    return [tile.key_range(order) for tile in tiles]


def install() -> None:
    """Route ``DagsterRun.get_resolved_partitions_subset_for_events`` through the per-run reuse
    and ``DefaultPartitionsSubset.get_partition_key_ranges`` through the rectangles (idempotent)."""
    DagsterRun.get_resolved_partitions_subset_for_events = _resolved_once
    DefaultPartitionsSubset.get_partition_key_ranges = _rectangles


def installed() -> bool:
    """Whether :func:`install` is in effect in this process."""
    return DagsterRun.get_resolved_partitions_subset_for_events is _resolved_once and DefaultPartitionsSubset.get_partition_key_ranges is _rectangles
