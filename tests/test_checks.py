"""Asset checks, the audit job, the alert and new-data sensors and the schedule: each check
passes on real records and fails on crafted bad input."""

import datetime as dt
import http.server
import json
import threading

import dagster as dg
import numpy as np
import pytest

from vector_assets.store import milvus_store
from vector_assets.checks import evaluate
from vector_assets.checks.audit import audit_job
from vector_assets.assets import tenant_day_vectors
from vector_assets.embed.quality import QualityThresholds, vector_quality
from vector_assets.resources import AlertResource, EmbeddingModelResource
from vector_assets.sensors.alerts import AlertRaised
from vector_assets.sensors import check_alert_sensor, daily_schedule, new_data_sensor
from vector_assets.settings import DEFAULT_MODEL

from .conftest import register_tenants, run_events, sample_records, write_jsonl
from .test_pipeline import COLLECTION, materialize_index, rows_of

# ---- vector quality on real embeddings ------------------------------------------------------


@pytest.fixture(scope="module")
def real_vectors(embedding_model):
    texts = [r["summary"] + "\n" + r["description"] for r in sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-31")][:20]
    raw, normalised = embedding_model.encode_with_raw(texts)
    return raw, normalised


def test_vector_quality_passes_on_real_embeddings(real_vectors):
    raw, normalised = real_vectors
    verdict = vector_quality(raw, normalised, {"model": 384, "collection": 384})
    assert verdict.passed, verdict.metadata
    assert 0.1 < verdict.metadata["raw_norm_min"] <= verdict.metadata["raw_norm_max"] < 10
    assert np.allclose(np.linalg.norm(normalised, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("corruption, expected", [
    ("nan", "NaN/Inf values"),
    ("zero", "zero vectors"),
    ("dim", "dimension"),
    ("duplicate", "quality score"),
    ("norm", "raw norm outside"),
])
def test_vector_quality_fails_on_crafted_input(real_vectors, corruption, expected):
    raw, normalised = (a.copy() for a in real_vectors)
    dims = {"model": 384, "collection": 384}
    if corruption == "nan":
        raw[3, 5] = normalised[3, 5] = np.nan
    elif corruption == "zero":
        raw[2] = normalised[2] = 0.0
    elif corruption == "dim":
        dims["collection"] = 512
    elif corruption == "duplicate":
        raw[:5] = raw[0]
        normalised[:5] = normalised[0]
    elif corruption == "norm":
        raw[1] *= 50.0
    verdict = vector_quality(raw, normalised, dims)
    assert not verdict.passed and verdict.severity == "ERROR"
    assert expected in verdict.metadata["failures"]


def test_identical_texts_are_not_duplicates(real_vectors):
    raw, normalised = (a.copy() for a in real_vectors)
    raw[:5] = raw[0]
    normalised[:5] = normalised[0]
    texts = ["same"] * 5 + [f"t{i}" for i in range(5, len(raw))]
    assert vector_quality(raw, normalised, {"model": 384}, inputs=texts).passed


def test_texts_the_model_reads_alike_are_not_duplicates(embedding_model):
    """Seen on the full shared dataset: commits "Fix bug 2540" / "fix bug 2540" (the model is
    uncased) and issues that differ only past the 256-token window got identical vectors."""
    records = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-12-31")
    long_text = next(r["summary"] + "\n" + r["description"] for r in records if len((r["description"] or "").split()) > 400)
    texts = [
        long_text, long_text + "\nComment: the same issue, filed again",  # differ past the window
        records[0]["summary"], records[0]["summary"].upper(),  # differ in case only
        *[r["summary"] for r in records[1:4]],
    ]
    raw, normalised = embedding_model.encode_with_raw(texts)
    dims = {"model": 384}
    assert not vector_quality(raw, normalised, dims, inputs=texts).passed  # distinct strings, same vectors
    inputs = embedding_model.model_inputs(texts)
    assert inputs[0] == inputs[1] and inputs[2] == inputs[3] and inputs[0] != inputs[2]
    verdict = vector_quality(raw, normalised, dims, inputs=inputs)
    assert verdict.passed and verdict.metadata["duplicate_rate"] == 0.0, verdict.metadata


def test_text_frame_check_flags_the_partition_with_bad_rows():
    import pandas as pd

    frame = pd.DataFrame(
        [
            {"record_id": "a", "tenant": "T", "day": "2024-01-01", "partition_tenant": "T", "partition_day": "2024-01-01", "text_chars": 40},
            {"record_id": "b", "tenant": "T", "day": "2024-01-02", "partition_tenant": "T", "partition_day": "2024-01-02", "text_chars": 30},
            {"record_id": "b", "tenant": "U", "day": "2024-01-03", "partition_tenant": "T", "partition_day": "2024-01-03", "text_chars": 0},
        ]
    )
    verdicts = evaluate.text_frame_verdicts(frame)
    assert verdicts[("T", "2024-01-01")].passed
    assert not verdicts[("T", "2024-01-03")].passed
    failed = json.loads(verdicts[("T", "2024-01-03")].metadata["failed_expectations"])
    assert set(failed) == {
        "expect_column_values_to_be_unique(record_id)",
        "expect_column_pair_values_to_be_equal(tenant,partition_tenant)",
        "expect_column_values_to_be_between(text_chars)",
    }
    assert not verdicts[("T", "2024-01-02")].passed  # shares the duplicated id


# ---- through Dagster -------------------------------------------------------------------------


class NaNModel(EmbeddingModelResource):
    """The real model, whose output for texts containing ``poison`` is NaN (a forced failure)."""

    poison: str = "__never__"

    def encode_with_raw(self, texts):
        raw, normalised = super().encode_with_raw(texts)
        for i, text in enumerate(texts):
            if self.poison in text:
                raw[i] = normalised[i] = np.nan
        return raw, normalised


class SwappedModel(EmbeddingModelResource):
    """Another model's weights under the default model's id (a model swapped behind the id)."""

    @property
    def model_id(self) -> str:
        return DEFAULT_MODEL


def run_days(resources, instance, tenant, first, last=None):
    tags = {"dagster/asset_partition_range_start": f"{first}|{tenant}", "dagster/asset_partition_range_end": f"{last or first}|{tenant}"}
    return dg.materialize([tenant_day_vectors], resources=resources, instance=instance, tags=tags, raise_on_error=False)


class Outcome:
    """One tenant-day's outcome of one check, read back from a run's check evaluation."""

    def __init__(self, passed: bool, severity: str, figures: dict):
        self.passed = passed
        self.severity = dg.AssetCheckSeverity(severity) if severity else None
        self.metadata = figures


def evaluations(instance, result) -> dict[tuple[str, str], Outcome]:
    """``{(check name, "day|tenant"): Outcome}`` of every tenant-day a run's checks judged: one
    partitioned evaluation per check and tenant-day."""
    out = {}
    for event in run_events(instance, result.run_id, "ASSET_CHECK_EVALUATION"):
        ev = event.event_specific_data
        assert ev.partition is not None and (ev.check_name, ev.partition) not in out
        out[(ev.check_name, ev.partition)] = Outcome(ev.passed, "" if ev.passed else ev.severity.value, {k: getattr(v, "value", v) for k, v in ev.metadata.items()})
        out[(ev.check_name, ev.partition)].description = ev.description or ""
    return out


def test_checks_pass_on_real_records(resources, instance, workspace):
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-10")
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)
    materialize_index(resources, instance)
    result = run_days(resources, instance, "HADOOP", "2024-07-01", "2024-07-10")
    assert result.success
    evs = evaluations(instance, result)
    days = {r["day"] for r in jira}
    assert {name for name, _ in evs} >= {"text_frame_valid", "vector_quality", "coverage", "coherence", "retrievability", "failure_rate", "processing_time", "drift"}
    for name in ("text_frame_valid", "vector_quality", "coverage", "coherence", "retrievability", "failure_rate"):
        for day in days:
            ev = evs[(name, f"{day}|HADOOP")]
            assert ev.passed, (name, day, ev.metadata)
    # One evaluation per check and tenant-day with records; empty days are not evaluated.
    assert {p for name, p in evs if name == "coverage"} == {f"{day}|HADOOP" for day in days}
    assert all(e.passed for e in evs.values()), {k: e.metadata for k, e in evs.items() if not e.passed}
    # Dagster keeps each tenant-day's status where the UI reads it (the partitioned check's
    # records): read back through vector_assets.checks.outcomes.
    from vector_assets.checks import outcomes

    current = {(o.check, o.tenant, o.day): o.status for o in outcomes.latest_outcomes(instance, tenants=["HADOOP"])}
    assert {d for (c, _, d), status in current.items() if c == "coverage" and status == "passed"} == days
    # Every tenant-day of the range is materialised, days without records too (in sync, empty);
    # the days with records carry their own figures.
    mats = {}
    for event in run_events(instance, result.run_id, "ASSET_MATERIALIZATION"):
        m = event.event_specific_data.materialization
        mats[(m.asset_key.to_user_string(), str(m.partition))] = m
    range_days = [f"2024-07-{d:02d}" for d in range(1, 11)]
    for asset in ("source_records", "extracted_text", "milvus_vectors"):
        assert {p for a, p in mats if a == asset} == {f"{d}|HADOOP" for d in range_days}
    for day in days:
        figures = mats[("source_records", f"{day}|HADOOP")].metadata
        assert figures["records_read"].value == sum(r["day"] == day for r in jira)
    empty = next(d for d in range_days if d not in days)
    assert "records_read" not in mats[("source_records", f"{empty}|HADOOP")].metadata
    # Stored as the step's own events (vector_assets.instance.runs.record_step_events): the run,
    # job, step and its logging tags, the partition's dimension tags; Dagster reads them as the
    # run's materialisations, and each tenant-day is in sync, a day with records and an empty one.
    entries = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert len(entries) == 3 * len(range_days)
    for entry in entries:
        event = entry.dagster_event
        assert (entry.run_id, entry.step_key, entry.job_name) == (result.run_id, "tenant_day_vectors", result.dagster_run.job_name)
        assert (event.step_key, event.step_kind_value, event.logging_tags["step_key"]) == ("tenant_day_vectors", "COMPUTE", "tenant_day_vectors")
        tags = event.event_specific_data.materialization.tags
        day, tenant = str(event.partition).split("|")
        assert (tags["dagster/partition/day"], tags["dagster/partition/tenant"]) == (day, tenant)
        assert {"dagster/code_version", "dagster/data_version"} <= set(tags)
    assert instance.get_materialized_partitions(dg.AssetKey("milvus_vectors")) >= {f"{d}|HADOOP" for d in range_days}
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from vector_assets.assets import landing_index

    resolver = get_stale_status_resolver(instance, [landing_index, tenant_day_vectors])
    for asset in ("source_records", "extracted_text", "milvus_vectors"):
        for day in (sorted(days)[0], empty):
            assert resolver.get_status(dg.AssetKey(asset), f"{day}|HADOOP") == StaleStatus.FRESH, resolver.get_stale_causes(dg.AssetKey(asset), f"{day}|HADOOP")


def test_blocking_check_stops_only_its_partition(resources, instance, workspace):
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-10")
    poisoned = jira[0]
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)
    materialize_index(resources, instance)
    bad = {**resources, "embedding_model": NaNModel(poison=poisoned["summary"])}
    result = run_days(bad, instance, "HADOOP", "2024-07-01", "2024-07-10")
    assert not result.success  # a blocking ERROR fails the step after all partitions ran
    ev = evaluations(instance, result)[("vector_quality", f"{poisoned['day']}|HADOOP")]
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR and "NaN" in ev.metadata["failures"]
    client = resources["milvus"].get_client()
    assert rows_of(client, "HADOOP", poisoned["day"]) == []
    others = [r for r in jira if r["day"] != poisoned["day"]]
    assert len(rows_of(client, "HADOOP")) == len(others)
    # Only the blocked tenant-day fails the check; only the written tenant-days are recorded.
    failing = [p for (name, p), e in evaluations(instance, result).items() if name == "vector_quality" and not e.passed]
    assert failing == [f"{poisoned['day']}|HADOOP"]
    assert "not written" in evaluations(instance, result)[("vector_quality", failing[0])].description
    materialised = instance.get_materialized_partitions(dg.AssetKey("milvus_vectors"))
    assert f"{poisoned['day']}|HADOOP" not in materialised and {f"{r['day']}|HADOOP" for r in others} <= materialised


def test_too_many_quarantined_records_fail_the_failure_rate(resources, instance, workspace):
    good = sample_records("bugzilla_seamonkey.jsonl", "SeaMonkey", "2024-01-01", "2024-01-31")[:3]
    day = good[0]["day"]
    bad = dict(good[0], id="bugzilla:SeaMonkey:bad", source="trello")
    write_jsonl(workspace["landing"] / "bugs.jsonl", [g for g in good if g["day"] == day] + [bad])
    materialize_index(resources, instance)
    ev = evaluations(instance, run_days(resources, instance, "SeaMonkey", day))[("failure_rate", f"{day}|SeaMonkey")]
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR and ev.metadata["failure_rate"] > 0.05


def test_a_failures_description_states_the_runs_configured_thresholds(resources, instance, workspace):
    """The description of a failing evaluation (what the UI shows) states the thresholds the run
    judged with, its ``quality`` resource, not the defaults: before, a WARN under a configured
    ERROR threshold of 60% was described as "ERROR above 5%"."""
    good = sample_records("bugzilla_seamonkey.jsonl", "SeaMonkey", "2024-01-01", "2024-01-31")[:3]
    day = good[0]["day"]
    bad = dict(good[0], id="bugzilla:SeaMonkey:bad", source="trello")
    write_jsonl(workspace["landing"] / "bugs.jsonl", [g for g in good if g["day"] == day] + [bad])
    materialize_index(resources, instance)
    lenient = {**resources, "quality": QualityThresholds(failure_rate_pass=0.02, failure_rate_error=0.6)}
    ev = evaluations(instance, run_days(lenient, instance, "SeaMonkey", day))[("failure_rate", f"{day}|SeaMonkey")]
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN and 0.02 < ev.metadata["failure_rate"] <= 0.6
    assert "WARN from 2%, ERROR above 60%" in ev.description, ev.description


class Webhook:
    def __init__(self):
        self.received = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                outer.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def audit(resources, instance, **config):
    result = audit_job.execute_in_process(instance=instance, resources=resources, run_config={"ops": {"audit_tenant_days": {"config": config}}} if config else None)
    assert result.success
    return evaluations(instance, result)


def test_deleted_rows_fail_coverage_and_the_sensor_heals_them(resources, instance, workspace, monkeypatch):
    monkeypatch.setenv("VECTOR_ASSETS_RETRY_BASE_DELAY_S", "0")
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-10")
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)
    materialize_index(resources, instance)
    assert run_days(resources, instance, "HADOOP", "2024-07-01", "2024-07-10").success
    day = max({r["day"] for r in jira}, key=lambda d: sum(r["day"] == d for r in jira))
    client = resources["milvus"].get_client()
    victims = [r["pk"] for r in rows_of(client, "HADOOP", day)][:2]
    client.delete(COLLECTION, filter=f"pk in {json.dumps(victims)}")
    client.flush(COLLECTION)

    evs = audit(resources, instance)
    cov = evs[("coverage", f"{day}|HADOOP")]
    assert not cov.passed and cov.severity == dg.AssetCheckSeverity.ERROR and cov.metadata["missing_rows"] == len(victims)
    assert all(ev.passed for (name, key), ev in evs.items() if key != f"{day}|HADOOP")

    alerts = AlertResource()
    ctx = dg.build_sensor_context(instance=instance, resources={"alerts": alerts})
    result = check_alert_sensor(ctx)
    assert [r.partition_key for r in result.run_requests] == [f"{day}|HADOOP"]
    request = result.run_requests[0]
    healed = dg.materialize([tenant_day_vectors], resources=resources, instance=instance, partition_key=request.partition_key, tags=request.tags)
    assert healed.success
    assert len(rows_of(client, "HADOOP", day)) == sum(r["day"] == day for r in jira)
    assert evaluations(instance, healed)[("coverage", f"{day}|HADOOP")].passed
    again = check_alert_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"alerts": alerts}))
    assert again.run_requests == [] and json.loads(again.cursor)["tenant_days"] == {}


