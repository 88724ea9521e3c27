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

Both storages make a batch's rows with :class:`EventRows`: the events serialised by
:func:`serialize_events` (the text ``serialize_value`` writes, from one template per shape of
event), the asset-event tag rows with each asset's key string and indexed tags computed once.

Check evaluations are recorded per tenant-day (issue #18: a check's status is kept per
partition, where the UI reads it), seven per tenant-day with records. Dagster writes each with
``store_event`` (three SQLite transactions, about 30 ms; ``benchmarks/pipeline.py recording``);
:func:`vector_assets.checks.outcomes.record_evaluations` sends them in batches and both storages
here write a batch of check evaluations in one transaction: :class:`BatchedSqliteStorage`, and
:class:`BatchedPostgresStorage` for dagster-postgres (whose ``store_event_batch`` accepts only
materialisations and observations).
"""

from __future__ import annotations

import contextlib
import math
from json.encoder import encode_basestring_ascii
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from dagster._core.events import ASSET_EVENTS, DagsterEventType
from dagster_shared.serdes import serialize_value
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory

from . import planning


def _slot(i: int) -> str:
    """The stand-in for the ``i``-th varying value of an event (:func:`serialize_events`): a
    string no event holds."""
    return f"\x00vector_assets:slot:{i}\x00"


#: The stand-in for an event's timestamp: a float no clock gives.
_TIMESTAMP = -1.2345678901234567e-300


def _frozen(value):
    """A hashable stand-in for ``value``, equal for two values only when serdes writes them
    alike: types are kept (``1``, ``1.0`` and ``True`` differ), dicts keep their order, and an
    object hashed by identity is equal only to itself. Raises TypeError for an unhashable part."""
    kind = type(value)
    if kind is str or value is None:  # equal only to an equal str, or to None
        return value
    if isinstance(value, dict):
        return (kind, tuple([(_frozen(k), _frozen(v)) for k, v in value.items()]))
    if isinstance(value, tuple):  # a tuple's own iterator: Dagster's records refuse iteration
        return (kind, tuple([_frozen(v) for v in tuple.__iter__(value)]))
    if isinstance(value, list):
        return (kind, tuple([_frozen(v) for v in value]))
    hash(value)
    return (kind, value)


class _Whole(NamedTuple):
    """A slot's value serialised whole each time (a check evaluation's target, any other
    event-specific data): values that differ from event to event, not worth a memo."""

    value: object


def _with(value, **changes):
    """``value`` (a NamedTuple or a Dagster record) with ``changes`` to its fields, made without
    its constructor (which would check or convert the stand-ins)."""
    return tuple.__new__(type(value), [changes.get(name, field) for name, field in zip(value._fields, tuple.__iter__(value), strict=True)])


def _mask_metadata(metadata, values: list):
    """``metadata`` with each value replaced by a stand-in, the values appended to ``values``."""
    if not metadata:
        return metadata
    masked = {}
    for name, value in metadata.items():
        values.append(value)
        masked[name] = _slot(len(values) - 1)
    return masked


def _shape(event: EventLogEntry) -> tuple[EventLogEntry, list]:
    """``(event with its varying values replaced by stand-ins, those values in slot order)``.

    Varying values: the timestamp (slot 0); for a materialisation, its metadata values (a
    tenant-day's figures), its partition and the values of its tags (the partition's
    dimensions, data versions, input pointers); for a check evaluation, its metadata values,
    partition and target materialisation; for any other event, its whole event-specific data;
    and the event's messages."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
    from dagster._core.definitions.events import AssetMaterialization
    from dagster._core.events import StepMaterializationData

    dagster_event = event.dagster_event
    data = dagster_event.event_specific_data
    values: list = [event.timestamp]
    if type(data) is StepMaterializationData and type(data.materialization) is AssetMaterialization:
        materialization = data.materialization
        metadata = _mask_metadata(materialization.metadata, values)
        partition, tags = materialization.partition, materialization.tags
        if partition is not None:
            values.append(partition)
            partition = _slot(len(values) - 1)
        if tags:
            masked = {}
            for name, value in tags.items():
                values.append(value)
                masked[name] = _slot(len(values) - 1)
            tags = masked
        data = _with(data, materialization=_with(materialization, partition=partition, tags=tags, metadata=metadata))
    elif type(data) is AssetCheckEvaluation:
        metadata = _mask_metadata(data.metadata, values)
        partition, target = data.partition, data.target_materialization_data
        if partition is not None:
            values.append(partition)
            partition = _slot(len(values) - 1)
        if target is not None:
            values.append(_Whole(target))
            target = _slot(len(values) - 1)
        data = _with(data, metadata=metadata, partition=partition, target_materialization_data=target)
    else:
        values.append(_Whole(data))
        data = _slot(1)
    # The messages name the partition ("Asset check 'coverage' on 'milvus_vectors' passed for
    # 2024-07-01|HADOOP").
    user_message, message = event.user_message, dagster_event.message
    if type(user_message) is str:
        values.append(user_message)
        user_message = _slot(len(values) - 1)
    if type(message) is str:
        values.append(message)
        message = _slot(len(values) - 1)
    return _with(event, timestamp=_TIMESTAMP, user_message=user_message, dagster_event=_with(dagster_event, event_specific_data=data, message=message)), values


