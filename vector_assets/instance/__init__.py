"""The Dagster instance as this project uses it: runs submitted through its run queue and
launcher (:mod:`.launch`), runs whose process died found and failed (:mod:`.runs`), and the
event storage that records a run's many tenant-day events in batches (:mod:`.storage`).

Imports Dagster and the bottom layer only (``tests/test_layout.py``).
"""
