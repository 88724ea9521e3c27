"""Serving: semantic search over a tenant's vectors (:mod:`.search`), the HTTP service
(:mod:`.service`) and its API keys (:mod:`.api_keys`).

Imports the store, the domain below it and the Dagster resources (the model's provider for a
query's embedding); nothing of assets, checks, sensors or jobs (``tests/test_layout.py``).
"""
