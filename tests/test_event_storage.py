"""The batched event storages write what Dagster's own methods write: each event's text
(:func:`vector_assets.instance.storage.serialize_events` against serdes' ``serialize_value``),
the ``event_logs`` rows and the asset-event tag rows. Checked on the batches of a real run over
real records (materialisations of days with and without records, check evaluations) and of
empty tenant-days recorded without a run, as the storages receive them."""

import dagster as dg
import pytest
import sqlalchemy
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster_shared.serdes import deserialize_value, serialize_value

import vector_assets.definitions  # noqa: F401  (the event batching every code location sets)
from vector_assets.assets.vectors import empty_day_materializations
from vector_assets.instance import storage as batched
from vector_assets.instance.runs import record_runless_materializations

from .conftest import postgres_storage_overrides, register_tenants, use_local_postgres
from .test_pipeline import materialize_days, materialize_index


class _Recorder:
    """A connection that keeps what ``execute`` is given (the asset-event tag rows)."""

    def __init__(self):
        self.rows = []

    def execute(self, statement, rows):
        self.rows += rows


def test_batched_rows_are_what_dagster_writes(resources, instance, hadoop_days, monkeypatch):
    storage = instance.event_log_storage
    batches, fills = [], []
    store_event_batch, fill = type(storage).store_event_batch, batched._fill

    def spy(self, events):
        batches.append(list(events))
        return store_event_batch(self, events)

    monkeypatch.setattr(type(storage), "store_event_batch", spy)
    monkeypatch.setattr(batched, "_fill", lambda template, values, memo: fills.append(1) or fill(template, values, memo))
    register_tenants(instance, ["HADOOP"])
    materialize_index(resources, instance)
    figures = materialize_days(resources, instance, "HADOOP", "2024-06-20", "2024-07-12")  # 11 days before the records
    record_runless_materializations(instance, [m for day in ("2024-05-01", "2024-05-02", "2024-05-03") for m in empty_day_materializations("HADOOP", day, "test")])

    kinds = {e.dagster_event_type.value for events in batches for e in events}
    assert {"ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION"} <= kinds, kinds
    assert sum(len(events) for events in batches) >= len(figures) + 9
    events = [e for batch in batches for e in batch]
    texts = [t for batch in batches for t in batched.serialize_events(batch)]
    assert texts == [serialize_value(e) for e in events]
    # Templates did the work: most events were filled in, not serialised whole.
    assert len(fills) > 0.8 * len(events), (len(fills), len(events))
    assert all(deserialize_value(t) == e for t, e in zip(texts[:50], events[:50]))
    for batch in batches:
        assert storage._event_rows(batch) == [SqlEventLogStorage._event_to_row(storage, e) for e in batch]
        ids = list(range(1, len(batch) + 1))
        ours, dagsters = _Recorder(), _Recorder()
        storage._store_asset_event_tags(ours, batch, ids, storage._event_rows(batch))
        SqlEventLogStorage._store_asset_event_tags(storage, dagsters, batch, ids)
        assert ours.rows == dagsters.rows
    tag_rows = _Recorder()
    materialisations = [e for e in events if e.dagster_event_type.value == "ASSET_MATERIALIZATION"]
    storage._store_asset_event_tags(tag_rows, materialisations, list(range(len(materialisations))))
    assert {r["key"] for r in tag_rows.rows} == {"dagster/data_version", "dagster/partition/day", "dagster/partition/tenant"}


def test_an_event_its_template_does_not_give_back_is_serialised_whole(monkeypatch):
    """A template that does not reproduce its first event (here: a stand-in serialised twice)
    is dropped, and every event of that shape is written by serdes."""
    events = []
    for day in ("2024-05-01", "2024-05-02", "2024-05-03"):
        (materialization, *_) = empty_day_materializations("HADOOP", day, "test")
        events.append(_runless_event(materialization))
    assert batched.serialize_events(events) == [serialize_value(e) for e in events]
    monkeypatch.setattr(batched, "_template", lambda masked, slots: ([serialize_value(masked)], []))
    calls = []
    monkeypatch.setattr(batched, "_fill", lambda template, values, memo: calls.append(1) or "wrong")
    assert batched.serialize_events(events) == [serialize_value(e) for e in events]
    assert len(calls) == 1  # the check on the shape's second event; never used after


