"""Assets: the landing index, and records -> extracted text -> Milvus vectors per tenant-day."""

from .landing_index import landing_index
from .search_quality import search_quality, search_quality_job, search_quality_schedule
from .vectors import ASSET_KEYS, tenant_day_vectors

all_assets = [landing_index, tenant_day_vectors, search_quality]

__all__ = ["ASSET_KEYS", "all_assets", "landing_index", "search_quality", "search_quality_job", "search_quality_schedule", "tenant_day_vectors"]
