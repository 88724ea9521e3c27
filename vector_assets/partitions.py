"""Partitions: tenant (dynamic) x day (daily, UTC), and how backfills group them into runs."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import NamedTuple

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
#: about 6,500 days: one run per tenant), and in one run of a UI backfill (its rectangles:
#: :func:`tile_rectangles`).
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


def key_string(tenant: str, day: str) -> str:
    """``str(make_key(tenant, day))``: ``"day|tenant"`` (Dagster joins a multi-partition key's
    dimension keys by ``|`` in the order of the dimensions' names), made without constructing the
    key; also a corner of a range of tenant-days (``dagster/asset_partition_range_start`` and
    ``_end``). A run records eight check evaluations per tenant-day with records, each naming its
    partition; constructing a ``MultiPartitionKey`` for each was 2.5 s of a 115 s
    ``benchmarks/org_scale.py --grid 100x365 --storage postgres`` (py-spy, 2026-12-03)."""
    return f"{day}|{tenant}"


def in_window(day: str, today: str | None = None) -> bool:
    """Whether ``day`` (``YYYY-MM-DD``) is inside the daily partitions' window."""
    last = today or dt.datetime.now(dt.timezone.utc).date().isoformat()
    return settings.start_date() <= day <= last


#: A run's range of days stops at a gap longer than this. A day without records inside a range
#: is materialised (in sync, empty) at about 3.2 ms on SQLite (``benchmarks/pipeline.py
#: recording``: three materialisations written in batches); a new run costs about 1.1 s; so a
#: run bridges gaps of up to a year (365 x 3.2 ms = 1.2 s).
MAX_GAP_DAYS = 365

#: How far past an even share of the lines (total / workers) one run of a backfill with several
#: workers may go. Each run is a process that pays its imports and model load (about 8 s here)
#: while the encode of either run uses every core, so an uneven pair costs less than a third run:
#: ``make demo``'s 1,710 lines on 2 workers went in 3 runs with an even share (largest 759
#: lines; 36.7 and 34.3 s) and in 2 with this slack (1,051 and 659; 31.6 and 30.2 s), on this
#: 2-core machine, 2026-12-03.
RUN_SHARE_SLACK = 1.25

#: The fewest lines (of the landing data's mean size, :meth:`LandingIndex.line_weights`) a run
#: of a backfill is given so that several run processes share this machine's cores: below it,
#: the work goes to fewer runs than workers. A run process pays its imports and model load
#: (about 8 s of CPU here) and its encode (OpenVINO) already uses every core, so a second local
#: run only overlaps the single-threaded parts (event recording, checks) and costs a process.
#: Measured on this 2-core machine, 2026-12-03 (``vector-assets backfill --workers N`` from
#: fresh state, alternated): the bundled sample's 1,710 lines in 1 run 33.8, 35.2 s, in 2 runs 36.1,
#: 36.6, 38.5, 39.6 s; ``github_issues.jsonl`` and ``jira_issues_hadoop.jsonl`` (5,603 lines,
#: 13,948 passages) in 2 runs side by side 186.1 s, one after the other 189.7 s: a split breaks
#: even at about 2,800 lines a run. Not applied where steps run on other machines (Celery
#: workers, ``VECTOR_ASSETS_EXECUTOR=celery``): there each run has cores of its own.
MIN_LOCAL_RUN_WEIGHT = 2500


def parallel_runs(total_weight: int, workers: int, local: bool = True) -> int:
    """How many runs a backfill of ``total_weight`` lines (mean-size lines) is split into for
    ``workers`` concurrent runs: ``workers`` where the runs execute elsewhere (``local`` False),
    else at most one per :data:`MIN_LOCAL_RUN_WEIGHT` lines, at least 1. Raises nothing;
    ``workers`` below 1 counts as 1."""
    workers = max(1, workers)
    if not local:
        return workers
    return max(1, min(workers, total_weight // MIN_LOCAL_RUN_WEIGHT))


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


class Rectangle(NamedTuple):
    """Tenants ``order[first_position..last_position]`` (their positions in the tenant
    dimension's order) x days ``first_day..last_day``: one partition-key range of the tenant-day
    partitioning (Dagster reads a range between two corners as this rectangle)."""

    first_position: int
    last_position: int
    first_day: str
    last_day: str

    @property
    def days(self) -> int:
        """Days in the rectangle."""
        return (dt.date.fromisoformat(self.last_day) - dt.date.fromisoformat(self.first_day)).days + 1

    @property
    def size(self) -> int:
        """Tenant-days in the rectangle."""
        return (self.last_position - self.first_position + 1) * self.days

    def key_range(self, order: list[str]) -> dg.PartitionKeyRange:
        """The partition-key range of the rectangle (its corners, ``day|tenant``), tenants named
        by ``order``."""
        return dg.PartitionKeyRange(key_string(order[self.first_position], self.first_day), key_string(order[self.last_position], self.last_day))


def _runs_of(values: list, step) -> list[tuple]:
    """Maximal runs ``(first, last)`` of sorted ``values`` where each next value is ``step(previous)``."""
    runs: list[tuple] = []
    for value in values:
        if runs and step(runs[-1][1]) == value:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


def _next_day(day: str) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


def tile_rectangles(partitions: list[tuple[str, str]], order: list[str], max_per_run: int = MAX_PARTITIONS_PER_RUN) -> list[Rectangle] | None:
    """Rectangles that cover exactly ``partitions`` (``[(tenant, day)]``), none larger than
    ``max_per_run`` tenant-days, as few as this finds: the partition-key ranges of a UI backfill
    (:mod:`vector_assets.instance.planning`). Dagster's own ranges hold one dimension constant:
    one range per tenant, or per day when fewer days than tenants are selected, each a run of
    the single-run backfill policy: a backfill of 100 tenants x 365 days was 100 runs, each
    paying a process, imports, the model load and Great Expectations' import (about 10 s here,
    :data:`RUN_COST_S`).

    Two tilings are built and the one with fewer rectangles is kept: each tenant's maximal runs
    of consecutive days, merged across tenants next to each other in ``order`` that have the
    same run of days; and each day's maximal runs of tenants next to each other in ``order``,
    merged across consecutive days with the same run of tenants. A rectangle over
    ``max_per_run`` is cut into whole-day columns of as many tenants as fit (or, when its days
    alone are more, into pieces of ``max_per_run`` days per tenant). Nothing outside
    ``partitions`` is covered: a backfill's runs materialise what it targets, no more.

    Returns None when a tenant is not in ``order`` (the caller then keeps Dagster's ranges).
    """
    position = {t: i for i, t in enumerate(order)}
    if any(t not in position for t, _ in partitions):
        return None
    days_of: dict[int, list[str]] = defaultdict(list)
    tenants_on: dict[str, list[int]] = defaultdict(list)
    for tenant, day in set(partitions):
        days_of[position[tenant]].append(day)
        tenants_on[day].append(position[tenant])

    by_days: dict[tuple[str, str], list[int]] = defaultdict(list)
    for pos, days in days_of.items():
        for span in _runs_of(sorted(days), _next_day):
            by_days[span].append(pos)
    along_tenants = [Rectangle(a, b, first, last) for (first, last), positions in by_days.items() for a, b in _runs_of(sorted(positions), lambda p: p + 1)]

    by_tenants: dict[tuple[int, int], list[str]] = defaultdict(list)
    for day, positions in tenants_on.items():
        for span in _runs_of(sorted(positions), lambda p: p + 1):
            by_tenants[span].append(day)
    along_days = [Rectangle(a, b, first, last) for (a, b), days in by_tenants.items() for first, last in _runs_of(sorted(days), _next_day)]

    tiles = min(along_tenants, along_days, key=len)
    out: list[Rectangle] = []
    for tile in sorted(tiles):
        days = tile.days
        if tile.size <= max_per_run:
            out.append(tile)
        elif days <= max_per_run:
            width = max_per_run // days
            out += [Rectangle(p, min(p + width - 1, tile.last_position), tile.first_day, tile.last_day) for p in range(tile.first_position, tile.last_position + 1, width)]
        else:
            first = dt.date.fromisoformat(tile.first_day)
            for p in range(tile.first_position, tile.last_position + 1):
                for start in range(0, days, max_per_run):
                    end = min(start + max_per_run, days) - 1
                    out.append(Rectangle(p, p, (first + dt.timedelta(days=start)).isoformat(), (first + dt.timedelta(days=end)).isoformat()))
    return out


#: What one run of the vectors job costs before its first tenant-day, in seconds: a process,
#: imports, loading the code location, the model load and Great Expectations' import. Measured
#: with ``vector-assets backfill --workers 2`` on the bundled sample (2026-12-01): the run of
#: microsoft/vscode, 9 tenant-days and 100 records, took 11.8 s.
RUN_COST_S = 10.0

#: What a run pays for one tenant-day without records, in seconds (``benchmarks/pipeline.py
#: recording``: 3.1-4.6 ms on SQLite, 1.65 ms on Postgres; the larger figure).
EMPTY_DAY_COST_S = 0.004


def run_tenants(tags: dict[str, str], order: list[str]) -> list[str]:
    """The tenants a run of the tenant-day assets covers, from its tags: the single partition
    (``dagster/partition``, ``day|tenant``) or the rectangle between the range's corners
    (``dagster/asset_partition_range_start``/``_end``) in the tenant dimension's ``order``
    (``instance.get_dynamic_partitions(TENANTS)``); ``[]`` for a run of no tenant-day (a
    corner tenant missing from ``order``: the corners' tenants only)."""
    single = tags.get("dagster/partition", "")
    start, end = tags.get("dagster/asset_partition_range_start", ""), tags.get("dagster/asset_partition_range_end", "")
    if "|" in start and "|" in end:
        first, last = start.split("|", 1)[1], end.split("|", 1)[1]
        position = {t: i for i, t in enumerate(order)}
        if first in position and last in position:
            return list(order[position[first] : position[last] + 1])
        return sorted({first, last})
    return [single.split("|", 1)[1]] if "|" in single else []


class PlannedRun(NamedTuple):
    """One run of a plan: the rectangle of tenants ``tenants`` (consecutive in the tenant
    dimension's order; a single tenant in most plans) x days ``first``..``last`` (``YYYY-MM-DD``).
    Every tenant-day of the rectangle is materialised: those without records are recorded empty
    and in sync, unchanged ones are re-read and left as they are.

    ``days_with_records``: the planned tenant-days inside it; ``weight``: their landing lines
    (the planned tenant-days' count when no weights were given)."""

    tenants: tuple[str, ...]
    first: str
    last: str
    days_with_records: int
    weight: int = 0

    @property
    def tenant_days(self) -> int:
        """Tenant-days of the rectangle (tenants x days)."""
        return len(self.tenants) * ((dt.date.fromisoformat(self.last) - dt.date.fromisoformat(self.first)).days + 1)

    def covers(self, tenant: str, day: str) -> bool:
        """Whether the run materialises ``tenant``'s ``day``."""
        return tenant in self.tenants and self.first <= day <= self.last

    def tags(self) -> dict[str, str]:
        """The partition-range tags of the run (``day|tenant`` of two corners: Dagster reads a
        range of a two-dimensional partitioning as the rectangle between them)."""
        return {
            "dagster/asset_partition_range_start": key_string(self.tenants[0], self.first),
            "dagster/asset_partition_range_end": key_string(self.tenants[-1], self.last),
        }

    def label(self) -> str:
        """``tenant first..last``, or ``first tenant..last tenant (n tenants) first..last``."""
        who = self.tenants[0] if len(self.tenants) == 1 else f"{self.tenants[0]}..{self.tenants[-1]} ({len(self.tenants)} tenants)"
        return f"{who} {self.first}..{self.last}"


def plan_tenant_runs(
    partitions: list[tuple[str, str]],
    order: list[str],
    max_per_run: int = MAX_PARTITIONS_PER_RUN,
    weights: dict[tuple[str, str], int] | None = None,
    max_weight: int | None = None,
    may_include: set[str] | None = None,
    run_cost_s: float = RUN_COST_S,
    empty_day_cost_s: float = EMPTY_DAY_COST_S,
    min_runs: int = 1,
) -> list[PlannedRun]:
    """The runs of ``partitions`` (``[(tenant, day)]``): :func:`plan_runs` per tenant, then the
    runs of neighbouring tenants merged into one run over the rectangle they span, where that is
    cheaper. A run costs ``run_cost_s`` whatever it holds, a tenant-day without records
    ``empty_day_cost_s``: a merge is made when the empty tenant-days it adds cost less than the
    run it saves (issue #20: at 1,000 tenants one run per tenant is 1,000 processes and model
    loads).

    ``order`` is the tenant dimension's order (``instance.get_dynamic_partitions(TENANTS)``): a
    rectangle holds every tenant between its first and last. A tenant between two merged ones
    that has no run of its own is taken in only when it is in ``may_include`` (None: none), so a
    run never touches a tenant the caller left out (``--tenant``, a vanished tenant). Tenants
    with several runs (gaps, weight limits) stay in runs of their own. A merged run stays within
    ``max_per_run`` tenant-days and, with ``max_weight``, within that many lines.

    ``min_runs`` (the workers that will run the plan): a merged run holds at most
    ``ceil(total weight x RUN_SHARE_SLACK / min_runs)``, so merging never leaves a worker idle that the runs apart
    would have kept busy (one run is one process on one worker: six tenants merged into one run
    left the second Celery worker of ``tests/test_distributed.py`` without a step).

    Returns the runs, largest ``weight`` first.
    """
    weights = weights or {}
    per_tenant = plan_runs(partitions, max_per_run, weights=weights or None, max_weight=max_weight)
    weight_of: dict[tuple, int] = defaultdict(int)
    runs_of: dict[str, list] = defaultdict(list)
    for run in per_tenant:
        runs_of[run[0]].append(run)
    for tenant, day in partitions:
        for run in runs_of[tenant]:
            if run[1] <= day <= run[2]:
                weight_of[run] += weights.get((tenant, day), 1)
                break
    position = {t: i for i, t in enumerate(order)}
    merge_weight = max_weight
    if min_runs > 1:
        share = int(-(-sum(weight_of.values()) * RUN_SHARE_SLACK // min_runs))
        merge_weight = share if merge_weight is None else min(merge_weight, share)
    out: list[PlannedRun] = []
    single = sorted((r for t, rs in runs_of.items() if len(rs) == 1 and t in position for r in rs), key=lambda r: position[r[0]])
    out += [PlannedRun((r[0],), r[1], r[2], r[3], weight_of[r]) for t, rs in runs_of.items() if len(rs) > 1 or t not in position for r in rs]
    busy = {t for t, rs in runs_of.items() if len(rs) > 1}  # their own runs would overlap a rectangle
    group: list[tuple] = []

    def close():
        if group:
            tenants = tuple(order[position[group[0][0]] : position[group[-1][0]] + 1])
            out.append(PlannedRun(tenants, min(r[1] for r in group), max(r[2] for r in group), sum(r[3] for r in group), sum(weight_of[r] for r in group)))

    def span(first: str, last: str) -> int:
        return (dt.date.fromisoformat(last) - dt.date.fromisoformat(first)).days + 1

    for run in single:
        if group:
            between = order[position[group[-1][0]] + 1 : position[run[0]]]
            group_first, group_last = min(r[1] for r in group), max(r[2] for r in group)
            tenants = position[run[0]] - position[group[0][0]] + 1
            rectangle = tenants * span(min(group_first, run[1]), max(group_last, run[2]))
            # Tenant-days the merge adds against the group's rectangle and this run apart.
            added = rectangle - (position[group[-1][0]] - position[group[0][0]] + 1) * span(group_first, group_last) - span(run[1], run[2])
            fits = (
                all(t in (may_include or set()) and t not in busy for t in between)
                and rectangle <= max_per_run
                and (merge_weight is None or sum(weight_of[r] for r in group) + weight_of[run] <= merge_weight)
            )
            if fits and added * empty_day_cost_s < run_cost_s:
                group.append(run)
                continue
            close()
        group = [run]
    close()
    return sorted(out, key=lambda r: -r.weight)
