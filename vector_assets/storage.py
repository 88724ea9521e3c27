"""The event storage's former module path, kept for ``dagster.yaml`` files that name it
(``storage: custom: module: vector_assets.storage``, written before the storage moved to
:mod:`vector_assets.instance.storage`). New instance files name the new path."""

from .instance import storage as _storage

BatchedSqliteStorage = _storage.BatchedSqliteStorage
if _storage.DagsterPostgresStorage is not None:  # dagster-postgres installed
    BatchedPostgresStorage = _storage.BatchedPostgresStorage
