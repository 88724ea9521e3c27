"""Dagster's SQLite storage, with batched writes of asset events.

A run of tenant-days records three materialisations per tenant-day (derived by Dagster from
the step's ranged output). Dagster hands them to the event log storage in batches
(``DAGSTER_EVENT_BATCH_SIZE``, set by :mod:`vector_assets.definitions`) through
``store_event_batch``: dagster-postgres writes a batch as one multi-row INSERT, but Dagster's
SQLite storage inherits the default, a loop over ``store_event``, which opens two SQLite
connections and commits two transactions per event (the run's shard and the cross-run index):
about 10.7 ms an event on this machine (``benchmarks/pipeline.py recording``, 32.1 ms a
tenant-day). :class:`BatchedSqliteEventLogStorage` writes a batch of asset events in one
transaction per shard, with the same statements as ``store_event`` (3.15 ms a tenant-day),
and plans a ranged run's materialisations with one event per asset instead of one per
tenant-day. Both storages here install :mod:`.planning` (a ranged run's partitions resolved
once when it is planned, not once per asset and check).

Configured in ``dagster.yaml`` as the instance's storage::

    storage:
      custom:
        module: vector_assets.instance.storage
        class: BatchedSqliteStorage
        config:
          base_dir:
            env: DAGSTER_HOME

Everything else is Dagster's ``DagsterSqliteStorage`` (same files, same layout: an instance
can switch between the two).

Check evaluations are recorded per tenant-day (issue #18: a check's status is kept per
partition, where the UI reads it), seven per tenant-day with records. Dagster writes each with
``store_event`` (three SQLite transactions, about 30 ms; ``benchmarks/pipeline.py recording``);
:func:`vector_assets.checks.evaluate.record_evaluations` sends them in batches and both storages
here write a batch of check evaluations in one transaction: :class:`BatchedSqliteStorage`, and
:class:`BatchedPostgresStorage` for dagster-postgres (whose ``store_event_batch`` accepts only
materialisations and observations).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence

from dagster._core.events import ASSET_EVENTS, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory

from . import planning


def is_check_evaluation_batch(events: Sequence[EventLogEntry]) -> bool:
    """Whether ``events`` are all check evaluations of runs (what :class:`CheckEvaluationBatches`
    writes in one transaction)."""
    return bool(events) and all(e.is_dagster_event and e.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION and e.run_id for e in events)


class CheckEvaluationBatches:
    """Writes the ``asset_check_executions`` rows of a batch of check evaluations on one
    connection: what Dagster's ``_update_asset_check_evaluation`` does for one event (the row
    planned at the run's start for the check and partition is updated; without one, a row is
    inserted), with one SELECT for the batch's planned rows, one executemany UPDATE by id and one
    multi-row INSERT."""

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """No ``asset_check_executions`` rows for the plan of a partitioned check (the planned
        event itself is stored as usual); an unpartitioned check's plan is stored as Dagster does.

        Dagster writes one planned row per check and partition of the run, each holding the whole
        serialised plan with the run's partition subset: for a run over 1,000 tenant-days, 7,000
        rows of 28 KB (197 MB, 5.1 s of a 6.5 s run in ``benchmarks/pipeline.py recording``); over
        6,500 days, 45,500 rows of 182 KB. Without them a tenant-day's check status is its latest
        evaluation (or none: "not evaluated"); the UI shows no "in progress" or "skipped" state
        for a check's tenant-days while a run goes on, and a run that fails before evaluating a
        tenant-day leaves its earlier status (the run shows the failure).
        """
        planned = event.dagster_event.event_specific_data if event.dagster_event else None
        if planned is not None and getattr(planned, "partitions_subset", None) is not None:
            return
        super()._store_asset_check_evaluation_planned(event, event_id)

    def _store_check_evaluation_rows(self, conn, events: Sequence[EventLogEntry], event_ids: Sequence[int], serialized: Sequence[str]) -> None:
        """``serialized``: each event as stored in the event log (``_event_to_row``'s ``event``),
        which the ``asset_check_executions`` row holds too: serialised once, not twice (the
        serialisation was 8 % of a run's time in ``benchmarks/org_scale.py`` under cProfile)."""
        import sqlalchemy as db

        run_ids = sorted({e.run_id for e in events})
        planned = {}
        query = db.select(AssetCheckExecutionsTable.c.id, AssetCheckExecutionsTable.c.asset_key, AssetCheckExecutionsTable.c.check_name, AssetCheckExecutionsTable.c.run_id, AssetCheckExecutionsTable.c.partition).where(
            AssetCheckExecutionsTable.c.run_id.in_(run_ids), AssetCheckExecutionsTable.c.execution_status == AssetCheckExecutionRecordStatus.PLANNED.value
        )
        for row in conn.execute(query):
            planned[(row.asset_key, row.check_name, row.run_id, row.partition)] = row.id
        updates, inserts = [], []
        for event, event_id, event_json in zip(events, event_ids, serialized, strict=True):
            evaluation = event.dagster_event.event_specific_data
            target = evaluation.target_materialization_data
            values = {
                "execution_status": (AssetCheckExecutionRecordStatus.SUCCEEDED if evaluation.passed else AssetCheckExecutionRecordStatus.FAILED).value,
                "evaluation_event": event_json,
                "evaluation_event_timestamp": self._event_insert_timestamp(event),
                "evaluation_event_storage_id": event_id,
                "materialization_event_storage_id": target.storage_id if target else None,
                "partition": evaluation.partition,
            }
            row_id = planned.pop((evaluation.asset_key.to_string(), evaluation.check_name, event.run_id, evaluation.partition), None)
            if row_id is None:
                inserts.append({"asset_key": evaluation.asset_key.to_string(), "check_name": evaluation.check_name, "run_id": event.run_id, **values})
            else:
                updates.append({"row_id": row_id, **values})
        if updates:
            statement = AssetCheckExecutionsTable.update().where(AssetCheckExecutionsTable.c.id == db.bindparam("row_id")).values(
                {name: db.bindparam(name) for name in ("execution_status", "evaluation_event", "evaluation_event_timestamp", "evaluation_event_storage_id", "materialization_event_storage_id", "partition")}
            )
            conn.execute(statement, updates)
        if inserts:
            conn.execute(AssetCheckExecutionsTable.insert(), inserts)


class BatchedSqliteEventLogStorage(CheckEvaluationBatches, SqliteEventLogStorage):
    """:class:`SqliteEventLogStorage` whose ``store_event_batch`` writes a batch of asset events
    (materialisations, observations, planned materialisations) in one transaction on the run's
    shard and one on the index shard. Any other batch is stored event by event, as before.
    """

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        """One planned-materialisation event per asset for a run over a range of tenant-days,
        not one per tenant-day (what ``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS`` turns
        on for any storage). Dagster's caveat: the tenant-days of a failed run are then not
        shown "Failed" in the Partitions tab (the run and the backfill still are)."""
        return True

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        if is_check_evaluation_batch(events):
            with self._insert_batch(events) as (conn, event_ids, rows):
                self._store_check_evaluation_rows(conn, events, event_ids, [row["event"] for row in rows])
            return
        if not events or not all(e.is_dagster_event and e.dagster_event_type in ASSET_EVENTS for e in events):
            super().store_event_batch(events)
            return
        with self._insert_batch(events) as (conn, event_ids, _):
            self._store_asset_event_tags(conn, list(events), event_ids)
            # The asset's row (its last materialisation, observation, planned run) ends as the
            # batch's last event of each type leaves it: only those are written. Each write
            # serialises the whole event again and tries an INSERT before its UPDATE: at 3
            # materialisations a tenant-day, 1 ms of the 1.15 ms an event cost on SQLite
            # (profile of a 6,629 tenant-day run, 2026-12-01). dagster-postgres writes the
            # batch's last event only.
            last = {(e.dagster_event.asset_key, e.dagster_event_type): i for i, e in enumerate(events)}
            for i in sorted(last.values()):
                self._store_asset_event(conn, events[i], event_ids[i])

    @contextlib.contextmanager
    def _insert_batch(self, events: Sequence[EventLogEntry]):
        """Insert ``events`` in their runs' shards (one transaction per run) and mirror them in
        the cross-run index, as ``store_event`` does; yields ``(index connection, event ids, the
        events' rows)`` inside the index transaction, for the rows that go with them."""
        from dagster._core.storage.event_log.schema import SqlEventLogStorageTable

        rows = [self._event_to_row(e) for e in events]  # what prepare_insert_event inserts
        by_run: dict[str, list] = defaultdict(list)
        for event, row in zip(events, rows):
            by_run[event.run_id].append(row)
        for run_id, run_rows in by_run.items():
            with self.run_connection(run_id) as conn:
                conn.execute(SqlEventLogStorageTable.insert(), run_rows)  # one executemany
        with self.index_transaction() as conn:
            # One statement for the batch, its ids in the rows' order (SQLite >= 3.35 RETURNING).
            result = conn.execute(SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True), rows)
            event_ids = [row[0] for row in result.fetchall()]
            if len(event_ids) != len(rows) or any(event_id is None for event_id in event_ids):
                raise RuntimeError("SQLite returned no id for a stored event")
            yield conn, event_ids, rows


def storage_config(base_dir: str) -> dict:
    """The ``storage`` section of an instance configuration that uses :class:`BatchedSqliteStorage`
    under ``base_dir`` (for ``dg.instance_for_test(overrides=...)``)."""
    return {"custom": {"module": __name__, "class": "BatchedSqliteStorage", "config": {"base_dir": str(base_dir)}}}


class BatchedSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite instance storage (runs, event log, schedules under ``base_dir``) with
    :class:`BatchedSqliteEventLogStorage` as its event log."""

    def __init__(self, base_dir: str, inst_data=None):
        super().__init__(base_dir, inst_data=inst_data)
        self._event_log_storage = BatchedSqliteEventLogStorage(_event_logs_directory(base_dir))
        planning.install()  # a ranged run's plan resolves its partitions once

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # noqa: D102 (Dagster's ConfigurableClass)
        return cls.from_local(inst_data=inst_data, **config_value)


try:  # dagster-postgres is a dependency, but keep the SQLite storage importable without it
    from dagster_postgres.event_log import PostgresEventLogStorage
    from dagster_postgres.storage import DagsterPostgresStorage
    from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
except ImportError:  # pragma: no cover
    PostgresEventLogStorage = DagsterPostgresStorage = None

if DagsterPostgresStorage is not None:

    class BatchedPostgresEventLogStorage(CheckEvaluationBatches, PostgresEventLogStorage):
        """dagster-postgres' event log whose ``store_event_batch`` writes a batch of
        materialisations, or of check evaluations, as one executemany INSERT (compiled once,
        sent by SQLAlchemy as multi-row INSERTs with ``RETURNING`` ids in the rows' order) in
        one transaction with the rows that go with them (asset event tags and the asset's
        row; or ``asset_check_executions`` rows). Any other batch goes to dagster-postgres.

        dagster-postgres builds one ``INSERT ... VALUES`` statement with every row's values
        inlined as literals of the statement: SQLAlchemy coerces each value (43,327 calls,
        0.58 s of 3.8 s profiled for 1,000 empty tenant-days in
        ``benchmarks/profile_empty_days.py postgres 1000``, 2026-12-02), and compiles a new
        statement for each batch.
        """

        def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
            if is_check_evaluation_batch(events):
                with self._insert_batch(events) as (conn, event_ids, rows):
                    self._store_check_evaluation_rows(conn, events, event_ids, [row["event"] for row in rows])
                return
            if not events or not all(e.is_dagster_event and e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION for e in events):
                super().store_event_batch(events)
                return
            with self._insert_batch(events) as (conn, event_ids, _rows):
                self._store_asset_event_tags(conn, events, event_ids)
                # As dagster-postgres: the asset's row from the batch's last event.
                self._store_asset_event(conn, events[-1], event_ids[-1])

        @contextlib.contextmanager
        def _insert_batch(self, events: Sequence[EventLogEntry]):
            """Insert ``events`` (one executemany); yields ``(connection, event ids, rows)``
            inside the transaction."""
            from dagster._core.storage.event_log.schema import SqlEventLogStorageTable

            rows = [self._event_to_row(e) for e in events]  # what prepare_insert_event_batch inserts
            with self.index_transaction() as conn:
                result = conn.execute(SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True), rows)
                event_ids = [int(row[0]) for row in result.fetchall()]
                if len(event_ids) != len(rows):
                    raise RuntimeError(f"PostgreSQL returned {len(event_ids)} ids for {len(rows)} stored events")
                yield conn, event_ids, rows

    class BatchedPostgresStorage(DagsterPostgresStorage):
        """dagster-postgres' storage with :class:`BatchedPostgresEventLogStorage` as its event
        log; configured like ``storage: postgres:`` (``postgres_db``), under ``storage: custom:``
        in ``dagster.postgres.yaml``."""

        def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, inst_data=None, token_provider=None):
            super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data, token_provider=token_provider)
            self._event_log_storage = BatchedPostgresEventLogStorage(postgres_url, should_autocreate_tables, token_provider=token_provider)
            planning.install()  # a ranged run's plan resolves its partitions once

        @classmethod
        def config_type(cls):  # noqa: D102 (Dagster's ConfigurableClass)
            from dagster._core.storage.config import pg_config

            return pg_config()

        @classmethod
        def from_config_value(cls, inst_data, config_value):  # noqa: D102 (Dagster's ConfigurableClass)
            return cls(
                inst_data=inst_data,
                postgres_url=pg_url_from_config(config_value),
                should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                token_provider=get_token_provider_from_config(config_value),
            )
