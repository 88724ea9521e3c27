"""Embeddings: the sentence-transformers model (:mod:`.embedding`) and the quality rules of the
vectors it makes (:mod:`.quality`).

Imports :mod:`vector_assets.ingest` and the bottom layer only (``tests/test_layout.py``).
"""
