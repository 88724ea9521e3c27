"""The vector store: Milvus collections, reads and writes (:mod:`.milvus_store`), and the
incremental sync of tenant-days into them, stage by stage (:mod:`.sync`).

Imports :mod:`vector_assets.embed`, :mod:`vector_assets.ingest` and the bottom layer only
(``tests/test_layout.py``).
"""
