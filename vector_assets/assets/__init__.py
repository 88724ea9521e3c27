"""Assets: the landing index, and records -> extracted text -> Milvus vectors per tenant-day."""

from .landing_index import landing_index
from .vectors import ASSET_KEYS, tenant_day_vectors

all_assets = [landing_index, tenant_day_vectors]

__all__ = ["ASSET_KEYS", "all_assets", "landing_index", "tenant_day_vectors"]