def _runless_event(materialization: dg.AssetMaterialization):
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry

    event = DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value, event_specific_data=StepMaterializationData(materialization), job_name="__RUNLESS__")
    return EventLogEntry(user_message="", level=20, job_name="__RUNLESS__", run_id="", error_info=None, timestamp=1764600000.123456, step_key=None, dagster_event=event)


@pytest.mark.parametrize("value", [1, 1.0, True, "1", None, {"a": 1}, {"a": True}, [1], (1,), dg.AssetKey("a")])
def test_shapes_differ_where_serdes_writes_differently(value):
    others = [v for v in [1, 1.0, True, "1", None, {"a": 1}, {"a": True}, [1], (1,), dg.AssetKey("a")] if serialize_value(v) != serialize_value(value)]
    assert all(batched._frozen(value) != batched._frozen(other) for other in others)
    assert batched._frozen(value) == batched._frozen(value)


def test_postgres_tag_rows_written_by_copy_are_dagsters(monkeypatch):
    """dagster-postgres with :class:`BatchedPostgresStorage`: the asset-event tag rows it writes
    with ``COPY`` are the rows Dagster's method would insert, values with quotes, commas, a
    newline, a backslash, non-ASCII and an empty string included."""
    use_local_postgres(monkeypatch, "va_test_tag_rows")
    overrides = postgres_storage_overrides()
    with dg.instance_for_test(overrides=overrides) as instance:
        storage = instance.event_log_storage
        assert type(storage).__name__ == "BatchedPostgresEventLogStorage"
        register_tenants(instance, ["HADOOP", "pallets/flask"])
        materializations = [m for day in ("2024-05-01", "2024-05-02") for tenant in ("HADOOP", "pallets/flask") for m in empty_day_materializations(tenant, day, "test")]
        odd = 'a,"b"\n\\c ü'
        materializations[0] = materializations[0]._replace(tags={**materializations[0].tags, "dagster/data_version": odd})
        materializations[1] = materializations[1]._replace(tags={**materializations[1].tags, "dagster/data_version": ""})
        batches = []
        store_event_batch = type(storage).store_event_batch
        monkeypatch.setattr(type(storage), "store_event_batch", lambda self, events: batches.append(list(events)) or store_event_batch(self, events))
        assert record_runless_materializations(instance, materializations) == len(materializations)
        (batch,) = batches
        with storage.index_connection() as conn:
            stored = [tuple(r) for r in conn.execute(sqlalchemy.text("SELECT event_id, asset_key, key, value, event_timestamp FROM asset_event_tags ORDER BY id"))]
            ids = [r[0] for r in conn.execute(sqlalchemy.text("SELECT id FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id"))]
        expected = _Recorder()
        SqlEventLogStorage._store_asset_event_tags(storage, expected, batch, ids)
        assert stored == [(r["event_id"], r["asset_key"], r["key"], r["value"], r["event_timestamp"]) for r in expected.rows]
        assert {r[3] for r in stored} >= {odd, ""} and len(stored) == 3 * len(materializations)
        with storage.index_connection() as conn:
            columns = ("run_id", "event", "dagster_event_type", "timestamp", "step_key", "asset_key", "partition")
            events = [dict(zip(columns, r)) for r in conn.execute(sqlalchemy.text(f"SELECT {', '.join(columns)} FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id"))]
        expected_rows = [SqlEventLogStorage._event_to_row(storage, e) for e in batch]
        for got, want in zip(events, expected_rows):
            assert {k: (got[k], want[k]) for k in got if got[k] != want[k]} == {}
        assert len(events) == len(expected_rows)  # sent with COPY
        (latest,) = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=materializations[-1].asset_key, asset_partitions=[materializations[-1].partition]), limit=1).records
        assert latest.asset_materialization == materializations[-1] and latest.storage_id == ids[-1]
        # Dagster reads them back: the tags of the materialisation that has that data version.
        (tags,) = storage.get_event_tags_for_asset(materializations[0].asset_key, filter_tags={"dagster/data_version": odd})
        assert tags["dagster/data_version"] == odd and tags["dagster/partition/tenant"] == "HADOOP"


