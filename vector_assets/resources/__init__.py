"""Dagster resources: the landing directory, the embedding model and the Milvus store."""

from .alerts import AlertResource
from .embedding_model import EmbeddingModelResource, OpenAIEmbeddingResource, RoutedEmbeddingResource
from .landing import LandingResource
from .milvus import MilvusResource
from .pgvector import PgvectorResource


def embedding_resource(model_id: str | None = None) -> EmbeddingModelResource:
    """The embedding provider configured by the environment: ``VECTOR_ASSETS_EMBEDDING_PROVIDER``
    ``local`` (default: sentence-transformers, ``VECTOR_ASSETS_MODEL``) or ``openai`` (an
    OpenAI-compatible endpoint: ``VECTOR_ASSETS_OPENAI_BASE_URL``, ``VECTOR_ASSETS_OPENAI_MODEL``,
    key ``VECTOR_ASSETS_OPENAI_API_KEY`` through ``dg.EnvVar``, ``VECTOR_ASSETS_OPENAI_MAX_TOKENS``,
    ``_MAX_CONCURRENCY``, ``_MAX_RETRIES``).

    With ``model_id`` (a collection's model, for searching it): that provider when its
    ``model_id`` matches, else the local model ``model_id``. Raises ValueError naming the
    variable when the provider is unknown or the endpoint is incomplete.
    """
    import os

    import dagster as dg

    from .. import settings

    provider = os.environ.get("VECTOR_ASSETS_EMBEDDING_PROVIDER", "local").strip() or "local"
    if provider == "local":
        configured: EmbeddingModelResource = EmbeddingModelResource(model=settings.model_name(), max_passages=settings.max_passages(), precision=settings.precision(), backend=settings.backend(), token_budget=settings.token_budget())
    elif provider == "openai":
        base, name = os.environ.get("VECTOR_ASSETS_OPENAI_BASE_URL", ""), os.environ.get("VECTOR_ASSETS_OPENAI_MODEL", "")
        if not base or not name:
            raise ValueError("VECTOR_ASSETS_EMBEDDING_PROVIDER=openai needs VECTOR_ASSETS_OPENAI_BASE_URL and VECTOR_ASSETS_OPENAI_MODEL")
        configured = OpenAIEmbeddingResource(
            model=name, base_url=base, api_model=name, max_passages=settings.max_passages(),
            api_key=dg.EnvVar("VECTOR_ASSETS_OPENAI_API_KEY") if os.environ.get("VECTOR_ASSETS_OPENAI_API_KEY") else "",
            max_tokens=int(os.environ.get("VECTOR_ASSETS_OPENAI_MAX_TOKENS") or 256),
            max_concurrency=int(os.environ.get("VECTOR_ASSETS_OPENAI_MAX_CONCURRENCY") or 4),
            max_retries=int(os.environ.get("VECTOR_ASSETS_OPENAI_MAX_RETRIES") or 5),
        )
    elif provider == "routed":
        base, name = os.environ.get("VECTOR_ASSETS_OPENAI_BASE_URL", ""), os.environ.get("VECTOR_ASSETS_OPENAI_MODEL", "")
        if not base or not name:
            raise ValueError("VECTOR_ASSETS_EMBEDDING_PROVIDER=routed needs VECTOR_ASSETS_OPENAI_BASE_URL and VECTOR_ASSETS_OPENAI_MODEL (an endpoint serving the local model)")
        configured = RoutedEmbeddingResource(
            model=settings.model_name(), max_passages=settings.max_passages(), precision=settings.precision(), backend=settings.backend(), token_budget=settings.token_budget(),
            preference=os.environ.get("VECTOR_ASSETS_PROVIDER_PREFERENCE", "balanced").strip() or "balanced", base_url=base, api_model=name,
            api_key=dg.EnvVar("VECTOR_ASSETS_OPENAI_API_KEY") if os.environ.get("VECTOR_ASSETS_OPENAI_API_KEY") else "",
            max_retries=int(os.environ.get("VECTOR_ASSETS_OPENAI_MAX_RETRIES") or 1),
        )
    else:
        raise ValueError(f"VECTOR_ASSETS_EMBEDDING_PROVIDER={provider!r}: one of local, openai, routed")
    if model_id is None or model_id == configured.model_id:
        return configured
    return EmbeddingModelResource(model=model_id, precision=settings.precision(), backend=settings.backend(), token_budget=settings.token_budget())


def store_resource() -> MilvusResource | PgvectorResource:
    """The vector store of the deployment: :class:`PgvectorResource` when
    ``VECTOR_ASSETS_STORE_URL`` names PostgreSQL (the URL through ``EnvVar``: it may hold a
    password), else :class:`MilvusResource` at ``VECTOR_ASSETS_MILVUS_URI`` (token through
    ``EnvVar``). Bound under the resource key ``milvus`` either way (run configs keep working)."""
    import os

    import dagster as dg

    from .. import settings
    from ..store.base import is_postgres_url

    if is_postgres_url(settings.store_url()):
        return PgvectorResource(url=dg.EnvVar("VECTOR_ASSETS_STORE_URL"))
    token = dg.EnvVar("VECTOR_ASSETS_MILVUS_TOKEN") if os.environ.get("VECTOR_ASSETS_MILVUS_TOKEN") else ""
    return MilvusResource(uri=settings.milvus_uri(), token=token)


def default_resources() -> dict:
    """The resources of the deployed definitions, configured from the environment
    (see :mod:`vector_assets.settings`; the Milvus token through ``EnvVar``)."""
    import os

    import dagster as dg

    from .. import settings
    from ..embed.quality import QualityThresholds

    return {
        "landing": LandingResource(landing_dir=settings.landing_dir(), state_dir=str(settings.home_dir()), git_repos=settings.git_repos()),
        "embedding_model": embedding_resource(),
        "milvus": store_resource(),
        "quality": QualityThresholds(),
        "alerts": AlertResource(webhook_url=dg.EnvVar("VECTOR_ASSETS_ALERT_WEBHOOK") if os.environ.get("VECTOR_ASSETS_ALERT_WEBHOOK") else ""),
    }


__all__ = ["AlertResource", "EmbeddingModelResource", "OpenAIEmbeddingResource", "RoutedEmbeddingResource", "embedding_resource", "LandingResource", "MilvusResource", "PgvectorResource", "default_resources", "store_resource"]
