"""The alert sensor: failing checks -> re-materialisation when a re-run can heal them, an alert
when it cannot or when the attempts run out.

It reads the per-tenant-day check statuses that changed since its cursor
(:func:`vector_assets.checks.outcomes.latest_outcomes`, Dagster's partitioned check records).
For a tenant-day failing at ERROR:

* **Input failures** (:data:`vector_assets.checks.specs.INPUT_CHECKS`: bad landing lines
  driving ``failure_rate``, texts failing ``text_frame_valid``, a dimension mismatch in
  ``vector_quality``) are not re-run, since no re-run heals them: the sensor alerts at once, naming the
  file and line to fix. A fixed input heals the tenant-day through the new-data sensor.
* **Other failures** (rows missing after a write, coherence, retrievability; a heal run that
  itself failed, e.g. the store unreachable) get a run of the tenant-day, at most
  ``max_attempts`` times, attempt ``n + 1`` no sooner than ``base_delay * 2**(n-1)`` seconds after
  attempt ``n``. When the tenant-day still fails after the last attempt, the sensor alerts.

An alert is a log line, a POST to the webhook when configured, an ``AssetObservation`` on the
tenant-day of ``milvus_vectors`` (``alert``: ``exhausted`` or ``input``, with the reason) and a
**failed tick** (red under Automation) whose error names the tenant-days. Dagster keeps a failed
tick's cursor unchanged, so the next tick reads the same outcomes again: it finds the
observation recorded after the failing evaluation, does not alert twice and moves on.

Ticks say what the sensor did and waits for (``HADOOP|2024-09-05: coverage failing, attempt 1 of
3 done; next attempt after 01:25:00 UTC``); the cursor is JSON with ISO times.

A check that passes again (or a tenant-day materialised again without records to judge) resets
the tenant-day's count.

Settings: ``VECTOR_ASSETS_RETRY_MAX_ATTEMPTS`` (default 3) and
``VECTOR_ASSETS_RETRY_BASE_DELAY_S`` (default 300).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import dagster as dg

from ..checks.outcomes import Outcome, latest_outcomes
from ..checks.specs import INPUT_CHECKS
from ..jobs import vectors_job
from ..keys import MILVUS_VECTORS
from ..partitions import key_string, make_key
from ..resources import AlertResource


class AlertRaised(Exception):
    """Raised by :func:`check_alert_sensor` to fail its tick when it sent alerts (the tick turns
    red under Automation, with this message)."""


def retry_settings() -> tuple[int, float]:
    """``(max_attempts, base_delay_seconds)`` from the environment (defaults 3 and 300)."""
    return int(os.environ.get("VECTOR_ASSETS_RETRY_MAX_ATTEMPTS", "3")), float(os.environ.get("VECTOR_ASSETS_RETRY_BASE_DELAY_S", "300"))


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _hhmm(seconds: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(seconds))


def is_input_failure(outcome: Outcome) -> bool:
    """Whether ``outcome`` (a failure) comes from the landing input, which no re-run heals:
    ``failure_rate`` and ``text_frame_valid``, and ``vector_quality`` when a dimension differs
    (NaN or zero vectors may be a model fault, and are re-run)."""
    if outcome.check not in INPUT_CHECKS:
        return False
    if outcome.check == "vector_quality":
        return "dimension" in str(outcome.figures.get("failures", "")) or "dimension" in outcome.description
    return True


def _already_alerted(instance: dg.DagsterInstance, partition: str, after_storage_id: int) -> bool:
    """Whether an alert observation was recorded on ``partition`` after its failing evaluation
    (``after_storage_id``): the tick that sent it failed, so its cursor was not kept."""
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=MILVUS_VECTORS, asset_partitions=[partition], after_storage_id=after_storage_id), limit=5).records
    return any("alert" in (r.asset_observation.metadata if r.asset_observation else {}) for r in records)


def _alert(context, alerts: AlertResource, key: str, entry: dict, kind: str, reason: str) -> str:
    tenant, day = key.split("|", 1)
    partition = key_string(tenant, day)
    title = f"tenant-day {key}: " + (f"{', '.join(entry['failing'])} failed on the input; a re-run cannot heal it" if kind == "input" else f"{', '.join(entry['failing'])} still failing after {entry['attempts']} re-materialisations")
    # Recorded before the tick fails (its cursor is not kept): the next tick finds it and does not alert again.
    context.instance.report_runless_asset_event(
        dg.AssetObservation(asset_key=MILVUS_VECTORS, partition=partition, metadata={"alert": kind, "exhausted": kind == "exhausted", "attempts": entry["attempts"], "failing_checks": ", ".join(entry["failing"]), "reason": reason})
    )
    alerts.send({"title": title, "partition": key, "failing_checks": entry["failing"], "attempts": entry["attempts"], "kind": kind, "reason": reason}, log=context.log)
    return f"{title}: {reason}"


@dg.sensor(
    job=vectors_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Tenant-days failing checks at ERROR: re-runs those a re-run can heal (at most N times, with a growing delay), alerts at once on input failures (naming the file and line) and when the attempts run out; an alert is a failed tick and goes to the webhook.",
)
def check_alert_sensor(context: dg.SensorEvaluationContext, alerts: AlertResource):
    max_attempts, base_delay = retry_settings()
    state = json.loads(context.cursor) if context.cursor else {}
    after = int(state.get("after", 0))
    tracked: dict[str, dict] = state.get("tenant_days", {})
    changed = latest_outcomes(context.instance, after_storage_id=after or None)
    for o in changed:
        after = max(after, o.seen_storage_id)
    by_key: dict[str, list[Outcome]] = {}
    for o in changed:
        by_key.setdefault(f"{o.tenant}|{o.day}", []).append(o)
    now = time.time()
    for key, items in by_key.items():
        entry = tracked.get(key)
        errors = [o for o in items if o.status == "ERROR"]
        healed = {o.check for o in items if o.status in ("passed", "WARN") or (o.status == "not evaluated" and not o.planned)}
        if entry is not None:
            entry["failing"] = sorted(set(entry["failing"]) - healed)
        if errors:
            if entry is None:
                entry = tracked[key] = {"attempts": 0, "failing": [], "since": _iso(now), "awaiting": False, "state": "failing"}
            entry["failing"] = sorted(set(entry["failing"]) | {o.check for o in errors})
            entry["awaiting"] = False
            entry["reasons"] = {o.check: o.description for o in errors}
            entry["input"] = any(is_input_failure(o) for o in errors)
            entry["evaluation_storage_id"] = max(o.storage_id for o in errors)
        if entry is not None and not entry["failing"]:
            tracked.pop(key)  # healthy again: the count resets
    # A heal run that ended without evaluating its tenant-day (it failed, e.g. the store was
    # unreachable) counts as a failed attempt.
    for key, entry in tracked.items():
        if entry.get("awaiting") and entry.get("run_key"):
            runs = context.instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": entry["run_key"]}), limit=1)
            if runs and runs[0].is_finished and runs[0].status != dg.DagsterRunStatus.SUCCESS:
                entry["awaiting"] = False

    requests, said, raised = [], [], []
    for key, entry in sorted(tracked.items()):
        if entry["state"] == "alerted" or entry["awaiting"]:
            if entry["awaiting"]:
                said.append(f"{key}: waiting for re-materialisation {entry['attempts']} of {max_attempts}")
            continue
        tenant, day = key.split("|", 1)
        if entry.get("input") or entry["attempts"] >= max_attempts:
            kind = "input" if entry.get("input") else "exhausted"
            entry["state"] = "alerted"
            if _already_alerted(context.instance, key_string(tenant, day), entry.get("evaluation_storage_id", 0)):
                said.append(f"{key}: alerted ({kind})")
                continue
            reason = "; ".join(f"{c}: {r}" for c, r in sorted(entry.get("reasons", {}).items()) if r) or ", ".join(entry["failing"])
            raised.append(_alert(context, alerts, key, entry, kind, reason))
            continue
        if entry["attempts"]:
            next_at = _seconds(entry["last_attempt"]) + base_delay * 2 ** (entry["attempts"] - 1)
            if now < next_at:
                entry["next_attempt"] = _iso(next_at)
                said.append(f"{key}: {', '.join(entry['failing'])} failing, attempt {entry['attempts']} of {max_attempts} done; next attempt after {_hhmm(next_at)}")
                continue
        entry["attempts"] += 1
        entry["last_attempt"] = _iso(now)
        entry["awaiting"] = True
        entry["run_key"] = f"heal:{key}:{entry['attempts']}:{after}"
        entry.pop("next_attempt", None)
        requests.append(dg.RunRequest(run_key=entry["run_key"], partition_key=make_key(tenant, day), tags={"vector_assets/heal_attempt": f"{entry['attempts']} of {max_attempts}", "vector_assets/failing_checks": ",".join(entry["failing"])}))
        said.append(f"re-materialising {key} ({', '.join(entry['failing'])} failing), attempt {entry['attempts']} of {max_attempts}")
    # Alerted tenant-days are kept (so that they are not re-run) until their checks pass again.
    cursor = json.dumps({"after": after, "tenant_days": tracked}, sort_keys=True)
    for line in said:
        context.log.info(line)
    if raised:
        raise AlertRaised(f"{len(raised)} alert(s) sent: " + " | ".join(raised))
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    summary = "; ".join(said[:5]) + (f"; and {len(said) - 5} more" if len(said) > 5 else "")
    return dg.SensorResult(skip_reason=summary or "no tenant-day fails a check at ERROR", cursor=cursor)
