"""The code location loads as the UI and `dg` load it."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from vector_assets.definitions import defs

REPO = Path(__file__).resolve().parents[1]


def test_workspace_validates(tmp_path):
    exe = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, capture_output=True, text=True, env={**__import__("os").environ, "DAGSTER_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "All code locations passed validation" in proc.stderr + proc.stdout


def test_graph_partitions_policy_and_automation():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"landing_index", "source_records", "extracted_text", "milvus_vectors", "search_quality", "index_tuning"}
    vectors = defs.resolve_assets_def("milvus_vectors")
    assert isinstance(vectors.partitions_def, dg.MultiPartitionsDefinition)
    assert {d.name for d in vectors.partitions_def.partitions_defs} == {"tenant", "day"}
    assert vectors.backfill_policy == dg.BackfillPolicy.single_run()  # one run per range (a rectangle of tenants x days)
    assert all(spec.partitions_def == vectors.partitions_def for spec in vectors.check_specs)  # a status per tenant-day (#18)
    assert {c.name for c in vectors.check_specs} == {"text_frame_valid", "vector_quality", "coverage", "coherence", "retrievability", "processing_time", "drift", "failure_rate"}
    assert {s.name for s in defs.sensors} == {"check_alert_sensor", "new_data_sensor", "search_quality_sensor"}
    assert {s.name for s in defs.schedules} == {"daily_schedule", "audit_schedule", "search_quality_schedule"}
    quality = defs.resolve_assets_def("search_quality")
    assert quality.partitions_def == vectors.partitions_def.get_partitions_def_for_dimension("tenant")  # a status per tenant (#21)
    assert [c.name for c in quality.check_specs] == ["retrieval_quality"] and all(c.partitions_def == quality.partitions_def for c in quality.check_specs)


def test_the_dagster_internals_we_rely_on_are_still_there():
    """Measured shortcuts use Dagster internals (their docstrings give the figures):
    ``instance.runs.record_step_events`` stores a step's materialisations and check evaluations
    straight through the instance as ``DagsterEvent.from_step`` would log them, in event batches;
    ``assets.search_quality.add_partition_metadata`` writes a run's per-tenant figures into the
    step's metadata accumulator at once (``add_asset_metadata`` cost 32 ms a call at 1,151
    partitions); ``instance.planning`` resolves a run's partitions once. They fall back to the public, slower
    APIs when the internals are gone; this test fails loudly instead, so that a Dagster upgrade
    that removes them is seen, not paid for."""
    import dataclasses
    import inspect

    from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, StepMaterializationData, generate_event_batch_id
    from dagster._core.events.log import EventLogEntry
    from dagster._core.execution.context.metadata_logging import AssetMetadataHandle, OutputMetadataAccumulator
    from dagster._core.execution.context.system import StepExecutionContext

    # assets.search_quality.add_partition_metadata
    assert "self._metadata_accumulator = OutputMetadataAccumulator.empty()" in inspect.getsource(StepExecutionContext.__init__)
    assert [f.name for f in dataclasses.fields(OutputMetadataAccumulator)] == ["per_output_metadata"] if dataclasses.is_dataclass(OutputMetadataAccumulator) else "per_output_metadata" in OutputMetadataAccumulator.__annotations__
    handle = AssetMetadataHandle(asset_key=dg.AssetKey("a"), partition_key="T")
    assert (handle.asset_key, handle.partition_key) == (dg.AssetKey("a"), "T")

    # instance.runs.record_step_events: the fields from_step fills, and where it takes them
    source = inspect.getsource(DagsterEvent.from_step)
    for field in ("job_name=step_context.job_name", "step_handle=step_context.step.handle", "node_handle=step_context.step.node_handle",
                  "step_kind_value=step_context.step.kind.value", "logging_tags=step_context.event_tags", "pid=os.getpid()"):
        assert field in source, field
    assert {"event_type_value", "job_name", "step_handle", "node_handle", "step_kind_value", "logging_tags", "event_specific_data", "message", "pid"} <= set(inspect.signature(DagsterEvent).parameters)
    assert {"user_message", "level", "job_name", "run_id", "error_info", "timestamp", "step_key", "dagster_event"} <= set(inspect.signature(EventLogEntry).parameters)
    assert list(inspect.signature(StepMaterializationData).parameters)[:1] == ["materialization"]
    assert all(hasattr(StepExecutionContext, name) for name in ("job_name", "step", "event_tags", "instance", "run_id"))
    assert callable(generate_event_batch_id) and set(inspect.signature(DagsterEventBatchMetadata).parameters) >= {"id", "is_end"}
    assert "batch_metadata" in inspect.signature(dg.DagsterInstance.handle_new_event).parameters
    # instance.planning: the plan of a run resolves its partitions through this method, per asset
    from dagster._core.instance.runs.run_domain import RunDomain
    from dagster._core.storage.dagster_run import DagsterRun

    from vector_assets.instance import planning

    assert list(inspect.signature(planning._ORIGINAL).parameters) == ["self", "partitions_def"]
    assert inspect.getsource(RunDomain.get_materialization_planned_events_for_asset).count("dagster_run.get_resolved_partitions_subset_for_events(") == 1
    assert planning.installed() or DagsterRun.get_resolved_partitions_subset_for_events is planning._ORIGINAL
    # instance.planning: a backfill's run requests are its subset's ranges (one run per range)
    from dagster._core.definitions import automation_tick_evaluation_context as ticks

    assert list(inspect.signature(planning._ORIGINAL_RANGES).parameters) == ["self", "partitions_def"]
    assert "partition_subset.get_partition_key_ranges(partitions_def)" in inspect.getsource(ticks._build_run_requests_with_backfill_policy)


def test_a_ranged_runs_partitions_are_resolved_once_when_planned(tmp_path):
    """Creating a run over a tenant-day range logs one planned event per asset and check, and
    Dagster resolves the range's partition keys for each (11 times for ``tenant_day_vectors``);
    the storages install :mod:`vector_assets.instance.planning`, which resolves it once per run.
    Same subset as Dagster's own method, and a new resolution for another run or range."""
    import uuid
    from unittest import mock

    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from vector_assets.instance import planning
    from vector_assets.instance.storage import storage_config
    from vector_assets.partitions import TENANTS, day_partitions, tenant_day_partitions

    def ranged_run(start: str, end: str) -> dg.DagsterRun:
        return dg.DagsterRun(job_name="tenant_day_vectors_job", run_id=str(uuid.uuid4()), tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end})

    with dg.instance_for_test(overrides={"storage": storage_config(str(tmp_path))}) as instance:
        assert planning.installed()  # by the storage's constructor
        instance.add_dynamic_partitions(TENANTS, ["A", "B", "C"])
        original = dg.MultiPartitionsDefinition.get_partition_keys_in_range
        with partition_loading_context(dynamic_partitions_store=instance), mock.patch.object(dg.MultiPartitionsDefinition, "get_partition_keys_in_range", autospec=True, side_effect=original) as resolve:
            run = ranged_run("2024-01-01|A", "2024-01-03|B")
            first = run.get_resolved_partitions_subset_for_events(tenant_day_partitions)
            # an equal definition (as each asset node of a remote asset graph holds its own)
            equal = dg.MultiPartitionsDefinition({"tenant": dg.DynamicPartitionsDefinition(name=TENANTS), "day": day_partitions})
            assert run.get_resolved_partitions_subset_for_events(equal) is first
            assert resolve.call_count == 1
            assert sorted(first.get_partition_keys()) == sorted(f"{d}|{t}" for d in ("2024-01-01", "2024-01-02", "2024-01-03") for t in ("A", "B"))
            assert planning._ORIGINAL(run, tenant_day_partitions) == first  # what Dagster's method gives
            other = ranged_run("2024-01-02|B", "2024-01-02|C").get_resolved_partitions_subset_for_events(tenant_day_partitions)
            assert sorted(other.get_partition_keys()) == ["2024-01-02|B", "2024-01-02|C"]
            assert ranged_run("2024-01-01|A", "2024-01-01|A").get_resolved_partitions_subset_for_events(None) is None
