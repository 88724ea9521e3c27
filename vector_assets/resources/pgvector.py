"""PostgreSQL + pgvector as the vector store, as a Dagster resource (issue #22)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from ..store import milvus_store
from ..store.base import close_quietly
from ..store.pgvector_store import PgvectorStore, redacted


class PgvectorResource(dg.ConfigurableResource):
    """A PostgreSQL database with the ``vector`` extension as the vector store, in place of
    :class:`~vector_assets.resources.MilvusResource` (the same methods: ``get_store``,
    ``collection_for``, ``ensure_collection``, ``store_key``, ``search_alias``).

    Attributes:
        url: ``postgresql://user:password@host:port/db`` (the password through ``EnvVar``),
            or ``pgserver:PATH`` for the bundled PostgreSQL + pgvector started on data
            directory PATH (:mod:`vector_assets.store.pgvector_store`).
        collection_prefix: tables are named ``<prefix>__<model slug>``, as Milvus collections.
        search_params: the checks' self-searches (``ef``: pgvector's ``hnsw.ef_search``, the
            default of user searches too, as for Milvus).

    Owns one connection per run (``setup_for_execution`` / ``teardown_after_execution``).
    """

    url: str
    collection_prefix: str = milvus_store.COLLECTION_PREFIX
    search_params: dict = Field(default_factory=lambda: {"ef": milvus_store.DEFAULT_EF})

    _store: PgvectorStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.reset_client()

    def get_store(self, create: bool = True) -> PgvectorStore:
        """The store (connected on first use)."""
        if self._store is None:
            self._store = PgvectorStore(self.url)
        return self._store

    def reset_client(self) -> None:
        """Close the connection (if any); the next :meth:`get_store` connects anew."""
        if self._store is not None:
            close_quietly(self._store)
            self._store = None

    @property
    def uri(self) -> str:
        """Where the store is, without its password (for messages)."""
        return redacted(self.url)

    def collection_for(self, model_id: str) -> str:
        """Name of the table that holds ``model_id``'s vectors."""
        return milvus_store.collection_name(model_id, self.collection_prefix)

    @property
    def search_alias(self) -> str:
        """The alias naming the table that search answers from: ``<prefix>_search``."""
        return f"{self.collection_prefix}_search"

    def store_key(self, model_id: str) -> str | None:
        """Identity of ``model_id``'s table in this database
        (:meth:`~vector_assets.store.pgvector_store.PgvectorStore.store_key`), None when missing."""
        return self.get_store().store_key(self.collection_for(model_id))

    def ensure_collection(self, model_id: str, dim: int) -> str:
        """Create (if needed) the table of ``model_id``; return its name. Raises ValueError when
        the existing table's dimension differs from ``dim``."""
        name = self.collection_for(model_id)
        store = self.get_store()
        store.create_collection(name, dim, model_id)
        have = store.collection_dimension(name)
        if have != dim:
            raise ValueError(f"table {name} holds {have}-dimensional vectors but model {model_id} gives {dim}")
        return name
