"""Dagster resources: the landing directory, the embedding model and the Milvus store."""

from .alerts import AlertResource
from .embedding_model import EmbeddingModelResource
from .landing import LandingResource
from .milvus import MilvusResource


def default_resources() -> dict:
    """The resources of the deployed definitions, configured from the environment
    (see :mod:`vector_assets.settings`; the Milvus token through ``EnvVar``)."""
    import os

    import dagster as dg

    from .. import settings
    from ..quality import QualityThresholds

    token = dg.EnvVar("VECTOR_ASSETS_MILVUS_TOKEN") if os.environ.get("VECTOR_ASSETS_MILVUS_TOKEN") else ""
    return {
        "landing": LandingResource(landing_dir=settings.landing_dir(), state_dir=str(settings.home_dir()), git_repos=settings.git_repos()),
        "embedding_model": EmbeddingModelResource(model=settings.model_name(), max_passages=settings.max_passages()),
        "milvus": MilvusResource(uri=settings.milvus_uri(), token=token),
        "quality": QualityThresholds(),
        "alerts": AlertResource(webhook_url=dg.EnvVar("VECTOR_ASSETS_ALERT_WEBHOOK") if os.environ.get("VECTOR_ASSETS_ALERT_WEBHOOK") else ""),
    }


__all__ = ["AlertResource", "EmbeddingModelResource", "LandingResource", "MilvusResource", "default_resources"]