def _check_evaluation_event(run_id: str, check_name: str, partition: str | None, passed: bool, metadata: dict, target_id: int | None, timestamp: float):
    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.events.log import EventLogEntry
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData

    evaluation = dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("milvus_vectors"), check_name=check_name, passed=passed, metadata=metadata, partition=partition,
        target_materialization_data=AssetCheckEvaluationTargetMaterializationData(storage_id=target_id, run_id=run_id, timestamp=timestamp) if target_id else None,
    )
    event = DagsterEvent(event_type_value=DagsterEventType.ASSET_CHECK_EVALUATION.value, event_specific_data=evaluation, job_name="tenant_day_vectors_job", step_key="tenant_day_vectors")
    return EventLogEntry(user_message="", level=20, job_name="tenant_day_vectors_job", run_id=run_id, error_info=None, timestamp=timestamp, step_key="tenant_day_vectors", dagster_event=event)


def test_postgres_check_execution_rows_written_by_copy_are_dagsters(monkeypatch):
    """dagster-postgres with :class:`BatchedPostgresStorage`: the ``asset_check_executions`` rows
    of a batch of check evaluations, sent with ``COPY``, equal the rows Dagster's own
    ``store_event`` writes for the same evaluations (another run id), NULL partitions and
    targets and metadata with quotes, commas, a newline, a backslash and non-ASCII included;
    and Dagster reads them back as each tenant-day's latest check execution."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
    from dagster._core.event_api import PartitionKeyFilter
    from dagster_postgres.event_log import PostgresEventLogStorage

    use_local_postgres(monkeypatch, "va_test_check_rows")
    overrides = postgres_storage_overrides()
    odd = 'a,"b"\n\\c ü'
    cases = [
        ("coverage", "2024-05-01|HADOOP", True, {"rows": 3, "note": odd}, 7),
        ("coverage", "2024-05-02|HADOOP", False, {"rows": 0, "note": ""}, None),
        ("drift", "2024-05-01|pallets/flask", True, {"score": 0.25}, 9),
        ("drift", None, False, {"why": "unpartitioned"}, None),
    ]
    with dg.instance_for_test(overrides=overrides) as instance:
        storage = instance.event_log_storage
        assert type(storage).__name__ == "BatchedPostgresEventLogStorage"
        ours = [_check_evaluation_event("run-ours", *case, timestamp=1764600000.5 + i) for i, case in enumerate(cases)]
        theirs = [_check_evaluation_event("run-dagster", *case, timestamp=1764600000.5 + i) for i, case in enumerate(cases)]
        copies = []
        copy_rows = batched._copy_rows
        monkeypatch.setattr(batched, "_copy_rows", lambda conn, table, rows: copies.append(table) or copy_rows(conn, table, rows))
        storage.store_event_batch(ours)
        assert "asset_check_executions" in copies
        for event in theirs:
            PostgresEventLogStorage.store_event(storage, event)
        columns = ("asset_key", "check_name", "partition", "run_id", "execution_status", "evaluation_event", "evaluation_event_timestamp", "evaluation_event_storage_id", "materialization_event_storage_id")
        with storage.index_connection() as conn:
            rows = {run: [dict(zip(columns, r)) for r in conn.execute(sqlalchemy.text(f"SELECT {', '.join(columns)} FROM asset_check_executions WHERE run_id = :run ORDER BY id"), {"run": run})] for run in ("run-ours", "run-dagster")}
            texts = dict(conn.execute(sqlalchemy.text("SELECT id, event FROM event_logs WHERE dagster_event_type = 'ASSET_CHECK_EVALUATION'")).fetchall())
        assert len(rows["run-ours"]) == len(rows["run-dagster"]) == len(cases)
        for got, want in zip(rows["run-ours"], rows["run-dagster"]):
            # Each row points at its own event (other ids), and holds that event's text.
            assert texts[got["evaluation_event_storage_id"]] == got["evaluation_event"]
            assert texts[want["evaluation_event_storage_id"]] == want["evaluation_event"]
            skip = {"run_id", "evaluation_event", "evaluation_event_storage_id"}
            assert {k: (got[k], want[k]) for k in columns if k not in skip and got[k] != want[k]} == {}
            assert got["evaluation_event"].replace("run-ours", "run-dagster") == want["evaluation_event"]
        assert {r["partition"] for r in rows["run-ours"]} >= {None, "2024-05-01|HADOOP"}
        latest = storage.get_latest_asset_check_execution_by_key([dg.AssetCheckKey(dg.AssetKey("milvus_vectors"), "coverage")])
        assert latest[dg.AssetCheckKey(dg.AssetKey("milvus_vectors"), "coverage")].status == AssetCheckExecutionRecordStatus.FAILED
        history = storage.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey("milvus_vectors"), "coverage"), limit=10, partition_filter=PartitionKeyFilter(key="2024-05-01|HADOOP"))
        assert sorted(r.run_id for r in history) == ["run-dagster", "run-ours"]
        (record,) = [r for r in history if r.run_id == "run-ours"]
        assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED and record.event.dagster_event.event_specific_data.metadata["note"].value == odd


def _planned_event(run_id: str, check_name: str, timestamp: float):
    """A check's plan as Dagster logs it without a partition subset (an unpartitioned run), which
    the storages store as a PLANNED ``asset_check_executions`` row."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationPlanned
    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.events.log import EventLogEntry

    planned = AssetCheckEvaluationPlanned(asset_key=dg.AssetKey("milvus_vectors"), check_name=check_name)
    event = DagsterEvent(event_type_value=DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED.value, event_specific_data=planned, job_name="tenant_day_vectors_job", step_key="tenant_day_vectors")
    return EventLogEntry(user_message="", level=20, job_name="tenant_day_vectors_job", run_id=run_id, error_info=None, timestamp=timestamp, step_key="tenant_day_vectors", dagster_event=event)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_batch_of_evaluations_updates_its_runs_planned_rows(backend, monkeypatch, tmp_path):
    """A check planned by Dagster for a run (a PLANNED row) and evaluated in a batch: the batch
    updates that row (one row of the check for the run, SUCCEEDED or FAILED), leaves another
    run's plan of the same check and this run's plan of another check PLANNED, and inserts rows
    for the evaluations nothing planned. The planned rows are looked up by (asset key, check,
    run), the leading columns of Dagster's unique index."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    if backend == "postgres":
        use_local_postgres(monkeypatch, "va_test_planned_rows")
        overrides = postgres_storage_overrides()
    else:
        overrides = {"storage": batched.storage_config(str(tmp_path))}
    with dg.instance_for_test(overrides=overrides) as instance:
        storage = instance.event_log_storage
        assert type(storage).__name__.startswith("Batched")
        for run_id, check_name in (("run-a", "coverage"), ("run-a", "drift"), ("run-b", "coverage")):
            storage.store_event(_planned_event(run_id, check_name, 1764600000.0))
        storage.store_event_batch([
            _check_evaluation_event("run-a", "coverage", None, False, {"rows": 1}, None, 1764600001.0),
            _check_evaluation_event("run-a", "retrievability", None, True, {"rows": 1}, None, 1764600002.0),
        ])
        with storage.index_connection() as conn:
            rows = sorted(conn.execute(sqlalchemy.text("SELECT run_id, check_name, execution_status FROM asset_check_executions")).fetchall())
        assert [tuple(r) for r in rows] == [
            ("run-a", "coverage", AssetCheckExecutionRecordStatus.FAILED.value),
            ("run-a", "drift", AssetCheckExecutionRecordStatus.PLANNED.value),
            ("run-a", "retrievability", AssetCheckExecutionRecordStatus.SUCCEEDED.value),
            ("run-b", "coverage", AssetCheckExecutionRecordStatus.PLANNED.value),
        ]