def _serialized_value(value, memo: dict) -> str:
    """``serialize_value(value)``: a string or a finite float without serdes' packing, a
    :class:`_Whole` value in full, anything else (a metadata value) once per distinct value in
    ``memo``."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)  # json.dumps' own escaping (ensure_ascii)
    if kind is float and math.isfinite(value):
        return repr(value)  # json.dumps' own float text
    if kind is _Whole:
        return serialize_value(value.value)
    try:
        key = _frozen(value)
    except TypeError:
        return serialize_value(value)
    if key not in memo:
        memo[key] = serialize_value(value)
    return memo[key]


def _template(masked: EventLogEntry, slots: int) -> tuple[list[str], list[int]] | None:
    """``masked`` (from :func:`_shape`) serialised: the text between its stand-ins and the slot
    of each stand-in in the text's order. None when a stand-in is not found exactly once."""
    try:
        text = serialize_value(masked)
    except Exception:  # noqa: BLE001 - a shape serdes does not take: serialise in full
        return None
    marks = [serialize_value(_TIMESTAMP)] + [serialize_value(_slot(i)) for i in range(1, slots)]
    if any(text.count(mark) != 1 for mark in marks):
        return None
    order = sorted(range(slots), key=lambda i: text.index(marks[i]))
    pieces = []
    for i in order:
        head, text = text.split(marks[i])
        pieces.append(head)
    return pieces + [text], order


def _fill(template: tuple[list[str], list[int]], values: list, memo: dict) -> str:
    """The event's text: ``template``'s pieces with ``values`` serialised between them."""
    pieces, order = template
    out = [pieces[0]]
    for piece, i in zip(pieces[1:], order, strict=True):
        out += [_serialized_value(values[i], memo), piece]
    return "".join(out)


