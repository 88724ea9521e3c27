"""Asset keys of the tenant-day assets (shared by assets, checks and sensors)."""

import dagster as dg

SOURCE_RECORDS = dg.AssetKey("source_records")
EXTRACTED_TEXT = dg.AssetKey("extracted_text")
MILVUS_VECTORS = dg.AssetKey("milvus_vectors")
ASSET_KEYS = [SOURCE_RECORDS, EXTRACTED_TEXT, MILVUS_VECTORS]
LANDING_INDEX = dg.AssetKey("landing_index")
SEARCH_QUALITY = dg.AssetKey("search_quality")
INDEX_TUNING = dg.AssetKey("index_tuning")
