"""How backfills group tenant-days into runs (vector_assets.partitions), and that Dagster reads a
run's range over several tenants as the rectangle the plan means."""

import datetime as dt

import dagster as dg

from vector_assets.partitions import MIN_LOCAL_RUN_WEIGHT, RUN_SHARE_SLACK, TENANTS, PlannedRun, key_string, make_key, parallel_runs, plan_tenant_runs, run_tenants, split_key, tenant_day_partitions


def days(first: str, n: int, step: int = 1) -> list[str]:
    start = dt.date.fromisoformat(first)
    return [(start + dt.timedelta(days=i * step)).isoformat() for i in range(n)]


ORDER = ["a", "b", "c", "d"]


def test_neighbouring_tenants_share_a_run_when_the_empty_days_cost_less_than_a_run():
    partitions = [("a", d) for d in days("2024-01-01", 30)] + [("b", d) for d in days("2024-01-10", 30)]
    (run,) = plan_tenant_runs(partitions, ORDER)
    assert run == PlannedRun(("a", "b"), "2024-01-01", "2024-02-08", 60, 60)
    assert run.tenant_days == 2 * 39 and run.covers("b", "2024-01-01") and not run.covers("c", "2024-01-05")
    assert run.tags() == {"dagster/asset_partition_range_start": "2024-01-01|a", "dagster/asset_partition_range_end": "2024-02-08|b"}
    assert run.label() == "a..b (2 tenants) 2024-01-01..2024-02-08"
    # The same two tenants years apart: the rectangle's empty tenant-days (2 x ~3,000 days at
    # 4 ms) cost more than the run saved (10 s): two runs.
    far = [("a", d) for d in days("2010-01-01", 3)] + [("b", d) for d in days("2018-01-01", 3)]
    assert sorted(r.tenants for r in plan_tenant_runs(far, ORDER)) == [("a",), ("b",)]


def test_a_tenant_between_is_taken_in_only_when_allowed():
    partitions = [("a", d) for d in days("2024-01-01", 5)] + [("c", d) for d in days("2024-01-01", 5)]
    # b has nothing to run: without may_include (a --tenant backfill, a vanished tenant) the
    # rectangle a..c, which holds b, is not made.
    assert sorted(r.tenants for r in plan_tenant_runs(partitions, ORDER)) == [("a",), ("c",)]
    (run,) = plan_tenant_runs(partitions, ORDER, may_include={"b"})
    assert run.tenants == ("a", "b", "c") and run.days_with_records == 10 and run.tenant_days == 15


def test_limits_tenants_with_several_runs_and_unknown_tenants():
    # a's two runs (a gap of more than MAX_GAP_DAYS) stay apart; b and c merge.
    partitions = [("a", "2020-01-01"), ("a", "2023-01-01")] + [("b", d) for d in days("2024-01-01", 3)] + [("c", d) for d in days("2024-01-02", 3)]
    runs = plan_tenant_runs(partitions + [("zz", "2024-01-01")], ORDER)
    assert sorted((r.tenants, r.first, r.last) for r in runs) == [
        (("a",), "2020-01-01", "2020-01-01"), (("a",), "2023-01-01", "2023-01-01"), (("b", "c"), "2024-01-01", "2024-01-04"), (("zz",), "2024-01-01", "2024-01-01"),
    ]
    # A weight limit (lines per run, for parallel workers) and a tenant-day limit split them.
    weights = {p: 10 for p in partitions}
    assert len(plan_tenant_runs(partitions, ORDER, weights=weights, max_weight=40)) == 4
    assert len(plan_tenant_runs(partitions, ORDER, max_per_run=7)) == 4
    # Largest first.
    runs = plan_tenant_runs(partitions, ORDER, weights=weights)
    assert [r.weight for r in runs] == sorted((r.weight for r in runs), reverse=True) and runs[0].tenants == ("b", "c")


def test_merging_leaves_no_worker_idle():
    # Four tenants of the same days: one run for one worker; with two workers (min_runs) each
    # merged run holds at most half the lines, so both workers get a run.
    partitions = [(t, d) for t in ORDER for d in days("2024-01-01", 5)]
    assert len(plan_tenant_runs(partitions, ORDER)) == 1
    runs = plan_tenant_runs(partitions, ORDER, min_runs=2)
    assert sorted(r.tenants for r in runs) == [("a", "b"), ("c", "d")] and all(r.weight == 10 for r in runs)
    # Never more runs than tenants' runs apart: four workers, four runs; eight workers, still four.
    assert len(plan_tenant_runs(partitions, ORDER, min_runs=4)) == 4
    assert len(plan_tenant_runs(partitions, ORDER, min_runs=8)) == 4


