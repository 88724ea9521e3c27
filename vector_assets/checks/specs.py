"""Check specs of the tenant-day assets (see :mod:`vector_assets.checks`).

Every check is partitioned like its asset (tenant x day): each tenant-day has its own status,
the outcome of its latest evaluation (:mod:`vector_assets.checks.outcomes`). The descriptions
are what the UI shows; they state the rules the code applies, with the thresholds of
:class:`vector_assets.embed.quality.QualityThresholds` (its defaults).
"""

import warnings

import dagster as dg

from ..keys import EXTRACTED_TEXT, MILVUS_VECTORS, SOURCE_RECORDS
from ..partitions import tenant_day_partitions

CHECKS: dict[str, tuple[dg.AssetKey, bool, str]] = {
    "text_frame_valid": (EXTRACTED_TEXT, True, "Great Expectations on the tenant-day's extracted texts: record ids present and unique, tenant and day equal to the partition's, text length from 1 character to the extraction limit. ERROR blocks the tenant-day's write."),
    "vector_quality": (MILVUS_VECTORS, True, "Vectors about to be written: no NaN or Inf; dimension equal to the model's and the collection's; raw norm between 0.1 and 10; under 50% zero values per vector; no zero vectors; quality score 1 - zero rate - duplicate rate above 0.85. ERROR blocks the tenant-day's write."),
    "coverage": (MILVUS_VECTORS, False, "After the write: records read = extracted texts + quarantined lines, Milvus holds exactly one row per passage of the tenant-day, and every row's content hash matches its text. ERROR on any difference."),
    "coherence": (MILVUS_VECTORS, False, "Stored vectors against the model now (rows written in the run through the Milvus round trip, a sample of older rows re-embedded): mean cosine 0.95 or above passes, 0.85 to 0.95 WARN, below 0.85 ERROR."),
    "retrievability": (MILVUS_VECTORS, False, "Sampled stored vectors searched within their tenant find themselves first: recall@1 of 0.99 or above passes, else ERROR."),
    "processing_time": (MILVUS_VECTORS, False, "CPU time of the encode per embedded vector, for the run (the same figure on each tenant-day that embedded vectors): under 100 ms passes, 100 to 250 ms WARN, above 250 ms ERROR; not graded below 32 vectors a run."),
    "drift": (MILVUS_VECTORS, False, "Embedding drift: the cosine distance between the centroid of the tenant's vectors of the 7 days to this day and that of the 30 days before them (Evidently's distance method), against the tenant's own distances of its last 90 days: WARN when above all of them (at least 20) and 0.15 or more; not graded under 5 vectors in the week or 20 in the window."),
    "failure_rate": (SOURCE_RECORDS, False, "Bad lines (quarantined with file, line and reason) / lines read: under 1% passes, 1% to 5% WARN, above 5% ERROR. Superseded lines (older versions of a record exported again) count in neither."),
}

#: Check names whose failure comes from the landing input (a bad line, a text outside the rules,
#: a model or collection of another dimension): re-running the tenant-day cannot heal them, so
#: the alert sensor alerts at once, naming the file and line; the others are retried.
INPUT_CHECKS = frozenset({"failure_rate", "text_frame_valid", "vector_quality"})

with warnings.catch_warnings():  # partitioned checks are a preview in Dagster 1.13; the behaviour relied on is tested
    warnings.simplefilter("ignore", dg.PreviewWarning)
    CHECK_SPECS = [
        dg.AssetCheckSpec(name, asset=key, blocking=blocking, description=description, partitions_def=tenant_day_partitions)
        for name, (key, blocking, description) in CHECKS.items()
    ]
