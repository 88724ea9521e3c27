"""Partitions: tenant (dynamic) x day (daily, UTC), and how backfills group them into runs."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import dagster as dg

from . import settings

#: Name of the dynamic tenant dimension (``instance.add_dynamic_partitions(TENANTS, [...])``).
TENANTS = "tenants"

tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANTS)

#: Daily UTC partitions from ``$VECTOR_ASSETS_START_DATE`` (default 2009-01-01) to today;
#: ``end_offset=1`` makes the current (incomplete) day a partition too, since records of today
#: are searchable as soon as they land.
day_partitions = dg.DailyPartitionsDefinition(start_date=settings.start_date(), timezone="UTC", end_offset=1)

tenant_day_partitions = dg.MultiPartitionsDefinition({"tenant": tenant_partitions, "day": day_partitions})

#: At most this many days in one run of ``vector-assets backfill`` (the whole default window is
#: about 6,500 days: one run per tenant). A UI backfill makes one run per tenant over the
#: requested range (``BackfillPolicy.single_run``).
MAX_PARTITIONS_PER_RUN = 10_000


def split_key(key: dg.MultiPartitionKey | str) -> tuple[str, str]:
    """``(tenant, day)`` of a tenant-day partition key.

    Accepts a :class:`MultiPartitionKey` or its string form ``day|tenant`` (dimensions are
    ordered by name in the string form).
    """
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims["tenant"], dims["day"]
    day, tenant = str(key).split("|", 1)
    return tenant, day


def make_key(tenant: str, day: str) -> dg.MultiPartitionKey:
    """The partition key of one tenant-day."""
    return dg.MultiPartitionKey({"tenant": tenant, "day": day})


def in_window(day: str, today: str | None = None) -> bool:
    """Whether ``day`` (``YYYY-MM-DD``) is inside the daily partitions' window."""
    last = today or dt.datetime.now(dt.timezone.utc).date().isoformat()
    return settings.start_date() <= day <= last


#: A run's range of days stops at a gap longer than this. A day without records inside a range
#: is materialised (in sync, empty) at about 3.2 ms on SQLite (``benchmarks/pipeline.py
#: recording``: three materialisations written in batches); a new run costs about 1.1 s; so a
#: run bridges gaps of up to a year (365 x 3.2 ms = 1.2 s).
MAX_GAP_DAYS = 365


def plan_runs(partitions: list[tuple[str, str]], max_per_run: int, max_gap_days: int = MAX_GAP_DAYS, weights: dict[tuple[str, str], int] | None = None, max_weight: int | None = None) -> list[tuple[str, str, str, int]]:
    """Group tenant-days into runs: one tenant per run, its range from the first to the last of
    its tenant-days, at most ``max_per_run`` days long, and a new run after a gap of more than
    ``max_gap_days`` days. Every day of a run's range is materialised (days between the given
    ones are re-read and found unchanged or empty). With ``weights`` (lines per tenant-day) and
    ``max_weight``, a run also ends before its lines exceed ``max_weight``: so that parallel
    workers get runs of similar size (a tenant's whole history in one run left one worker
    encoding alone).

    Returns ``[(tenant, first_day, last_day, days_with_records)]``.
    """
    days_by_tenant: dict[str, list[str]] = defaultdict(list)
    for tenant, day in sorted(partitions):
        days_by_tenant[tenant].append(day)
    runs = []
    for tenant, days in days_by_tenant.items():
        chunk: list[str] = []
        weight = 0
        for day in days:
            w = (weights or {}).get((tenant, day), 1)
            if chunk:
                gap = (dt.date.fromisoformat(day) - dt.date.fromisoformat(chunk[-1])).days
                span = (dt.date.fromisoformat(day) - dt.date.fromisoformat(chunk[0])).days + 1
                heavy = max_weight is not None and weight + w > max_weight
                if len(chunk) >= max_per_run or gap > max_gap_days or span > max_per_run or heavy:
                    runs.append((tenant, chunk[0], chunk[-1], len(chunk)))
                    chunk, weight = [], 0
            chunk.append(day)
            weight += w
        if chunk:
            runs.append((tenant, chunk[0], chunk[-1], len(chunk)))
    return runs
