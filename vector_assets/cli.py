"""The ``vector-assets`` command line: backfill tenant-days through Dagster, and search.

Configured by ``DAGSTER_HOME``, ``VECTOR_ASSETS_LANDING_DIR`` (default: the bundled sample)
and ``VECTOR_ASSETS_MILVUS_URI`` (default: the embedded database); see
:mod:`vector_assets.settings`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from collections import defaultdict

from . import settings
from .partitions import RUN_SHARE_SLACK, PlannedRun, parallel_runs, plan_tenant_runs


def _date(value: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def root_cause(error) -> str:
    """The first line of the outermost error of a Dagster :class:`SerializableErrorInfo`'s
    chain that is not Dagster's own (``DagsterExecutionStepExecutionError`` and retry wrappers
    say nothing about what failed; ours name the file and the recovery), as ``<type>:
    <message>``, at most 300 characters (issue #17 item 12)."""
    chain = [error]
    while getattr(chain[-1], "cause", None) is not None:
        chain.append(chain[-1].cause)
    error = next((e for e in chain if not (e.cls_name or "").startswith("Dagster")), chain[-1])
    lines = (error.message or "").strip().splitlines()
    text = lines[0] if lines else error.cls_name or "unknown error"
    if error.cls_name and not text.startswith(error.cls_name) and ":" not in text[:40]:
        text = f"{error.cls_name}: {text}"
    return text[:300]


#: Seconds the runs in progress get to stop after SIGINT/SIGTERM (they are cancelled through
#: the instance) before the command gives up waiting for them.
STOP_GRACE_S = 30.0


class _Stop:
    """Set by SIGINT/SIGTERM in the command: no further run is submitted."""

    signal: str | None = None


def _run_tags(run: PlannedRun, backfill_id: str) -> dict[str, str]:
    """The tags of one run of a CLI backfill: the tenant-day range (as a UI backfill's runs
    carry it; several tenants' rectangle for a merged run), the backfill it belongs to and the
    process that follows it."""
    import socket

    from .instance import launch

    return {
        **run.tags(),
        "vector_assets/launched_by": "cli-backfill",
        "vector_assets/cli_backfill": backfill_id,
        launch.CLI_PID_TAG: str(os.getpid()),
        launch.CLI_HOST_TAG: socket.gethostname(),
    }


def _launch_runs(plan: list, workers: int, delete_vanished: bool, instance, workspace, on_wait=lambda seconds: None):
    """Submit the planned runs through the Dagster instance (its run coordinator and run
    launcher, :mod:`vector_assets.instance.launch`) with at most ``workers`` of them unfinished at a time,
    and yield each one's outcome as it finishes: ``(spec, success, run id, summed metadata,
    seconds, check errors, failure message)``.

    A daemon dequeues them; where none runs, this command runs the daemon's queue step
    (:class:`vector_assets.instance.launch.RunDequeuer`). After
    SIGINT or SIGTERM (:class:`_Stop`) no run is submitted any more and the runs submitted and
    not finished are cancelled through the run coordinator (queued ones never start, started
    ones are terminated by the launcher); their outcomes are still yielded. ``on_wait(seconds)``
    is called each minute in which no run finished. ``workspace``: the
    :class:`vector_assets.instance.launch.EarlyWorkspace` whose code server the runs use.

    A run whose process dies (killed, out of memory; :attr:`vector_assets.instance.launch.RunOutcome.process_died`) is failed (by
    Dagster, or by :func:`vector_assets.instance.runs.fail_dead_runs`), its pool slot freed, and it is
    submitted again, once; a second death is yielded as a failure.
    """
    import uuid

    import dagster as dg

    from .instance import launch
    from .instance import runs as run_state

    backfill_id = uuid.uuid4().hex[:8]
    run_config = {
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        "ops": {"tenant_day_vectors": {"config": {"delete_vanished_tenants": delete_vanished}}},
    }
    pending = list(plan)
    active: dict[str, tuple] = {}
    attempts: dict[tuple, int] = {}
    cancelled = None
    with launch.dequeuing(instance, workspace, say=lambda m: print(m, flush=True)) as (context, dequeuer):
        last_progress = last_check = time.monotonic()
        while pending or active:
            if time.monotonic() - last_check >= 5:
                last_check = time.monotonic()
                run_state.fail_dead_runs(instance)
                run_state.free_slots_of_finished_runs(instance)
            if _Stop.signal and cancelled is None:
                cancelled = time.monotonic()
                pending = []
                for run_id in list(active):
                    try:
                        instance.run_coordinator.cancel_run(run_id)
                    except Exception as err:  # noqa: BLE001 - a run whose code server is gone: said, not fatal
                        print(f"could not cancel run {run_id}: {err}", file=sys.stderr, flush=True)
            while pending and len(active) < workers and not _Stop.signal:
                spec = pending.pop(0)
                run = launch.create_run(instance, context, run_config, _run_tags(spec, backfill_id))
                instance.submit_run(run.run_id, context)
                active[run.run_id] = spec
                attempts[spec] = attempts.get(spec, 0) + 1
            dequeuer.step()
            finished = [r for r in instance.get_runs(dg.RunsFilter(run_ids=list(active))) if r.is_finished] if active else []
            for run in finished:
                spec = active.pop(run.run_id)
                result = launch.outcome(instance, run, root_cause)
                last_progress = time.monotonic()
                if result.process_died and attempts[spec] < 2 and not _Stop.signal:
                    print(f"the process of run {run.run_id} ({spec.label()}) died ({result.message[:160]}): submitted again", file=sys.stderr, flush=True)
                    pending.insert(0, spec)
                    continue
                yield spec, run.status == dg.DagsterRunStatus.SUCCESS, run.run_id, result.sums, result.seconds, result.check_errors, result.message or f"run {run.status.value.lower()}"
            if cancelled is not None and active and time.monotonic() - cancelled > STOP_GRACE_S:
                for run_id, spec in active.items():
                    yield spec, False, run_id, {}, 0.0, [], f"still running {STOP_GRACE_S:.0f}s after it was cancelled"
                active = {}
            if time.monotonic() - last_progress >= 60:
                on_wait(time.monotonic() - last_progress)
                last_progress = time.monotonic()
            if not finished:
                time.sleep(0.5)


def _milvus():
    """The store resource of the CLI: Milvus (URI and token from the environment), or pgvector
    when ``VECTOR_ASSETS_STORE_URL`` names PostgreSQL (:func:`vector_assets.resources.store_resource`)."""
    from .resources import MilvusResource, PgvectorResource
    from .store.base import is_postgres_url

    if is_postgres_url(settings.store_url()):
        return PgvectorResource(url=settings.store_url())
    return MilvusResource(uri=settings.milvus_uri(), token=os.environ.get("VECTOR_ASSETS_MILVUS_TOKEN", ""))


def cmd_backfill(args: argparse.Namespace) -> int:
    from .instance import launch

    started = time.perf_counter()
    instance = settings.dagster_instance()
    print(f"landing: {settings.landing_dir()}  milvus: {settings.milvus_uri()}  DAGSTER_HOME: {instance.root_directory}", flush=True)
    workspace = launch.EarlyWorkspace(instance)
    try:
        return _backfill(args, instance, workspace, started)
    finally:
        workspace.close()


def _backfill(args: argparse.Namespace, instance, workspace, started: float) -> int:
    """``vector-assets backfill`` once the instance is open; ``workspace``: the
    :class:`vector_assets.instance.launch.EarlyWorkspace` the runs use, started here once the
    landing index says lines changed; ``started``: the command's ``time.perf_counter()`` at its
    start."""
    import signal

    from .definitions import defs
    from .instance import launch
    from .instance import runs as run_state
    from .keys import MILVUS_VECTORS
    from .partitions import MAX_PARTITIONS_PER_RUN, TENANTS, in_window, key_string

    orphaned = launch.cancel_orphaned_runs(instance)
    if orphaned:
        print(f"cancelled {len(orphaned)} queued runs whose backfill command is gone: {', '.join(orphaned)}", flush=True)
    dead = run_state.fail_dead_runs(instance)
    if dead:
        print(f"marked {len(dead)} runs failed whose process is gone (their pool slots are free again): {', '.join(dead)}", flush=True)
    freed = run_state.free_slots_of_finished_runs(instance)
    if freed:
        print(f"freed the pool slots of {len(freed)} finished runs: {', '.join(freed)}", flush=True)
    index_result = defs.resolve_job_def("landing_index_job").execute_in_process(
        # Its failure is said below in one line (the traceback stays in the run's logs).
        instance=instance, raise_on_error=False, run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
    )
    if not index_result.success:
        failure = next((e.step_failure_data.error for e in index_result.all_events if e.is_step_failure), None)
        print(f"error: indexing the landing directory failed: {root_cause(failure) if failure else 'see the run in the Dagster UI'}", file=sys.stderr)
        return 1
    meta = index_result.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    if args.all or int(meta["tenant_days_changed"].value):
        workspace.start()  # runs are likely: the code server comes up while they are planned
    unattributed = int(meta["unattributed_lines"].value)
    print(
        f"indexed {meta['lines_indexed'].value} lines in {meta['files'].value} files: {meta['tenants'].value} tenants, "
        f"{meta['tenant_days'].value} tenant-days, {unattributed} lines fit no tenant-day"
        + (f" (see `{meta['quarantine_report'].value}`)" if unattributed else ""),
        flush=True,
    )
    if int(meta["unsupported_files"].value):
        print(f"warning: {meta['unsupported_files'].value} compressed files are not read (decompress them into the landing directory): {meta['unsupported'].value}", flush=True)
    landing = defs.resources["landing"]
    index = landing.index()
    known = set(instance.get_dynamic_partitions(TENANTS))
    unknown = [t for t in args.tenant or [] if t not in known]
    if unknown:
        print(f"error: unknown tenant(s) {', '.join(unknown)}; tenants in the landing data: {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    partitions = index.partitions(args.tenant, args.start, args.end)
    outside = [p for p in partitions if not in_window(p[1])]
    if outside:
        first = index.lines_outside(settings.start_date(), dt.datetime.now(dt.timezone.utc).date().isoformat())[:1]
        where = f"; first line: {first[0][0]}:{first[0][1]} ({first[0][2]}|{first[0][3]})" if first else ""
        print(f"warning: {len(outside)} tenant-days fall outside the partition window (start {settings.start_date()}) and are not materialised{where}", flush=True)
    partitions = [p for p in partitions if in_window(p[1])]
    model_id = defs.resources["embedding_model"].model_id
    milvus = _milvus()
    store = milvus.store_key(model_id)
    from .store import milvus_store

    vectors = milvus.get_store()
    collection = milvus.collection_for(model_id)
    try:
        was = vectors.bind_source(collection, index.source, rebind=args.rebind_landing) if store else None
    except milvus_store.SourceMismatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if was:
        print(f"collection {collection} re-bound from landing directory {was} to {index.source}", flush=True)
    # Reconcile the store against the landing data (issue #17 item 2): every tenant-day the
    # collection holds rows of is materialised too, so rows of days, or whole tenants, that
    # the landing data lacks are found even when the index never saw their lines (an index
    # lost or rebuilt). With --all, or when the index knows nothing of this collection.
    orphans: set[tuple[str, str]] = set()
    if store and (args.all or not index.synced_partitions(store)):
        every = vectors.stored_partitions(collection, args.tenant, args.start, args.end)
        if not (args.tenant or args.start or args.end) and not index.claimed(store):
            # The whole collection was read: its tenant-days are marked written and the
            # collection claimed, so that later runs read the store only for marked tenant-days
            # (a collection written before the marks, or whose state database was lost). A row
            # written meanwhile by another run was marked by that run before it was written.
            index.mark_written(store, every, claim=True)
        held = {p for p in every if in_window(p[1])}
        orphans = held - set(partitions)
        if orphans:
            print(f"reconciling: the collection holds rows of {len(orphans)} tenant-days that the landing index lists no lines of; they are materialised against the landing data", flush=True)
            missing = sorted({t for t, _ in orphans} - known)
            if missing:
                instance.add_dynamic_partitions(TENANTS, missing)
            partitions = sorted(set(partitions) | orphans)
    # Incremental: a tenant-day is not run when its rows in this very collection (URI and
    # collection identity) were written from its current lines and Dagster recorded that
    # materialisation (--all runs every one; the audit job and the coverage check catch rows
    # lost behind the pipeline's back).
    unchanged_rows = 0
    if not args.all:
        todo = set(index.unsynced_partitions(store, args.start, args.end)) | orphans
        fingerprints = index.fingerprints([p for p in partitions if p not in todo])
        materialised = instance.get_materialized_partitions(MILVUS_VECTORS) if fingerprints else set()
        unchanged = [p for p in partitions if p not in todo and (not fingerprints[p] or key_string(*p) in materialised)]
        unchanged_rows = index.synced_rows(store, unchanged)
        partitions_to_run = [p for p in partitions if p not in set(unchanged)]
    else:
        unchanged = []
        partitions_to_run = partitions
    refused = []
    vanished = index.vanished_among(t for t, _ in partitions_to_run)
    if vanished and not args.delete_vanished_tenants:
        for tenant in sorted(vanished):
            days = [p for p in partitions_to_run if p[0] == tenant]
            rows = vectors.count_rows(collection, tenant, records=True) if store else 0
            print(
                f"refusing: tenant {tenant} has no line in the landing data any more (its files were removed, or the landing "
                f"directory is empty or not mounted); its {len(days)} tenant-days ({rows} records) are kept, not deleted. "
                "Delete them with --delete-vanished-tenants.",
                file=sys.stderr, flush=True,
            )
            refused += days
        partitions_to_run = [p for p in partitions_to_run if p[0] not in vanished]
    # Runs of similar size when several workers share them: at most a worker's share of the
    # landing data's bytes in one run (LandingIndex.line_weights: the encode follows tokens,
    # which follow bytes more closely than lines), or RUN_SHARE_SLACK times it where that
    # saves a run (one tenant's whole history in one run left the other worker idle while it
    # encoded alone on half the threads). Not smaller: each run is a process of its own
    # (imports, a model load: about 13 s a run here): the bundled sample took 176.6 s in 12
    # runs, 136.2 s in 7 (README, "Scaling out"). Nor split over more runs than the work pays
    # for where the runs share this machine's cores (partitions.MIN_LOCAL_RUN_WEIGHT: the
    # bundled sample on 2 workers goes in one run).
    weights = index.line_weights()
    max_weight = None
    total = sum(weights.get(p, 1) for p in partitions_to_run)
    split = parallel_runs(total, args.workers, local=settings.executor() != "celery")
    if split > 1:
        max_weight = max(200, int(-(-total * RUN_SHARE_SLACK // split)))
    # Neighbouring tenants share a run where the empty tenant-days that adds cost less than the
    # run it saves (partitions.plan_tenant_runs). Tenants between them that have nothing to run
    # are taken in only when the whole landing data is backfilled (no --tenant) and never a
    # vanished tenant (its rows are refused, not deleted).
    may_include = set() if args.tenant else known - set(vanished)
    plan = plan_tenant_runs(
        partitions_to_run, instance.get_dynamic_partitions(TENANTS), args.max_partitions_per_run or MAX_PARTITIONS_PER_RUN,
        weights=weights, max_weight=max_weight, may_include=may_include, min_runs=split,
    )
    # Unchanged tenant-days inside a run's range (runs bridge gaps) are re-read by that run and
    # counted in its own figures; only the others are counted here (issue #17 item 13: skipped
    # said 411 for 300 records).
    not_rerun = [p for p in unchanged if not any(run.covers(*p) for run in plan)]
    unchanged_rows = index.synced_rows(store, not_rerun) if unchanged else 0
    print(
        f"{len(partitions)} tenant-days: {len(unchanged)} unchanged since written for {model_id} ({unchanged_rows} records, not re-run), "
        f"{len(partitions_to_run)} to materialise in {len(plan)} runs",
        flush=True,
    )
    totals: dict[str, float] = defaultdict(float)
    failed = 0
    check_errors: list[tuple[str, str]] = []
    finished = 0

    def stop(signum, frame):
        _Stop.signal = signal.Signals(signum).name
        print(f"{_Stop.signal}: stopping; runs in progress are interrupted, no further run starts", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def waiting(seconds: float) -> None:
        holders = run_state.pool_holders(instance)
        held = ", ".join(f"{run_id} ({status})" for run_id, status in holders) or "none"
        print(f"waiting: no run finished for {seconds:.0f}s; pool {run_state.POOL} slots held by runs: {held}", flush=True)

    # Every slot of the pool held (by another backfill's runs): wait here, a sleep that a signal
    # ends at once, rather than in run processes (issue #17 item 6: they ignored SIGTERM/SIGINT
    # and spun).
    waited = time.monotonic()
    try:
        while plan and not _Stop.signal and run_state.free_pool_slots(instance) == 0:
            if time.monotonic() - waited >= 60:
                waiting(time.monotonic() - waited)
                waited = time.monotonic()
            run_state.fail_dead_runs(instance)
            run_state.free_slots_of_finished_runs(instance)
            time.sleep(1.0)
        workers = max(1, min(args.workers, len(plan)))
        for spec, ok, run_id, sums, seconds, errors, message in (_launch_runs(plan, workers, args.delete_vanished_tenants, instance, workspace, waiting) if plan else ()):
            finished += 1
            for name, value in sums.items():
                totals[name] += value
            check_errors += errors
            if not ok:
                failed += spec.days_with_records
                print(f"[{finished}/{len(plan)}] {spec.label()}: FAILED (run {run_id or 'none'}): {message or 'see the run in the Dagster UI'}", flush=True)
                continue
            print(
                f"[{finished}/{len(plan)}] {spec.label()}: {int(sums.get('milvus_vectors.partitions', 0))} tenant-days materialised, "
                f"{int(sums.get('source_records.records_read', 0))} records, {int(sums.get('milvus_vectors.embedded', 0))} embedded, "
                f"{int(sums.get('milvus_vectors.skipped_unchanged', 0))} unchanged, {int(sums.get('milvus_vectors.deleted', 0))} deleted, "
                f"{int(sums.get('source_records.quarantined', 0))} quarantined, {seconds:.1f}s",
                flush=True,
            )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    wall = time.perf_counter() - started
    # Lines that fit no tenant-day belong to no tenant: counted only when no --tenant narrows the backfill.
    unplaced = 0 if args.tenant else unattributed
    quarantined = int(totals["source_records.quarantined"]) + unplaced
    written = int(totals["milvus_vectors.embedded"] + totals["milvus_vectors.moved_in"])
    print(
        f"backfill: partitions={len(partitions)} unchanged_partitions={len(unchanged)} runs={len(plan)} "
        f"materialised_partitions={int(totals['milvus_vectors.partitions'])} records_read={int(totals['source_records.records_read']) + unplaced} "
        f"rows_written={written} embedded={int(totals['milvus_vectors.embedded'])} passages_embedded={int(totals.get('milvus_vectors.passages_embedded', 0))} tokens_embedded={int(totals.get('milvus_vectors.tokens_embedded', 0))} embedding_cost_usd={totals.get('milvus_vectors.embedding_cost_usd', 0.0):.6f} skipped={int(totals['milvus_vectors.skipped_unchanged']) + unchanged_rows} "
        f"deleted={int(totals['milvus_vectors.deleted'])} quarantined={quarantined} superseded={int(totals['source_records.superseded'])} failed_partitions={failed} "
        f"refused_partitions={len(refused)} check_errors={len(check_errors)} "
        f"encode_s={totals['milvus_vectors.encode_seconds_est']:.1f} wall_s={wall:.1f}",
        flush=True,
    )
    if check_errors:
        by_check: dict[str, list[str]] = defaultdict(list)
        for name, partition in check_errors:
            by_check[name].append(partition)
        for name, keys in sorted(by_check.items()):
            print(f"check ERROR: {name} on {len(keys)} tenant-days: {', '.join(sorted(keys)[:10])}{' ...' if len(keys) > 10 else ''}", file=sys.stderr)
    if _Stop.signal:
        print(f"stopped by {_Stop.signal} after {finished} of {len(plan)} runs", file=sys.stderr, flush=True)
        return 130 if _Stop.signal == "SIGINT" else 143
    return 1 if failed or refused or check_errors else 0


def _search_setup():
    """Client, collection and model that search uses: the collection the search alias names
    (with the model it belongs to), else the configured model's collection."""
    from .serving.search import search_target

    store = (resource := _milvus()).get_store(create=False)
    collection, model = search_target(store, resource.search_alias)
    return store, collection, model


def cmd_tune(args: argparse.Namespace) -> int:
    """Tune the served collection's vector index on every tenant's golden queries with optuna
    (:mod:`vector_assets.serving.tuning`): print the trials, the fastest setting at the recall
    target and the live collection's tuned ``ef``, recorded where search reads it unless
    ``--dry-run``. Exit 1 when nothing reached the target, 2 when there is nothing to tune."""
    import dagster as dg

    from .assets.search_quality import tune_served
    from .definitions import defs
    from .serving import tuning

    try:
        result, recorded = tune_served(defs.resources["landing"], _milvus(), defs.resources["embedding_model"], trials=args.trials, record=not args.dry_run, collection=args.collection)
    except (dg.Failure, ValueError, FileNotFoundError) as err:
        print(f"error: {getattr(err, 'description', None) or err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**result.as_dict(), "recorded": recorded}))
    else:
        print(tuning.report(result, bool(recorded)))
    return 0 if result.live.feasible else 1


def cmd_eval(args: argparse.Namespace) -> int:
    """Golden-query figures of every tenant (or ``--tenant``) on the collection search serves (or
    ``--collection``), and with ``--against`` on a second collection beside them: recall@10 and
    MRR@10 per mode and the change. Exit 1 when the second collection loses the cut-over
    tolerance or more for some tenant, 2 on a usage error."""
    from . import state
    from .definitions import defs
    from .resources import embedding_resource
    from .serving import retrieval

    try:
        client, served, model = _search_setup()
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    first = args.collection or served
    names = [first] + ([args.against] if args.against else [])
    for name in names:
        if not client.has_collection(name):
            print(f"error: no collection {name}", file=sys.stderr)
            return 2
    embedders = [model if client.collection_model(n) == model.model_id else embedding_resource(client.collection_model(n)) for n in names]
    landing = defs.resources["landing"]
    index = landing.index()
    tenants = args.tenant or index.tenants()
    engine = state.engine(landing.database_url())
    tolerance = retrieval.cut_over_tolerance()
    if args.against:
        comparisons = retrieval.compare(engine, index, client, names[0], names[1], embedders[0], embedders[1], tenants)
    else:
        client.prepare(first)
        comparisons = []
        for tenant in tenants:
            _, queries, _ = retrieval.golden_set(engine, index, tenant)
            queries, _ = retrieval.answerable(client, first, tenant, queries)
            figures = retrieval.evaluate(client, first, embedders[0], tenant, queries)
            if figures:
                comparisons.append(retrieval.Comparison(tenant, len(queries), {m: (f, f) for m, f in figures.items()}))
    if args.json:
        print(json.dumps([{"tenant": c.tenant, "queries": c.queries, "modes": {m: {"recall_at_10": [a.recall, b.recall], "mrr_at_10": [a.mrr, b.mrr]} for m, (a, b) in c.modes.items()}} for c in comparisons]))
    else:
        print(f"golden queries of {len(comparisons)} tenants on {first}" + (f" (a) and {args.against} (b)" if args.against else ""))
        head = "| tenant | queries | mode | recall@10 | MRR@10 |" if not args.against else "| tenant | queries | mode | recall@10 a | b | MRR@10 a | b |"
        print(head)
        print("|---|---:|---|" + ("---:|---:|" if not args.against else "---:|---:|---:|---:|"))
        for c in comparisons:
            for mode, (a, b) in c.modes.items():
                row = f"| {c.tenant} | {c.queries} | {mode} | {a.recall:.3f} | {a.mrr:.3f} |" if not args.against else f"| {c.tenant} | {c.queries} | {mode} | {a.recall:.3f} | {b.recall:.3f} | {a.mrr:.3f} | {b.mrr:.3f} |"
                print(row)
    losses = [loss for c in comparisons for loss in c.losses(tolerance)] if args.against else []
    for loss in losses:
        print(f"loses (tolerance {tolerance:.2f}): {loss}", file=sys.stderr)
    return 1 if losses else 0


def cmd_search(args: argparse.Namespace) -> int:
    from .serving.search import SearchError, search

    if args.queries is None and (not args.query or not args.query.strip()):
        print("error: empty query", file=sys.stderr)
        return 2
    if args.queries is None and not args.tenant:
        print("error: --tenant is required with a query", file=sys.stderr)
        return 2
    try:
        client, collection, model = _search_setup()
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.queries is None:
        try:
            hits = search(client, collection, model, args.tenant, [args.query], k=args.k, kinds=args.kind, mode=args.mode, fusion=args.fusion)[0]
        except SearchError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps({"query": args.query, "tenant": args.tenant, "hits": [h.as_dict() for h in hits]}))
        else:
            for rank, hit in enumerate(hits, start=1):
                where = f"  [passage {hit.passage}]" if hit.passage else ""
                print(f"{rank:>2}. {hit.score:.3f}  {hit.id}  {hit.day}  {hit.kind}{where}  {hit.preview[:100]}")
        return 0
    return _search_file(args, client, collection, model)


def _search_file(args, client, collection, model) -> int:
    from .serving.search import SearchError, search

    queries_by_tenant: dict[str, list[dict]] = defaultdict(list)
    errors = 0
    try:
        fh = open(args.queries, encoding="utf-8")
    except OSError as err:
        print(f"error: {args.queries}: {err.strerror}", file=sys.stderr)
        return 2
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                queries_by_tenant[item["tenant"]].append(item)
                item["id"], item["text"]
            except (ValueError, KeyError, TypeError) as err:
                print(f"error: {args.queries}:{number}: not a query line {{id, tenant, text}} ({err})", file=sys.stderr)
                errors += 1
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for tenant, items in queries_by_tenant.items():
            for i in range(0, len(items), 256):
                batch = items[i : i + 256]
                try:
                    hits = search(client, collection, model, tenant, [q["text"] for q in batch], k=args.k, check_tenant=(i == 0), kinds=args.kind, mode=args.mode, fusion=args.fusion)
                except SearchError as err:
                    print(f"error: tenant {tenant}: {err}", file=sys.stderr)
                    errors += len(batch)
                    break
                for item, found in zip(batch, hits):
                    out.write(json.dumps({"id": item["id"], "hits": [h.as_dict() for h in found]}) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 1 if errors else 0


def cmd_server(args: argparse.Namespace) -> int:
    from .store import milvus_store, pgvector_store

    url = settings.store_url()
    if url.startswith("pgserver:"):
        # The bundled PostgreSQL of VECTOR_ASSETS_STORE_URL=pgserver:PATH.
        path = pgvector_store.local_path(url)
        if args.action == "stop":
            print("stopped" if pgvector_store.stop_local_server(url) else "no server was running")
        elif args.action == "start":
            print(pgvector_store.connection_url(url))
        else:
            print(f"running (PostgreSQL on {path})" if (path / "postmaster.pid").exists() else "not running")
        return 0
    uri = settings.milvus_uri()
    if not milvus_store.is_local_uri(uri):
        print(f"error: {uri} is a server URI; nothing local to {args.action}", file=sys.stderr)
        return 2
    if args.action == "stop":
        print("stopped" if milvus_store.stop_local_server(uri) else "no server was running")
    elif args.action == "start":
        print(milvus_store.ensure_local_server(uri))
    else:
        print(milvus_store.running_local_server(uri) or "not running")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving import service
    from .serving.api_keys import keys_path

    if not milvus_exists():
        print(f"error: no Milvus Lite database at {settings.milvus_uri()}; run `vector-assets backfill` first", file=sys.stderr)
        return 2
    print(f"serving on http://{args.host}:{args.port} (keys: {keys_path()})", flush=True)
    service.serve(args.host, args.port, log_level=args.log_level)
    return 0


def milvus_exists() -> bool:
    """Whether the configured store is a PostgreSQL store, a Milvus server URI or an existing
    Milvus Lite database."""
    from pathlib import Path

    from .store import milvus_store
    from .store.base import is_postgres_url

    if is_postgres_url(settings.store_url()):
        return True
    uri = settings.milvus_uri()
    return not milvus_store.is_local_uri(uri) or Path(uri).exists()


def cmd_keys(args: argparse.Namespace) -> int:
    from .serving.api_keys import ApiKeyError, KeyStore

    store = KeyStore()
    try:
        if args.action == "add":
            if bool(args.tenant) == args.all_tenants:
                print("error: give --tenant T (repeatable) or --all-tenants", file=sys.stderr)
                return 2
            key, entry = store.add(args.tenant or [], name=args.name or "", all_tenants=args.all_tenants)
            grant = "all tenants" if entry.all_tenants else "tenants " + ", ".join(repr(t) for t in entry.tenants)
            print(f"added key {entry.id} for {grant} in {store.path}; it is shown once, here:")
            print(key)
        elif args.action == "list":
            keys = sorted(store.keys().values(), key=lambda k: k.created)
            if args.json:
                print(json.dumps([{k: v for k, v in vars(e).items() if k != "sha256"} for e in keys], indent=1))
            for entry in [] if args.json else keys:
                grant = "all tenants" if entry.all_tenants else "tenants " + ",".join(entry.tenants)
                print(f"{entry.id}  {'revoked ' + entry.revoked if entry.revoked else 'valid'}  created {entry.created}  {grant}  {entry.name}")
            if not keys and not args.json:
                print(f"no keys in {store.path}")
        else:
            if not args.id:
                print("error: keys revoke needs the key's id (keys list)", file=sys.stderr)
                return 2
            entry = store.revoke(args.id)
            print(f"revoked {entry.id} ({entry.revoked})")
    except ApiKeyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_checks(args: argparse.Namespace) -> int:
    """Print, per check, how many tenant-days currently pass, fail at WARN, fail at ERROR or are
    not evaluated (Dagster's per-tenant-day check status, what the UI shows), then the failures
    (at most ``--limit``) with their reason. Exit 1 when any tenant-day currently fails at
    ERROR, else 0."""
    from .checks.outcomes import iso, latest_outcomes
    from .checks.specs import CHECKS

    counts = {name: {"passed": 0, "WARN": 0, "ERROR": 0, "not evaluated": 0} for name in CHECKS}
    failures = []
    for o in latest_outcomes(settings.dagster_instance(), tenants=args.tenant or None):
        counts[o.check][o.status] += 1
        if o.failed:
            failures.append(o)
    print(f"{'check':<20} {'tenant-days':>11} {'passed':>7} {'WARN':>5} {'ERROR':>6} {'not evaluated':>14}")
    for name, c in counts.items():
        print(f"{name:<20} {sum(c.values()):>11} {c['passed']:>7} {c['WARN']:>5} {c['ERROR']:>6} {c['not evaluated']:>14}")
    failures.sort(key=lambda o: (o.status != "ERROR", o.check, o.tenant, o.day))
    for o in failures[: args.limit]:
        reason = o.description or ", ".join(f"{k}={v}" for k, v in list(o.figures.items())[:4])
        print(f"{o.status:<5} {o.check} {o.day}|{o.tenant} (run {o.run_id[:8]}, {iso(o.timestamp)}): {reason}")
    if len(failures) > args.limit:
        print(f"... and {len(failures) - args.limit} more failures")
    return 1 if any(c["ERROR"] for c in counts.values()) else 0


#: Figures of a tenant-day, by asset, in the order ``status`` prints them.
STATUS_FIGURES = {
    "source_records": ("records_read", "superseded", "quarantined"),
    "extracted_text": ("texts", "passages", "records_split", "passages_cut", "mean_chars", "kinds"),
    "milvus_vectors": ("rows", "embedded", "passages_embedded", "tokens_embedded", "embedding_cost_usd", "skipped_unchanged", "moved_in", "deleted", "passages_deleted", "truncated"),
}


def tenant_day_status(instance, tenant: str, day: str) -> dict:
    """What Dagster recorded for one tenant-day: its latest materialisation of each asset (run
    id, time, figures) and the current outcome of each check on it.

    Returns ``{"materialised": bool, "run_id", "timestamp", "figures": {asset: {name: value}},
    "checks": {check: "passed" | "WARN: ..." | "ERROR: ..." | "not evaluated"}}``. A day
    materialised without records has no figures: it is in sync, empty.
    """
    import dagster as dg

    from .checks.specs import CHECKS
    from .partitions import key_string

    key = key_string(tenant, day)
    out: dict = {"tenant": tenant, "day": day, "materialised": False, "run_id": None, "timestamp": None, "figures": {}, "checks": {}}
    for asset in STATUS_FIGURES:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1).records
        if not records:
            continue
        record = records[0]
        out["materialised"] = True
        out["run_id"], out["timestamp"] = record.run_id, record.timestamp
        metadata = record.asset_materialization.metadata
        figures = {name: getattr(metadata[name], "value", metadata[name]) for name in STATUS_FIGURES[asset] if name in metadata}
        if figures:
            out["figures"][asset] = figures
    if out["run_id"]:
        # The current outcome of each check for this tenant-day: Dagster's per-tenant-day status
        # (the latest evaluation of this tenant-day, by the materialising run or a later audit).
        from .checks.outcomes import latest_outcomes

        for o in latest_outcomes(instance, partitions=[(tenant, day)]):
            out["checks"][o.check] = f"{o.status}: {o.description or ', '.join(f'{k}={v}' for k, v in o.figures.items())}" if o.failed else o.status
        for name in CHECKS:
            out["checks"].setdefault(name, "not evaluated (no records, or nothing to judge)")
    return out


def cmd_status(args: argparse.Namespace) -> int:
    """Print what Dagster recorded for each tenant-day of ``--tenant`` between ``--start`` and
    ``--end`` (or ``--day``): materialised or not, its figures, its checks' outcomes, and
    whether its landing lines changed since it was written. Exit 1 when a tenant-day is not
    materialised or its lines changed since (it needs a backfill), else 0."""
    from .partitions import in_window

    start = args.day or args.start
    end = args.day or args.end or start
    if not start:
        print("error: give --day, or --start (and --end)", file=sys.stderr)
        return 2
    days = []
    d = dt.date.fromisoformat(start)
    while d <= dt.date.fromisoformat(end) and len(days) < args.limit:
        days.append(d.isoformat())
        d += dt.timedelta(days=1)
    instance = settings.dagster_instance()
    from .definitions import defs

    model_id = defs.resources["embedding_model"].model_id
    store = _milvus().store_key(model_id)
    index = defs.resources["landing"].index()
    unsynced = set(index.unsynced_partitions(store, start, end))
    statuses = [tenant_day_status(instance, args.tenant, day) for day in days if in_window(day)]
    for status in statuses:
        status["changed_since_written"] = (args.tenant, status["day"]) in unsynced
    # The index is read, not refreshed (a refresh here would hide the change from
    # new_data_sensor): files changed since its last refresh are said, with since when
    # (issue #17 item 11: "in sync" was printed after an edit).
    stale = index.stale_files()
    refreshed = index.refreshed_at()
    since = dt.datetime.fromtimestamp(refreshed, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if refreshed else "never"
    if stale:
        print(
            f"warning: the landing index is older than the landing files: {len(stale)} files changed since its last refresh ({since}), "
            f"e.g. {stale[0]}; what follows may be stale: `vector-assets backfill` refreshes it and materialises what changed",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(statuses, indent=1, default=str))
    else:
        for status in statuses:
            when = dt.datetime.fromtimestamp(status["timestamp"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if status["timestamp"] else ""
            state = f"materialised {when} (run {status['run_id']})" if status["materialised"] else "not materialised"
            if status["changed_since_written"]:
                state += "; its landing lines changed since: needs a backfill"
            print(f"{args.tenant}|{status['day']}: {state}")
            if status["materialised"] and not status["figures"]:
                print("  no records (in sync, empty)")
            for asset, figures in status["figures"].items():
                print(f"  {asset}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
            for name, outcome in status["checks"].items():
                print(f"  check {name}: {outcome}")
    return 1 if stale or any(not s["materialised"] or s["changed_since_written"] for s in statuses) else 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """Print the quarantine reports of the state database as JSON lines (``tenant``, ``day``,
    ``file``, ``line``, ``reason``, ``raw``): of ``--tenant`` (and ``--day``), or the lines that
    fit no tenant-day (``--unattributed``), else all. Exit 0 (1 when ``--fail-if-any`` and some
    line is reported)."""
    from .definitions import defs

    index = defs.resources["landing"].index()
    tenant = "" if args.unattributed else args.tenant
    day = "" if args.unattributed else args.day
    reports = index.quarantined(tenant, day)
    for report in reports:
        print(json.dumps(report, ensure_ascii=False))
    return 1 if args.fail_if_any and reports else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vector-assets", description="Keep Milvus in step with operational records; search them by meaning.")
    sub = parser.add_subparsers(dest="command", required=True)
    bf = sub.add_parser("backfill", help="register tenants and materialise tenant-days through Dagster")
    bf.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    bf.add_argument("--start", type=_date, help="first day (YYYY-MM-DD, inclusive)")
    bf.add_argument("--end", type=_date, help="last day (YYYY-MM-DD, inclusive)")
    bf.add_argument("--max-partitions-per-run", type=int, default=None, help="tenant-days per run (default: the backfill policy's)")
    bf.add_argument("--all", action="store_true", help="re-run every tenant-day, also those unchanged since they were written")
    bf.add_argument("--workers", type=int, default=1, help="runs submitted and not finished at once (default 1); the instance's run queue limits still apply (dagster.yaml)")
    bf.add_argument("--delete-vanished-tenants", action="store_true", help="delete the rows of tenants that have no line in the landing data any more (refused by default)")
    bf.add_argument("--rebind-landing", action="store_true", help="bind the collection to this landing directory when another one wrote it (the folder moved; with --all, rows the new folder lacks are deleted)")
    bf.set_defaults(func=cmd_backfill)
    se = sub.add_parser("search", help="semantic search within one tenant")
    se.add_argument("query", nargs="?", help="query text")
    se.add_argument("--tenant", help="tenant to search")
    se.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    se.add_argument("--json", action="store_true", help="print one JSON object")
    se.add_argument("--queries", help="JSONL file of {id, tenant, text}; writes one JSON line per query")
    se.add_argument("--kind", action="append", help="only records of this kind (repeatable), e.g. git_commit, jira_issue")
    se.add_argument("--output", help="with --queries: write to this file instead of stdout")
    se.add_argument("--mode", choices=["dense", "bm25", "hybrid"], help="dense vectors, BM25 over the passage text, or both fused by RRF (default: hybrid where the collection has BM25, else dense)")
    se.add_argument("--fusion", default="rrf", help="hybrid: rrf (default) or weighted:W (dense weight W in [0, 1]; BM25 gets 1 - W)")
    se.set_defaults(func=cmd_search)
    ev = sub.add_parser("eval", help="retrieval quality on every tenant's golden queries; with --against, two collections side by side")
    ev.add_argument("--collection", help="the collection to evaluate (default: the one search serves)")
    ev.add_argument("--against", help="a second collection (e.g. a new model's, built beside the served one) to compare")
    ev.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    ev.add_argument("--json", action="store_true", help="print one JSON array")
    ev.set_defaults(func=cmd_eval)
    tu = sub.add_parser("tune", help="search the vector index parameters with optuna on the golden queries; record the served collection's tuned ef")
    tu.add_argument("--trials", type=int, default=24, help="optuna trials (default 24)")
    tu.add_argument("--collection", help="the collection to tune (default: the one search serves)")
    tu.add_argument("--dry-run", action="store_true", help="measure only; search keeps its parameters")
    tu.add_argument("--json", action="store_true", help="print one JSON object")
    tu.set_defaults(func=cmd_tune)
    ch = sub.add_parser("checks", help="latest check results per tenant-day, by check")
    ch.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    ch.add_argument("--limit", type=int, default=20, help="failures to list (default 20)")
    ch.set_defaults(func=cmd_checks)
    st = sub.add_parser("status", help="what Dagster recorded for tenant-days: figures and check outcomes")
    st.add_argument("--tenant", required=True, help="the tenant")
    st.add_argument("--day", type=_date, help="one day (YYYY-MM-DD)")
    st.add_argument("--start", type=_date, help="first day (inclusive)")
    st.add_argument("--end", type=_date, help="last day (inclusive; default --start)")
    st.add_argument("--limit", type=int, default=366, help="at most this many days (default 366)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_status)
    qu = sub.add_parser("quarantine", help="bad lines of the landing data, with file, line and reason (JSON lines)")
    qu.add_argument("--tenant", help="only this tenant")
    qu.add_argument("--day", type=_date, help="only this day (with --tenant)")
    qu.add_argument("--unattributed", action="store_true", help="the lines that fit no tenant-day (malformed JSON, no tenant, no timestamp)")
    qu.add_argument("--fail-if-any", action="store_true", help="exit 1 when a line is reported")
    qu.set_defaults(func=cmd_quarantine)
    sv = sub.add_parser("server", help="the local milvus-lite server of the default database (or the bundled PostgreSQL of VECTOR_ASSETS_STORE_URL=pgserver:PATH)")
    sv.add_argument("action", choices=["start", "stop", "status"])
    sv.set_defaults(func=cmd_server)
    api = sub.add_parser("serve", help="the HTTP search service (FastAPI + uvicorn; README, 'Search service')")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: loopback only)")
    api.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    api.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    api.set_defaults(func=cmd_serve)
    ks = sub.add_parser("keys", help="API keys of the search service: add, list, revoke")
    ks.add_argument("action", choices=["add", "list", "revoke"])
    ks.add_argument("id", nargs="?", help="revoke: the key's id (from keys list)")
    ks.add_argument("--tenant", action="append", help="add: a tenant the key may read (repeatable)")
    ks.add_argument("--all-tenants", action="store_true", help="add: the key may read every tenant (and /metrics)")
    ks.add_argument("--name", help="add: a note on whose key it is")
    ks.add_argument("--json", action="store_true", help="list: as JSON")
    ks.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pymilvus.exceptions import MilvusException

    args = build_parser().parse_args(argv)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except MilvusException as err:
        # One line with the cause, not a page of gRPC traceback (a stopped server, a refused
        # connection, a collection that went away).
        from .store.milvus_store import error_line

        print(f"error: Milvus at {settings.milvus_uri()}: {error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