def test_swapped_model_fails_coherence(resources, instance, workspace, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer, models

    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-05")
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)
    materialize_index(resources, instance)
    assert run_days(resources, instance, "HADOOP", "2024-07-01", "2024-07-05").success
    base = resources["embedding_model"].get_model()
    torch.manual_seed(1)
    other = SentenceTransformer(modules=[base[0], base[1], models.Dense(384, 384, activation_function=torch.nn.Identity()), models.Normalize()], device="cpu")
    other.save(str(tmp_path / "swapped"))
    swapped = {**resources, "embedding_model": SwappedModel(model=str(tmp_path / "swapped")), "quality": QualityThresholds(coherence_sample=50)}
    evs = audit(swapped, instance)
    failures = [ev for (name, _), ev in evs.items() if name == "coherence" and not ev.passed]
    assert failures and all(ev.severity == dg.AssetCheckSeverity.ERROR and ev.metadata["mean_cosine"] < 0.85 for ev in failures)
    assert all(ev.passed for (name, _), ev in evs.items() if name == "coverage")


def test_alert_sensor_respects_the_attempt_budget_then_alerts(resources, instance, workspace, monkeypatch):
    monkeypatch.setenv("VECTOR_ASSETS_RETRY_BASE_DELAY_S", "0")
    monkeypatch.setenv("VECTOR_ASSETS_RETRY_MAX_ATTEMPTS", "2")
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-03")
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)
    materialize_index(resources, instance)
    poisoned = jira[0]
    key = f"{poisoned['day']}|HADOOP"
    bad = {**resources, "embedding_model": NaNModel(poison=poisoned["summary"])}
    hook = Webhook()
    alerts = AlertResource(webhook_url=hook.url)
    try:
        assert not run_days(bad, instance, "HADOOP", poisoned["day"]).success
        cursor = None
        attempts = []

        def tick():
            return check_alert_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"alerts": alerts}))

        for _ in range(2):
            result = tick()
            cursor = result.cursor
            attempts.append([r.partition_key for r in result.run_requests])
            assert json.loads(cursor)["tenant_days"][f"HADOOP|{poisoned['day']}"]["last_attempt"].endswith("Z")  # ISO times
            for request in result.run_requests:  # the re-run fails again: the model still yields NaN
                assert not run_days(bad, instance, "HADOOP", poisoned["day"]).success
        assert attempts == [[key], [key]]
        # The attempts are spent: the tick fails (red under Automation), naming the tenant-day.
        with pytest.raises(AlertRaised, match=f"HADOOP\\|{poisoned['day']}.*after 2 re-materialisations"):
            tick()
        obs = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("milvus_vectors"), asset_partitions=[key]), limit=1).records[0].asset_observation
        assert obs.metadata["alert"].value == "exhausted" and "NaN" in obs.metadata["reason"].value
        assert len(hook.received) == 1 and hook.received[0]["partition"] == f"HADOOP|{poisoned['day']}" and "vector_quality" in hook.received[0]["failing_checks"]
        # The failed tick kept its cursor: the next tick reads the same failure, finds the alert
        # already sent and stays quiet (no run, no second webhook).
        quiet = tick()
        assert quiet.run_requests == [] and len(hook.received) == 1
        assert f"HADOOP|{poisoned['day']}: alerted (exhausted)" in quiet.skip_reason.skip_message
        assert json.loads(quiet.cursor)["tenant_days"][f"HADOOP|{poisoned['day']}"]["state"] == "alerted"
    finally:
        hook.close()


