"""Ingest: the landing data and what is read from it, without Dagster, Milvus or a model.

* :mod:`.records`: a record's id, kind, tenant, day and primary key; bad input as
  :class:`~.records.BadRecord` (file, line, reason).
* :mod:`.landing`: the landing index over the JSONL exports (a folder or an ``s3://`` URL),
  its state in :mod:`vector_assets.state`.
* :mod:`.extraction`: the text of each record kind.
* :mod:`.passages`: long texts in overlapping token windows.

Imports :mod:`vector_assets.settings`, :mod:`vector_assets.local` and :mod:`vector_assets.state`
only (``tests/test_layout.py``).
"""
