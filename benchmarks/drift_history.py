"""Embedding drift on the real history: how often the ``drift`` check would warn on days where
nothing in the pipeline changed (its false-alarm rate), and how often it catches an injected
extraction fault (issue #21 item 5).

Every tenant-day of a collection is scored as the check scores it
(:func:`vector_assets.embed.quality.drift_series` and ``drift_verdict``: the centroid cosine
distance of the week to the day from the 30 days before, against the tenant's own distances of
its last 90 days). Nothing changed in the pipeline over the shared data's history, so every
alarm on it is a false alarm of the check (a week of new topics is what users see; it is not what
the check is for). Then a fault is injected at a random graded tenant-day: from that day on, for
a week, the days' passages are embedded again after an extraction fault, and the check is run
on each of those days (the days before unchanged):

* ``first_line``: only each passage's first line is kept (a body dropped);
* ``first_words``: only its first 12 words;
* ``none``: every text is ``"None"`` (a field read under a name the source does not have).

Prints the distance quantiles per tenant, the alarm rate on the history and the share of faults
caught within the week (and the days it took), on a grid of the rule's settings.

Usage::

    python benchmarks/drift_history.py --uri /tmp/full/home/milvus.db [--sample 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vector_assets.embed.quality import QualityThresholds, drift_series, drift_verdict  # noqa: E402
from vector_assets.store import milvus_store  # noqa: E402

FAULTS = ("first_line", "first_words", "none")


def faulted(text: str, fault: str) -> str:
    if fault == "none":
        return "None"
    if fault == "first_line":
        return text.strip().split("\n", 1)[0] or text[:80]
    return " ".join(text.split()[:12]) or text[:80]


def sums_of(rows_by_day: dict[str, list[dict]], vectors: dict[str, np.ndarray] | None = None) -> dict[str, tuple[np.ndarray, int]]:
    vectors = vectors or {}
    return {d: (np.asarray(vectors[d] if d in vectors else [r["vector"] for r in rows], dtype=np.float64).sum(axis=0), len(rows)) for d, rows in rows_by_day.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", required=True, help="Milvus URI (a Milvus Lite path or http://...)")
    parser.add_argument("--collection", help="default: the collection the search alias names")
    parser.add_argument("--sample", type=int, default=100, help="fault start days per fault")
    args = parser.parse_args()
    base = QualityThresholds()
    client = milvus_store.connect(args.uri, start_server=True)
    name = args.collection or milvus_store.alias_target(client, "passages_search") or client.list_collections()[0]
    client.load_collection(name)
    started = time.perf_counter()
    rows = milvus_store.query_all(client, name, 'pk != ""', ["tenant", "day", "vector", "text"])
    print(f"{name}: {len(rows)} rows read in {time.perf_counter() - started:.1f} s")
    by: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        by.setdefault(r["tenant"], {}).setdefault(r["day"], []).append(r)
    sums = {tenant: sums_of(days) for tenant, days in by.items()}

    variants = [("rule as shipped", base)] + [
        (f"history {h} d, min distance {m}", base.model_copy(update={"drift_history_days": h, "drift_min_distance": m})) for h, m in ((90, 0.0), (90, 0.2), (60, 0.15), (180, 0.15))
    ]
    # The real history: every tenant-day with rows.
    started = time.perf_counter()
    points = {tenant: drift_series(sums[tenant], sorted(days), base) for tenant, days in by.items()}
    print(f"{sum(len(d) for d in by.values())} tenant-days with rows, series in {time.perf_counter() - started:.1f} s")
    for tenant, series in sorted(points.items()):
        values = [p.distance for p in series.values() if p.distance is not None]
        if values:
            print(f"  {tenant}: {len(values)} days with a distance; median {np.median(values):.3f}, p95 {np.percentile(values, 95):.3f}, max {max(values):.3f}")

    from vector_assets.resources import EmbeddingModelResource

    model = EmbeddingModelResource()
    rng = np.random.default_rng(0)
    graded = [(tenant, day) for tenant, series in points.items() for day, p in series.items() if drift_verdict(p, base).metadata.get("graded")]
    starts = [graded[i] for i in rng.choice(len(graded), min(args.sample, len(graded)), replace=False)]
    faulted_sums = {}
    started = time.perf_counter()
    for fault in FAULTS:
        for tenant, first in starts:
            week = [d for d in sorted(by[tenant]) if first <= d <= (dt.date.fromisoformat(first) + dt.timedelta(days=base.drift_current_days - 1)).isoformat()]
            vectors = {d: model.encode([faulted(r["text"], fault) for r in by[tenant][d]]) for d in week}
            faulted_sums[(fault, tenant, first)] = (week, {**sums[tenant], **sums_of({d: by[tenant][d] for d in week}, vectors)})
    print(f"faults injected at {len(starts)} tenant-days x {len(FAULTS)}: embedded in {time.perf_counter() - started:.1f} s")

    print()
    print("| rule | graded tenant-days | alarms on the real history (false) | " + " | ".join(f"{f}: caught within the week (median days)" for f in FAULTS) + " |")
    print("|---|---:|---:|" + "---:|" * len(FAULTS))
    for label, t in variants:
        graded_n = alarms = 0
        for tenant, days in by.items():
            for p in drift_series(sums[tenant], sorted(days), t).values():
                v = drift_verdict(p, t)
                graded_n += bool(v.metadata.get("graded"))
                alarms += not v.passed
        cells = []
        for fault in FAULTS:
            caught, delays = 0, []
            for tenant, first in starts:
                week, fsums = faulted_sums[(fault, tenant, first)]
                series = drift_series(fsums, week, t)
                hit = next((i for i, d in enumerate(week) if not drift_verdict(series[d], t).passed), None)
                if hit is not None:
                    caught += 1
                    delays.append((dt.date.fromisoformat(week[hit]) - dt.date.fromisoformat(first)).days)
            cells.append(f"{100 * caught / len(starts):.1f}% ({np.median(delays) if delays else '-'})")
        print(f"| {label} | {graded_n} | {alarms} ({100 * alarms / max(graded_n, 1):.2f}%) | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