def test_input_failures_alert_at_once_naming_the_line(resources, instance, workspace, monkeypatch):
    """A failure_rate ERROR from bad landing lines is not re-run (no re-run heals it): the
    alert sensor's first tick alerts, naming the file and line; the fixed line heals it."""
    monkeypatch.setenv("VECTOR_ASSETS_RETRY_BASE_DELAY_S", "0")
    good = sample_records("bugzilla_seamonkey.jsonl", "SeaMonkey", "2024-01-01", "2024-01-31")[:3]
    day = good[0]["day"]
    bad = dict(good[0], id="bugzilla:SeaMonkey:bad", source="trello")
    path = write_jsonl(workspace["landing"] / "bugs.jsonl", [g for g in good if g["day"] == day] + [bad])
    bad_line = len([g for g in good if g["day"] == day]) + 1
    materialize_index(resources, instance)
    assert run_days(resources, instance, "SeaMonkey", day).success  # failure_rate is not blocking
    hook = Webhook()
    try:
        context = dg.build_sensor_context(instance=instance, resources={"alerts": AlertResource(webhook_url=hook.url)})
        with pytest.raises(AlertRaised, match=f"bugs.jsonl line {bad_line}"):
            check_alert_sensor(context)
        assert hook.received[0]["kind"] == "input" and hook.received[0]["attempts"] == 0
    finally:
        hook.close()
    write_jsonl(path, [g for g in good if g["day"] == day])
    materialize_index(resources, instance)
    assert run_days(resources, instance, "SeaMonkey", day).success
    from vector_assets.checks import outcomes

    assert {o.check: o.status for o in outcomes.latest_outcomes(instance, partitions=[("SeaMonkey", day)])}["failure_rate"] == "passed"


