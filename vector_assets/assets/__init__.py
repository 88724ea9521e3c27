"""Assets: the landing index, and records -> extracted text -> Milvus vectors per tenant-day."""

from .landing_index import landing_index
from .search_quality import index_tuning, index_tuning_job, search_quality, search_quality_job, search_quality_schedule
from .vectors import ASSET_KEYS, tenant_day_vectors

all_assets = [landing_index, tenant_day_vectors, search_quality, index_tuning]

__all__ = ["ASSET_KEYS", "all_assets", "index_tuning", "index_tuning_job", "landing_index", "search_quality", "search_quality_job", "search_quality_schedule", "tenant_day_vectors"]
