"""Check specs of the tenant-day assets (see :mod:`vector_assets.checks`)."""

import dagster as dg

from ..keys import EXTRACTED_TEXT, MILVUS_VECTORS, SOURCE_RECORDS
from ..partitions import tenant_day_partitions

CHECKS: dict[str, tuple[dg.AssetKey, bool, str]] = {
    "text_frame_valid": (EXTRACTED_TEXT, True, "Great Expectations on the extracted-text frame: ids present and unique, tenant and day equal to the partition's, text length within bounds. Blocks the write."),
    "vector_quality": (MILVUS_VECTORS, True, "No NaN/Inf; dimension = model = collection; raw norm in (0.1, 10) and zero-value ratio < 50% (seed 000 §5.2); no zero vectors; 1 - zero_rate - duplicate_rate > 0.85 (seed 003). Blocks the write."),
    "coverage": (MILVUS_VECTORS, False, "Records in the source = extracted texts + quarantined = Milvus rows of the partition, and every row's content hash matches its text (seed 003: 100% coverage)."),
    "coherence": (MILVUS_VECTORS, False, "Sampled stored rows re-embedded now: mean cosine >= 0.95 passes (seed 000), < 0.90 WARN, < 0.85 ERROR (seed 001 §5.2)."),
    "retrievability": (MILVUS_VECTORS, False, "Sampled stored vectors searched within their tenant find themselves first: recall@1 >= 0.99."),
    "processing_time": (MILVUS_VECTORS, False, "Embedding + write time per vector < 100 ms (seed 000); > 150 ms WARN, > 250 ms ERROR (seed 001 §5.2)."),
    "failure_rate": (SOURCE_RECORDS, False, "Quarantined / records read < 1%; > 2% WARN, > 5% ERROR (seed 001 §5.2)."),
}

CHECK_SPECS = [
    dg.AssetCheckSpec(name, asset=key, blocking=blocking, description=description, partitions_def=tenant_day_partitions)
    for name, (key, blocking, description) in CHECKS.items()
]