def test_new_data_sensor_registers_tenants_and_requests_only_changed_days(resources, instance, workspace):
    landing = resources["landing"]
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-10")
    write_jsonl(workspace["landing"] / "jira.jsonl", jira)

    def tick(cursor):
        return new_data_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"landing": landing}))

    first = tick(None)
    assert first.dynamic_partitions_requests[0].partition_keys == ["HADOOP"]
    requested = {(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in first.run_requests}
    covered = set()
    for start, end in requested:
        d0, d1 = dt.date.fromisoformat(start.split("|")[0]), dt.date.fromisoformat(end.split("|")[0])
        covered |= {(d0 + dt.timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)}
    # One run over the tenant's days (empty days between them are materialised too, in sync).
    days = sorted(r["day"] for r in jira)
    d0 = dt.date.fromisoformat(days[0])
    assert len(requested) == 1 and covered == {(d0 + dt.timedelta(days=i)).isoformat() for i in range((dt.date.fromisoformat(days[-1]) - d0).days + 1)}
    # The refresh is recorded on landing_index (its counts, where the UI shows them).
    assert [e.asset_key.to_user_string() for e in first.asset_events] == ["landing_index"]
    assert first.asset_events[0].metadata["tenant_days"].value == len(set(days))
    instance.add_dynamic_partitions("tenants", ["HADOOP"])

    unchanged = tick(first.cursor)
    assert not unchanged.run_requests and unchanged.skip_reason and not unchanged.asset_events

    bugs = sample_records("bugzilla_seamonkey.jsonl", "SeaMonkey", "2024-01-01", "2024-01-05")
    write_jsonl(workspace["landing"] / "bugs.jsonl", bugs)
    third = tick(first.cursor)
    assert third.dynamic_partitions_requests[0].partition_keys == ["SeaMonkey"]
    assert {r.tags["dagster/asset_partition_range_start"].split("|")[1] for r in third.run_requests} == {"SeaMonkey"}
    instance.add_dynamic_partitions("tenants", ["SeaMonkey"])

    edited = [dict(jira[0], summary=jira[0]["summary"] + " (edited)")] + jira[1:]
    write_jsonl(workspace["landing"] / "jira.jsonl", edited)
    fourth = tick(third.cursor)
    assert not fourth.dynamic_partitions_requests
    assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in fourth.run_requests] == [(f"{jira[0]['day']}|HADOOP", f"{jira[0]['day']}|HADOOP")]


