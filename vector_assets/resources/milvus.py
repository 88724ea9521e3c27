"""The Milvus vector store as a Dagster resource."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr
from pymilvus import MilvusClient

from ..store import milvus_store
from ..store.base import close_quietly
from ..store.milvus_store import MilvusStore


class MilvusResource(dg.ConfigurableResource):
    """Milvus: an embedded Milvus Lite database (a local path, the default) or a server.

    Attributes:
        uri: a local path (Milvus Lite, served to all processes by one local
            ``milvus-lite server``) or ``http://host:19530`` for a Milvus server or cluster.
        token: server token (``user:password`` or an API key), through ``EnvVar``.
        collection_prefix: collections are named ``<prefix>__<model slug>``.
        index_type / metric_type / index_params: the vector index (default HNSW, COSINE,
            M=16, efConstruction=200).
        search_params: parameters of the checks' self-searches (default ``ef``
            :data:`vector_assets.store.milvus_store.DEFAULT_EF`, what user searches use, so that the
            retrievability check measures the search people run; at ef 64 the full shared
            dataset had 11 of 9,119 tenant-days whose sampled row was not its own first hit).

    Owns one client per run (``setup_for_execution`` / ``teardown_after_execution``).
    """

    uri: str
    token: str = ""
    collection_prefix: str = milvus_store.COLLECTION_PREFIX
    index_type: str = "HNSW"
    metric_type: str = "COSINE"
    index_params: dict = Field(default_factory=lambda: dict(milvus_store.DEFAULT_HNSW_PARAMS))
    search_params: dict = Field(default_factory=lambda: {"ef": milvus_store.DEFAULT_EF})  # checks' self-searches

    _client: MilvusClient | None = PrivateAttr(default=None)
    _store: MilvusStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._client = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def get_client(self, create: bool = True) -> MilvusClient:
        """The client (connected on first use). With ``create`` False, a missing local
        database raises FileNotFoundError instead of being created."""
        if self._client is None:
            self._client = milvus_store.connect(self.uri, self.token, start_server=create)
        return self._client

    def reset_client(self) -> None:
        """Close the client (if any); the next :meth:`get_client` connects anew."""
        if self._client is not None:
            close_quietly(self._client)
            self._client = None

    def get_store(self, create: bool = True) -> MilvusStore:
        """This Milvus as a :class:`~vector_assets.store.base.VectorStore` (over :meth:`get_client`)."""
        client = self.get_client(create)
        if self._store is None or self._store.client is not client:
            self._store = MilvusStore(client, self.uri)
        return self._store

    def store_key(self, model_id: str) -> str | None:
        """Identity of ``model_id``'s collection in this Milvus
        (:func:`vector_assets.store.milvus_store.store_key`), None when it does not exist."""
        return milvus_store.store_key(self.uri, self.get_client(), self.collection_for(model_id))

    def collection_for(self, model_id: str) -> str:
        """Name of the collection that holds ``model_id``'s vectors."""
        return milvus_store.collection_name(model_id, self.collection_prefix)

    @property
    def search_alias(self) -> str:
        """The Milvus alias naming the collection that search answers from: ``<prefix>_search``."""
        return f"{self.collection_prefix}_search"

    def ensure_collection(self, model_id: str, dim: int) -> str:
        """Create (if needed) and load the collection of ``model_id``; return its name.

        Raises ValueError when the existing collection's dimension differs from ``dim``.
        """
        name = self.collection_for(model_id)
        client = self.get_client()
        milvus_store.create_collection(client, name, dim, self.index_type, self.metric_type, self.index_params, model_id=model_id)
        have = milvus_store.collection_dimension(client, name)
        if have != dim:
            raise ValueError(f"collection {name} holds {have}-dimensional vectors but model {model_id} gives {dim}")
        return name
