"""vector_assets: keep a Milvus vector store in step with operational records, with Dagster."""

__version__ = "0.1.0"