def serialize_events(events: Sequence[EventLogEntry]) -> list[str]:
    """Each of ``events`` as ``serialize_value(event)`` writes it (the text Dagster stores in
    ``event_logs.event``), character for character, in less time for a batch of alike events.

    The events of a batch share most of their text: run, step, job, logging tags, process,
    message, asset key, metadata and tag names. What differs is the timestamp, a
    materialisation's partition and tag values, and any other event's event-specific data (a
    check evaluation's). So the text is made once per shape (the event with those values
    replaced by stand-ins: :func:`_shape`) and the values are filled in per event. A shape's
    template is made at its second event and checked against ``serialize_value`` on that
    event; an event of a shape seen once, or whose template does not give that event's text
    back, is serialised by ``serialize_value`` as before.

    Why: on 9,000 materialisations of empty tenant-days, serialising was 48 % of storing them
    on Postgres (cProfile, ``benchmarks/empty_days.py``, 2026-12-02).
    """
    templates: dict = {}  # shape -> template; False: seen once; None: serialise in full
    memo: dict = {}  # value -> its text, for values other than strings and floats
    out = []
    for event in events:
        key = None
        if event.dagster_event is not None and event.dagster_event.event_specific_data is not None:
            masked, values = _shape(event)
            try:
                key = _frozen(masked)
            except TypeError:
                key = None
        template = templates.get(key)
        if template:
            out.append(_fill(template, values, memo))
            continue
        text = serialize_value(event)
        if key is not None and key not in templates:
            templates[key] = False  # a template pays from the shape's second event on
        elif template is False:  # the shape's second event: make its template, check it here
            template = _template(masked, len(values))
            templates[key] = template if template is not None and _fill(template, values, memo) == text else None
        out.append(text)
    return out