def test_daily_schedule_runs_only_tenant_days_that_need_it(resources, instance, workspace, hadoop_days):
    """Yesterday's tenant-days (issue #20 item 2): a run only for a tenant whose lines the
    collection does not hold as they are; tenants without records that day are recorded as
    materialised (empty) without a run; a tenant-day already written is left alone; an edit
    makes it a run again."""
    register_tenants(instance, ["HADOOP", "pallets/flask", "SeaMonkey"])
    schedule_resources = {k: resources[k] for k in ("landing", "milvus", "embedding_model")}

    def tick(at=dt.datetime(2024, 7, 3, 0, 15, tzinfo=dt.timezone.utc), on=instance):
        with dg.build_schedule_context(instance=on, scheduled_execution_time=at, resources=schedule_resources) as context:
            return daily_schedule(context)

    first = tick()
    assert [r.partition_key for r in first] == ["2024-07-02|HADOOP"]
    # The tenants without records that day: each asset materialised for their tenant-day, no run.
    for asset in ("source_records", "extracted_text", "milvus_vectors"):
        assert {"2024-07-02|pallets/flask", "2024-07-02|SeaMonkey"} <= instance.get_materialized_partitions(dg.AssetKey(asset))
    assert not instance.get_runs()
    mat = instance.get_latest_materialization_event(dg.AssetKey("milvus_vectors")).asset_materialization
    assert mat.metadata["rows"].value == 0 and mat.metadata["recorded_by"].value == "daily_schedule"
    # With the provenance a run writes: in sync in the UI, not "Unsynced".
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from vector_assets.assets import landing_index

    resolver = get_stale_status_resolver(instance, [landing_index, tenant_day_vectors])
    for asset in ("source_records", "extracted_text", "milvus_vectors"):
        assert resolver.get_status(dg.AssetKey(asset), "2024-07-02|SeaMonkey") == StaleStatus.FRESH, resolver.get_stale_causes(dg.AssetKey(asset), "2024-07-02|SeaMonkey")

    assert dg.materialize([tenant_day_vectors], partition_key="2024-07-02|HADOOP", resources=resources, instance=instance).success
    second = tick()
    assert isinstance(second, dg.SkipReason) and "1 already in sync" in second.skip_message

    day = [r for r in hadoop_days if r["day"] == "2024-07-02"]
    write_jsonl(workspace["landing"] / "jira.jsonl", [dict(r, summary=r["summary"] + " (edited)") if r is day[0] else r for r in hadoop_days])
    assert [r.partition_key for r in tick()] == ["2024-07-02|HADOOP"]
    # Two tenants with lines to write that day, neighbours in the tenant dimension: one run over
    # both (issue #20 item 2), and it writes both tenant-days.
    commit = dict(sample_records("git_commits.jsonl", "pallets/flask", "2024-01-01", "2024-12-31")[0], author_date_utc="2024-07-02T09:00:00Z", day="2024-07-02")
    write_jsonl(workspace["landing"] / "git.jsonl", [commit])
    (both,) = tick()
    assert both.partition_key is None and both.tags == {"dagster/asset_partition_range_start": "2024-07-02|HADOOP", "dagster/asset_partition_range_end": "2024-07-02|pallets/flask"}
    assert dg.materialize([tenant_day_vectors], tags=both.tags, resources=resources, instance=instance).success
    assert rows_of(resources["milvus"].get_client(), "pallets/flask", "2024-07-02") and isinstance(tick(), dg.SkipReason)
    with dg.instance_for_test() as empty:
        assert "no tenants registered" in tick(on=empty).skip_message


