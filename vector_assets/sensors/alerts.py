"""The alert sensor: failed checks -> re-materialisation, at most N times, then an alert.

It reads the check evaluations recorded since its cursor: each run's evaluation of a check
names the tenant-days it judged and those that failed, with severity
(:func:`vector_assets.checks.evaluate.tenant_day_outcomes`). A tenant-day with an ERROR-severity
failure gets a run of the tenant-day job; the next attempt waits ``base_delay * 2**(attempt-1)``
seconds (growing delay). When the partition's checks fail again after the last of
``max_attempts`` attempts, the sensor stops requesting, records an ``AssetObservation`` on
``milvus_vectors`` for that partition with ``exhausted: true`` (visible on the partition in the
UI) and sends an alert (log line, and the webhook when configured). A check that passes again
resets the partition's count.

Settings: ``VECTOR_ASSETS_RETRY_MAX_ATTEMPTS`` (default 3) and
``VECTOR_ASSETS_RETRY_BASE_DELAY_S`` (default 300).
"""

import itertools
import json
import os
import time
from typing import Iterator

import dagster as dg

from ..checks.evaluate import tenant_day_outcomes
from ..checks.specs import CHECKS
from ..jobs import vectors_job
from ..keys import MILVUS_VECTORS
from ..partitions import make_key, split_key
from ..resources import AlertResource


def retry_settings() -> tuple[int, float]:
    """``(max_attempts, base_delay_seconds)`` from the environment (defaults 3 and 300)."""
    return int(os.environ.get("VECTOR_ASSETS_RETRY_MAX_ATTEMPTS", "3")), float(os.environ.get("VECTOR_ASSETS_RETRY_BASE_DELAY_S", "300"))


def check_evaluations_newest_first(instance: dg.DagsterInstance, key: dg.AssetCheckKey, page: int = 1000) -> Iterator[tuple[int, object]]:
    """``(execution id, AssetCheckEvaluation)`` of check ``key``, newest first, read lazily from
    the instance's asset-check execution history page by page (executions that never produced
    an evaluation, e.g. planned ones, are left out)."""
    cursor = None
    while True:
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=page, cursor=cursor)
        for record in records:
            event = record.event.dagster_event if record.event else None
            if event is not None and event.event_type_value == "ASSET_CHECK_EVALUATION":
                yield record.id, event.event_specific_data
        if len(records) < page:
            return
        cursor = records[-1].id


def new_check_evaluations(instance: dg.DagsterInstance, after: int, page: int = 1000) -> list[tuple[int, object]]:
    """``(execution id, AssetCheckEvaluation)`` of every check of :data:`CHECKS` recorded
    after execution id ``after``, oldest first."""
    found = []
    for name, (asset_key, _, _) in CHECKS.items():
        found += itertools.takewhile(lambda item: item[0] > after, check_evaluations_newest_first(instance, dg.AssetCheckKey(asset_key, name), page))
    return sorted(found, key=lambda item: item[0])


@dg.sensor(job=vectors_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED, description="Re-materialises tenant-days whose checks fail at ERROR severity, at most N times with a growing delay; then marks them exhausted and alerts.")
def check_alert_sensor(context: dg.SensorEvaluationContext, alerts: AlertResource):
    max_attempts, base_delay = retry_settings()
    state = json.loads(context.cursor) if context.cursor else {"after": 0, "partitions": {}}
    partitions: dict[str, dict] = state["partitions"]
    for storage_id, evaluation in new_check_evaluations(context.instance, state["after"]):
        state["after"] = storage_id
        # A run's evaluation names the tenant-days it judged and those that failed (with severity).
        for tenant, day, passed, severity, _ in tenant_day_outcomes(evaluation):
            key = str(make_key(tenant, day))
            entry = partitions.get(key)
            if passed or severity != "ERROR":
                if entry is None:
                    continue
                failing = set(entry["failing"])
                if passed:
                    failing.discard(evaluation.check_name)
            else:
                entry = partitions.setdefault(key, {"attempts": 0, "last": 0.0, "failing": [], "awaiting": False, "exhausted": False})
                failing = set(entry["failing"]) | {evaluation.check_name}
                entry["awaiting"] = False
            entry["failing"] = sorted(failing)
            if not failing:
                partitions.pop(key)  # healthy again: the count resets

    now = time.time()
    requests, observations = [], []
    for key, entry in sorted(partitions.items()):
        if entry["exhausted"] or entry["awaiting"]:
            continue
        mk = make_key(*split_key(key))
        if entry["attempts"] >= max_attempts:
            entry["exhausted"] = True
            observations.append(dg.AssetObservation(asset_key=MILVUS_VECTORS, partition=mk, metadata={"exhausted": True, "attempts": entry["attempts"], "failing_checks": ", ".join(entry["failing"])}))
            alerts.send({"title": f"tenant-day {key} exhausted its {max_attempts} re-materialisations", "partition": key, "failing_checks": entry["failing"], "attempts": entry["attempts"]}, log=context.log)
            continue
        delay = base_delay * (2 ** entry["attempts"] - 1) if entry["attempts"] else 0.0
        if now - entry["last"] < delay:
            continue
        entry["attempts"] += 1
        entry["last"] = now
        entry["awaiting"] = True
        requests.append(dg.RunRequest(run_key=f"heal:{key}:{entry['attempts']}:{state['after']}", partition_key=mk, tags={"vector_assets/heal_attempt": str(entry["attempts"]), "vector_assets/failing_checks": ",".join(entry["failing"])}))
        context.log.warning(f"{key}: checks {', '.join(entry['failing'])} failed; re-materialisation {entry['attempts']}/{max_attempts}")
    return dg.SensorResult(run_requests=requests, asset_events=observations, cursor=json.dumps(state))
