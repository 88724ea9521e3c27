"""A ranged run's partition subset, resolved once per run when Dagster plans it.

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

The instance storages of :mod:`.storage` install it, so that every process that creates runs
(the CLI, the daemon's backfills, sensors and schedules, the webserver's launches) has it.
"""

from __future__ import annotations

import threading

from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

_ORIGINAL = DagsterRun.get_resolved_partitions_subset_for_events
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


def install() -> None:
    """Route ``DagsterRun.get_resolved_partitions_subset_for_events`` through the per-run reuse
    (idempotent)."""
    DagsterRun.get_resolved_partitions_subset_for_events = _resolved_once


def installed() -> bool:
    """Whether :func:`install` is in effect in this process."""
    return DagsterRun.get_resolved_partitions_subset_for_events is _resolved_once
