"""Check specs of the tenant-day assets (see :mod:`vector_assets.checks`)."""

import dagster as dg

from ..keys import EXTRACTED_TEXT, MILVUS_VECTORS, SOURCE_RECORDS

CHECKS: dict[str, tuple[dg.AssetKey, bool, str]] = {
    "text_frame_valid": (EXTRACTED_TEXT, True, "Great Expectations on the extracted-text frame: ids present and unique, tenant and day equal to the partition's, text length within bounds. Blocks the write."),
    "vector_quality": (MILVUS_VECTORS, True, "No NaN/Inf; dimension = model = collection; raw norm in (0.1, 10) and zero-value ratio < 50% (seed 000 §5.2); no zero vectors; 1 - zero_rate - duplicate_rate > 0.85 (seed 003). Blocks the write."),
    "coverage": (MILVUS_VECTORS, False, "Records in the source = extracted texts + quarantined = Milvus rows of the partition, and every row's content hash matches its text (seed 003: 100% coverage)."),
    "coherence": (MILVUS_VECTORS, False, "Sampled stored rows re-embedded now: mean cosine >= 0.95 passes (seed 000), < 0.90 WARN, < 0.85 ERROR (seed 001 §5.2)."),
    "retrievability": (MILVUS_VECTORS, False, "Sampled stored vectors searched within their tenant find themselves first: recall@1 >= 0.99."),
    "processing_time": (MILVUS_VECTORS, False, "CPU time of the encode per embedded vector (process CPU seconds, so a busy machine grades the same work the same) < 100 ms (seed 000); > 250 ms ERROR, WARN between (seed 001 §5.2 WARN line 150 inside); graded from 32 vectors a run."),
    "failure_rate": (SOURCE_RECORDS, False, "Bad records / records read < 1%; > 2% WARN, > 5% ERROR (seed 001 §5.2). Superseded lines (older versions of a record exported again) are normal data and count in neither."),
}

#: One evaluation of each check per run (not per tenant-day): the UI's Checks list shows the
#: latest outcome of unpartitioned checks, and a run records 7 evaluations instead of 7 per
#: tenant-day. Which tenant-days failed, with their figures, is in each evaluation's metadata
#: (``failing_tenant_days``), and which were judged (``evaluated_tenant_days``); see
#: :func:`vector_assets.checks.evaluate.run_check_result`.
CHECK_SPECS = [
    dg.AssetCheckSpec(name, asset=key, blocking=blocking, description=description)
    for name, (key, blocking, description) in CHECKS.items()
]