class EventRows:
    """The rows of a batch of events, as Dagster's ``_event_to_row`` and
    ``_store_asset_event_tags`` write them, made once per batch: events serialised by
    :func:`serialize_events`, each event's insert timestamp computed once, an asset key's string
    and the tags to index computed once per asset and tag set (Dagster recomputes them per event
    through ``DagsterEvent.asset_key``: 31 % of storing empty tenant-days on Postgres, cProfile
    2026-12-02)."""

    def _event_rows(self, events: Sequence[EventLogEntry]) -> list[dict]:
        """``[self._event_to_row(e) for e in events]``, equal row for row."""
        rows = []
        asset_strings: dict = {}
        for event, text in zip(events, serialize_events(events), strict=True):
            event_type = asset_key = partition = None
            step_key = event.step_key
            dagster_event = event.dagster_event
            if dagster_event is not None:
                event_type, step_key, partition = dagster_event.event_type_value, dagster_event.step_key, dagster_event.partition or None
                key = dagster_event.asset_key
                if key is not None:
                    if key not in asset_strings:
                        asset_strings[key] = key.to_string()
                    asset_key = asset_strings[key]
            rows.append({
                "run_id": event.run_id, "event": text, "dagster_event_type": event_type, "timestamp": self._event_insert_timestamp(event),
                "step_key": step_key, "asset_key": asset_key, "partition": partition,
            })
        return rows

    def _store_asset_event_tags(self, conn, events: Sequence[EventLogEntry], event_ids: Sequence[int], rows: Sequence[dict] | None = None) -> None:
        """Dagster's method, the same rows; ``rows``: the events' rows from :meth:`_event_rows`
        (their asset key strings and timestamps), or None to compute them."""
        from dagster._core.events import AssetObservationData, StepMaterializationData

        to_index: dict = {}
        values = []
        for i, (event_id, event) in enumerate(zip(event_ids, events, strict=True)):
            data = event.dagster_event.event_specific_data
            if type(data) is StepMaterializationData:
                tags = data.materialization.tags or {}
            elif type(data) is AssetObservationData:
                tags = data.asset_observation.tags or {}
            else:
                tags = self._tags_for_asset_event(event)
            if not tags:
                continue
            names = tuple(tags)
            if names not in to_index:
                to_index[names] = self.get_asset_tags_to_index(set(names))
            indexed = to_index[names]
            if not indexed:
                continue
            if rows is None:
                asset_key, timestamp = event.dagster_event.asset_key.to_string(), self._event_insert_timestamp(event)
            else:
                asset_key, timestamp = rows[i]["asset_key"], rows[i]["timestamp"]
            values += [{"event_id": event_id, "asset_key": asset_key, "key": k, "value": v, "event_timestamp": timestamp} for k, v in tags.items() if k in indexed]
        if values and self._has_tags_table():
            self._insert_tag_rows(conn, values)

    def _has_tags_table(self) -> bool:
        """``self.has_table("asset_event_tags")``, asked until it is True and then remembered:
        Dagster asks the database on every batch (a connection and a catalogue query, 26 of 488
        samples of storing a run's events on Postgres: py-spy, ``benchmarks/org_scale.py --grid
        1000x30 --records 3000``, 2026-12-03); the table, once there, is not dropped."""
        from dagster._core.storage.event_log.schema import AssetEventTagsTable

        if not getattr(self, "_tags_table_seen", False):
            self._tags_table_seen = bool(self.has_table(AssetEventTagsTable.name))
        return self._tags_table_seen

    def _insert_tag_rows(self, conn, values: list[dict]) -> None:
        """Insert ``values`` into ``asset_event_tags`` (one executemany)."""
        from dagster._core.storage.event_log.schema import AssetEventTagsTable

        conn.execute(AssetEventTagsTable.insert(), values)


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
        serialisation was 8 % of a run's time in ``benchmarks/org_scale.py`` under cProfile).

        The planned rows are looked up by (asset key, check, run): the leading columns of
        Dagster's unique index on the table. Asked by run alone, the database read the whole
        index (PostgreSQL) or table (SQLite) for every batch, a cost that grew with every
        evaluation ever stored (py-spy, ``benchmarks/org_scale.py --grid 100x365 --storage
        postgres``, 2026-12-03: 4.3 s of a 131 s grid)."""
        import sqlalchemy as db

        table = AssetCheckExecutionsTable
        asset_strings: dict = {}  # an asset key's string, made once per batch
        checks = []  # each event's (asset key string, check, run)
        for event in events:
            evaluation = event.dagster_event.event_specific_data
            if evaluation.asset_key not in asset_strings:
                asset_strings[evaluation.asset_key] = evaluation.asset_key.to_string()
            checks.append((asset_strings[evaluation.asset_key], evaluation.check_name, event.run_id))
        planned = {}
        query = db.select(table.c.id, table.c.asset_key, table.c.check_name, table.c.run_id, table.c.partition).where(
            db.tuple_(table.c.asset_key, table.c.check_name, table.c.run_id).in_(sorted(set(checks))), table.c.execution_status == AssetCheckExecutionRecordStatus.PLANNED.value
        )
        for row in conn.execute(query):
            planned[(row.asset_key, row.check_name, row.run_id, row.partition)] = row.id
        updates, inserts = [], []
        for event, (asset_key, check_name, run_id), event_id, event_json in zip(events, checks, event_ids, serialized, strict=True):
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
            row_id = planned.pop((asset_key, check_name, run_id, evaluation.partition), None)
            if row_id is None:
                inserts.append({"asset_key": asset_key, "check_name": check_name, "run_id": run_id, **values})
            else:
                updates.append({"row_id": row_id, **values})
        if updates:
            statement = table.update().where(table.c.id == db.bindparam("row_id")).values(
                {name: db.bindparam(name) for name in ("execution_status", "evaluation_event", "evaluation_event_timestamp", "evaluation_event_storage_id", "materialization_event_storage_id", "partition")}
            )
            conn.execute(statement, updates)
        if inserts:
            self._insert_check_execution_rows(conn, inserts)

    def _insert_check_execution_rows(self, conn, values: list[dict]) -> None:
        """Insert ``values`` (dicts of the same columns) into ``asset_check_executions``: one
        executemany INSERT (the PostgreSQL storage sends them with ``COPY``)."""
        conn.execute(AssetCheckExecutionsTable.insert(), values)


class BatchedSqliteEventLogStorage(EventRows, CheckEvaluationBatches, SqliteEventLogStorage):
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
        with self._insert_batch(events) as (conn, event_ids, rows):
            self._store_asset_event_tags(conn, list(events), event_ids, rows)
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

        rows = self._event_rows(events)  # what prepare_insert_event inserts
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

    class BatchedPostgresEventLogStorage(EventRows, CheckEvaluationBatches, PostgresEventLogStorage):
        """dagster-postgres' event log whose ``store_event_batch`` writes a batch of
        materialisations, or of check evaluations, with ``COPY`` (ids taken from the table's
        sequence first) in one transaction with the rows that go with them (asset event tags,
        also with ``COPY``, and the asset's row; or ``asset_check_executions`` rows). Any other
        batch goes to dagster-postgres.

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
            with self._insert_batch(events) as (conn, event_ids, rows):
                self._store_asset_event_tags(conn, events, event_ids, rows)
                # As dagster-postgres: the asset's row from the batch's last event.
                self._store_asset_event(conn, events[-1], event_ids[-1])

        def _insert_check_execution_rows(self, conn, values: list[dict]) -> None:
            """Insert ``values`` into ``asset_check_executions`` with ``COPY``
            (:func:`_copy_rows`): a partitioned check has no planned rows to update, so each
            evaluation of a run is a new row, and these need no ids back."""
            _copy_rows(conn, AssetCheckExecutionsTable.name, values)

        def _insert_tag_rows(self, conn, values: list[dict]) -> None:
            """Insert ``values`` into ``asset_event_tags`` with PostgreSQL's ``COPY``
            (:func:`_copy_rows`): these rows need no ids back, and an INSERT of them cost 0.40 ms
            of the 0.89 ms of an empty tenant-day recorded without a run (three rows per event;
            ``benchmarks/empty_days.py``, 2026-12-02)."""
            _copy_rows(conn, "asset_event_tags", values)

        @contextlib.contextmanager
        def _insert_batch(self, events: Sequence[EventLogEntry]):
            """Insert ``events`` (``COPY``, their ids from the table's sequence, in the events'
            order); yields ``(connection, event ids, rows)`` inside the transaction."""
            from dagster._core.storage.event_log.schema import SqlEventLogStorageTable

            rows = self._event_rows(events)  # what prepare_insert_event_batch inserts
            with self.index_transaction() as conn:
                # The batch's ids taken from the table's sequence (in order), then the rows sent
                # with COPY: the INSERT ... RETURNING it replaces cost 0.28 ms of an empty
                # tenant-day's 0.80 ms (benchmarks/empty_days.py, 2026-12-02).
                with contextlib.closing(conn.connection.dbapi_connection.cursor()) as cursor:
                    cursor.execute("SELECT nextval(pg_get_serial_sequence('event_logs', 'id')) FROM generate_series(1, %s)", (len(rows),))
                    event_ids = sorted(int(row[0]) for row in cursor.fetchall())
                if len(event_ids) != len(rows):
                    raise RuntimeError(f"PostgreSQL gave {len(event_ids)} ids for {len(rows)} events")
                _copy_rows(conn, SqlEventLogStorageTable.name, [{"id": event_id, **row} for event_id, row in zip(event_ids, rows, strict=True)])
                yield conn, event_ids, rows

    def _csv_field(value) -> str:
        """``value`` as a field of PostgreSQL's CSV ``COPY``: None as an empty unquoted field
        (NULL), an int as its digits, a ``datetime`` in ISO form and a string quoted (``"``
        doubled), so that NULL and the empty string stay apart. TypeError for anything else."""
        import datetime as dt

        if value is None:
            return ""
        if type(value) is int:
            return str(value)
        if isinstance(value, dt.datetime):
            value = value.isoformat(sep=" ")
        if not isinstance(value, str):
            raise TypeError(f"no CSV form for {type(value).__name__} in a COPY row")
        return '"' + value.replace('"', '""') + '"'

    def _copy_rows(conn, table: str, rows: Sequence[dict]) -> None:
        """Send ``rows`` (dicts with the same keys: the columns) to ``table`` with PostgreSQL's
        ``COPY ... FROM STDIN`` in CSV (:func:`_csv_field`), on the DBAPI connection of ``conn``
        (inside its transaction)."""
        import io

        columns = list(rows[0])
        text = "".join(",".join([_csv_field(row[c]) for c in columns]) + "\n" for row in rows)
        with contextlib.closing(conn.connection.dbapi_connection.cursor()) as cursor:
            cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", io.StringIO(text))

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