def test_two_workers_get_two_uneven_runs_rather_than_three():
    """A run may hold up to RUN_SHARE_SLACK of a worker's share when that saves a run (each run
    is a process paying its imports and model load): lines 30, 25 | 20, 25 go in two runs, not
    in the three an exact half (50 lines) needs; never in one run for two workers."""
    partitions = [(t, "2024-01-01") for t in ORDER]
    weights = dict(zip(partitions, (30, 25, 20, 25)))
    runs = plan_tenant_runs(partitions, ORDER, weights=weights, min_runs=2)
    assert sorted((r.tenants, r.weight) for r in runs) == [(("a", "b"), 55), (("c", "d"), 45)]
    assert 55 <= -(-100 * RUN_SHARE_SLACK // 2) and 55 > 100 // 2
    assert len(plan_tenant_runs(partitions, ORDER, weights={p: 10 for p in partitions}, min_runs=2)) == 2


def test_small_local_backfills_are_not_split_over_workers():
    """Runs on this machine share its cores (each one's encode uses all of them), so a backfill
    is split over its workers only where each run gets MIN_LOCAL_RUN_WEIGHT lines; on Celery
    workers (other machines) always. ``make demo``'s 1,710 lines on 2 workers: one run."""
    assert parallel_runs(1710, 2) == 1
    assert parallel_runs(2 * MIN_LOCAL_RUN_WEIGHT - 1, 2) == 1 and parallel_runs(2 * MIN_LOCAL_RUN_WEIGHT, 2) == 2
    assert parallel_runs(100 * MIN_LOCAL_RUN_WEIGHT, 4) == 4 and parallel_runs(3 * MIN_LOCAL_RUN_WEIGHT, 8) == 3
    assert parallel_runs(1710, 2, local=False) == 2 and parallel_runs(0, 0) == 1
    # What the plan then is: the four tenants of one day in one run, as for one worker.
    partitions = [(t, d) for t in ORDER for d in days("2024-01-01", 5)]
    assert len(plan_tenant_runs(partitions, ORDER, min_runs=parallel_runs(20, 2))) == 1


def test_dagster_reads_a_range_over_tenants_as_the_rectangle():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(TENANTS, ORDER)
        run = PlannedRun(("b", "c", "d"), "2024-03-01", "2024-03-04", 2)
        tags = run.tags()
        key_range = dg.PartitionKeyRange(tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"])
        keys = tenant_day_partitions.get_partition_keys_in_range(key_range, dynamic_partitions_store=instance)
        got = {(k.keys_by_dimension["tenant"], k.keys_by_dimension["day"]) for k in keys}
        assert got == {(t, d) for t in ("b", "c", "d") for d in days("2024-03-01", 4)} and len(keys) == run.tenant_days


def test_the_tenants_of_a_run_from_its_tags():
    assert run_tenants(PlannedRun(("b", "c", "d"), "2024-03-01", "2024-03-04", 2).tags(), ORDER) == ["b", "c", "d"]
    assert run_tenants({"dagster/partition": "2024-03-01|c"}, ORDER) == ["c"]
    assert run_tenants({"dagster/asset_partition_range_start": "2024-03-01|a", "dagster/asset_partition_range_end": "2024-03-02|gone"}, ORDER) == ["a", "gone"]
    assert run_tenants({}, ORDER) == [] and run_tenants({"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "b"}, ORDER) == []


def _cover(tiles, order):
    """The tenant-days a list of rectangles covers, with each one counted (to see overlaps)."""
    seen = []
    for t in tiles:
        n = (dt.date.fromisoformat(t.last_day) - dt.date.fromisoformat(t.first_day)).days + 1
        seen += [(order[p], d) for p in range(t.first_position, t.last_position + 1) for d in days(t.first_day, n)]
    return seen


def test_a_backfills_tenant_days_are_tiled_into_few_exact_rectangles():
    """The UI backfill's ranges (vector_assets.instance.planning): every targeted tenant-day
    covered once, nothing else, no rectangle over the limit, and far fewer runs than Dagster's
    one range per tenant (or per day)."""
    from vector_assets.partitions import Rectangle, tile_rectangles

    order = [f"t{i:03d}" for i in range(100)]
    # All 100 tenants x 365 days (the org-scale grid): Dagster made 100 runs; 4 here.
    grid = [(t, d) for t in order for d in days("2024-01-01", 365)]
    tiles = tile_rectangles(grid, order)
    assert len(tiles) == 4 and max(t.size for t in tiles) <= 10_000
    assert sorted(_cover(tiles, order)) == sorted(grid)
    # Two tenants over the same days: one rectangle; over different days: one each (as before).
    assert tile_rectangles([("a", d) for d in days("2024-07-01", 5)] + [("b", d) for d in days("2024-07-01", 5)], ORDER) == [Rectangle(0, 1, "2024-07-01", "2024-07-05")]
    assert len(tile_rectangles([("a", d) for d in days("2024-07-01", 12)] + [("b", d) for d in days("2024-01-01", 10)], ORDER)) == 2
    # Tenants not next to each other in the order, or a day missing: never a tenant-day more.
    holes = [("a", d) for d in days("2024-07-01", 5)] + [("c", d) for d in days("2024-07-01", 5) if d != "2024-07-03"]
    tiles = tile_rectangles(holes, ORDER)
    assert sorted(_cover(tiles, ORDER)) == sorted(holes) and len(tiles) == 3
    # Many tenants over few days: per-day blocks are kept where they are fewer.
    sparse = [(t, d) for i, t in enumerate(order) for d in days("2024-01-01", 3) if (i + int(d[-1])) % 2]
    tiles = tile_rectangles(sparse, order)
    assert sorted(_cover(tiles, order)) == sorted(sparse) and len(tiles) <= 150
    # One tenant's history longer than the limit: pieces of at most the limit.
    long = [("a", d) for d in days("2000-01-01", 25)]
    assert [t.size for t in tile_rectangles(long, ORDER, max_per_run=10)] == [10, 10, 5]
    assert tile_rectangles([("gone", "2024-01-01")], ORDER) is None and tile_rectangles([], ORDER) == []


def test_dagster_asks_the_rectangles_for_a_backfills_runs():
    """What the asset backfill daemon calls (Dagster's ``build_run_requests_with_backfill_policies``
    with our single-run policy): one run request per rectangle, whose range Dagster reads back
    as exactly the targeted tenant-days. Other partitionings keep Dagster's ranges."""
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
    from dagster._core.definitions.automation_tick_evaluation_context import build_run_requests_with_backfill_policies
    from dagster._core.definitions.events import AssetKeyPartitionKey
    from dagster._core.definitions.partitions.context import partition_loading_context

    from vector_assets.assets import tenant_day_vectors
    from vector_assets.instance import planning

    planning.install()
    graph = AssetGraph.from_assets([tenant_day_vectors])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(TENANTS, ORDER)
        targeted = [(t, d) for t in ("a", "b", "c") for d in days("2024-07-01", 10)] + [("d", d) for d in days("2024-07-03", 2)]
        wanted = {AssetKeyPartitionKey(key, f"{d}|{t}") for key in tenant_day_vectors.keys for t, d in targeted}
        with partition_loading_context(dynamic_partitions_store=instance):
            requests = build_run_requests_with_backfill_policies(wanted, graph, instance)
            ranges = sorted((r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in requests)
            assert ranges == [("2024-07-01|a", "2024-07-10|c"), ("2024-07-03|d", "2024-07-04|d")], ranges
            got = [str(k) for start, end in ranges for k in tenant_day_partitions.get_partition_keys_in_range(dg.PartitionKeyRange(start, end))]
        assert sorted(got) == sorted(f"{d}|{t}" for t, d in targeted)
    # Another two-dimensional partitioning: Dagster's own ranges (one per value of a dimension).
    other = dg.MultiPartitionsDefinition({"x": dg.StaticPartitionsDefinition(["p", "q"]), "y": dg.StaticPartitionsDefinition(["1", "2"])})
    subset = other.subset_with_partition_keys([str(k) for k in other.get_partition_keys()])
    assert len(subset.get_partition_key_ranges(other)) == len(planning._ORIGINAL_RANGES(subset, other)) == 2


def test_partition_groups_cover_the_keys_in_few_queries():
    """Stored rows are read per group of tenants (`partition_groups`): the groups cover the keys;
    tenants asking for the same days share exact groups of at most 100; tenants asking for
    different days share a group while it reads at most 4 times the keys it holds; a tenant
    asking for over 500 days gets groups of its own."""
    import random

    from vector_assets.state import partition_groups

    same = [(f"t{i:03d}", d) for i in range(250) for d in ("2024-01-01", "2024-01-02")]
    groups = partition_groups(same)
    assert sorted((len(t), len(d)) for t, d in groups) == [(50, 2), (100, 2), (100, 2)]
    assert sorted((t, d) for ts, ds in groups for t in ts for d in ds) == sorted(same)  # exact

    long = [("y", f"2024-01-01+{i:03d}") for i in range(600)]
    assert sorted((len(t), len(d)) for t, d in partition_groups(long)) == [(1, 100), (1, 500)]

    rng = random.Random(1)
    days = [f"2024-01-01+{i:03d}" for i in range(365)]
    spread = [(f"s{i:02d}", d) for i in range(30) for d in rng.sample(days, 27)]
    groups = partition_groups(spread + long + [("x", "2024-01-05")])
    covered = {(t, d) for ts, ds in groups for t in ts for d in ds}
    assert covered >= set(spread + long) | {("x", "2024-01-05")}
    for tenants, group_days in groups:
        asked = sum(1 for t, d in set(spread + long) | {("x", "2024-01-05")} if t in tenants and d in group_days)
        assert len(tenants) * len(group_days) <= 4 * max(asked, 1) and len(group_days) <= 500
    assert len(groups) < 15  # 32 tenants


def test_key_string_is_the_partition_keys_string():
    for tenant, day in [("pallets/flask", "2024-01-01"), ("SeaMonkey", "2019-12-31"), ("org/répo-ü", "2023-06-30"), ("HADOOP", "2026-11-30")]:
        key = key_string(tenant, day)
        assert key == str(make_key(tenant, day)) == make_key(tenant, day)
        assert split_key(key) == (tenant, day) == split_key(make_key(tenant, day))