def test_new_data_sensor_sees_a_fix_that_another_refresh_found_first(resources, instance, workspace):
    """A fixed line heals its tenant-day through the new-data sensor even when a run of another
    tenant refreshed the landing index first (every run does): the sensor reads the index's change
    log since its last tick, not only what its own refresh found."""
    landing = resources["landing"]
    jira = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-09-05", "2024-09-05")
    bad = dict(jira[0], summary="copy")
    bad.pop("id")
    path = write_jsonl(workspace["landing"] / "jira.jsonl", jira + [bad])
    write_jsonl(workspace["landing"] / "bugs.jsonl", sample_records("bugzilla_seamonkey.jsonl", "SeaMonkey", "2024-10-13", "2024-10-13"))

    def tick(cursor):
        return new_data_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"landing": landing}))

    first = tick(None)
    register_tenants(instance, ["HADOOP", "SeaMonkey"])
    assert evaluations(instance, run_days(resources, instance, "HADOOP", "2024-09-05"))[("failure_rate", "2024-09-05|HADOOP")].severity == dg.AssetCheckSeverity.ERROR
    write_jsonl(path, jira)  # the line fixed
    # A run of SeaMonkey refreshes the index before the sensor's next tick: it finds the fix.
    assert run_days(resources, instance, "SeaMonkey", "2024-10-13").success
    second = tick(first.cursor)
    assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in second.run_requests] == [("2024-09-05|HADOOP", "2024-09-05|HADOOP")]
    assert run_days(resources, instance, "HADOOP", "2024-09-05").success
    from vector_assets.checks import outcomes

    assert {o.check: o.status for o in outcomes.latest_outcomes(instance, partitions=[("HADOOP", "2024-09-05")])}["failure_rate"] == "passed"
    assert not tick(second.cursor).run_requests
