"""Keeping Milvus in step with the landing data, tenant-day by tenant-day, incrementally.

:func:`sync_partitions` is the domain logic behind the partitioned assets, callable without
Dagster. For each tenant-day it reads the records, extracts their texts, compares each text's
content hash with the row Milvus holds under the same primary key, embeds only new and changed
texts (all partitions of a call in one ``encode``, so batches stay full), upserts them, and
deletes the rows of records that left the partition. Afterwards the collection holds exactly
the partition's current records: no duplicates, no stale rows, other partitions untouched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from . import milvus_store
from ..ingest.extraction import ExtractedText, extract_records
from ..ingest.landing import LandingIndex
from ..ingest.passages import record_pk
from ..ingest.records import BadRecord, safe_name

PartitionKey = tuple[str, str]  # (tenant, day)


class Embedder(Protocol):
    """What :func:`sync_partitions` needs of a model (the one contract of
    :class:`~vector_assets.resources.EmbeddingModelResource` and its OpenAI-compatible
    subclass): its id and dimension; ``get_model()`` loads it (once per process, outside the
    timed encode); ``encode_with_raw(texts)`` gives the raw (pre-normalisation) and the
    normalised ``(n, dim)`` float32 vectors; ``truncated_flags(texts)`` says which texts are
    longer than the model's window (only their start is embedded)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def get_model(self) -> object: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def encode_with_raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...

    def truncated_flags(self, texts: list[str]) -> list[bool]: ...


@dataclass
class PartitionResult:
    """Outcome of one tenant-day.

    ``records_read``: lines of the partition in the landing data; ``texts``: extracted texts;
    ``quarantined``: bad records (file, line, reason); ``embedded``: texts encoded now;
    ``skipped``: texts whose stored row was already current; ``moved``: rows whose record
    came from another day (vector reused); ``vectors``: ``{pk: (dim,) float32}`` written now;
    ``deleted``: stale rows removed; ``truncated``: embedded texts longer than the model's
    ``max_seq_length`` (the model embeds their start only); ``rows``: rows the
    partition holds afterwards; ``superseded``: lines whose record id has a newer version
    elsewhere (counted in ``records_read`` and listed in ``quarantined``); ``fingerprint``: of
    the lines read (:attr:`vector_assets.ingest.landing.PartitionInput.fingerprint`), what the write
    is recorded against; ``refused``: why the partition was not written although its checks
    allowed it (its tenant vanished from the landing data), else None. ``records``: the
    extracted records. With passages (:mod:`vector_assets.ingest.passages`): ``texts`` are the
    passages (one per record that fits in one window), ``records_split`` the records of more
    than one passage, ``passages_cut`` the windows left out by the per-record limit; ``rows`` counts
    Milvus rows (passages); ``embedded``, ``skipped``, ``moved``, ``deleted`` count records (a
    record is embedded when any of its passages was), ``passages_embedded`` and
    ``passages_deleted`` rows.
    """

    tenant: str
    day: str
    records_read: int = 0
    texts: list[ExtractedText] = field(default_factory=list)
    quarantined: list[BadRecord] = field(default_factory=list)
    embedded: int = 0
    skipped: int = 0
    moved: int = 0
    deleted: int = 0
    truncated: int = 0
    rows: int = 0
    superseded: int = 0
    fingerprint: str = ""
    refused: str | None = None
    records: int = 0
    passages_embedded: int = 0
    passages_deleted: int = 0
    records_split: int = 0
    passages_cut: int = 0
    written: bool = False
    vectors: dict = field(default_factory=dict)

    @property
    def bad_lines(self) -> list[BadRecord]:
        """The quarantined lines that are bad input: ``quarantined`` without the superseded lines
        (older versions of a record exported again: normal data, issue #17 item 10), which come
        first in ``quarantined``."""
        return self.quarantined[self.superseded:]

    @property
    def bad_records(self) -> int:
        """How many quarantined records are bad input (:attr:`bad_lines`)."""
        return len(self.quarantined) - self.superseded


def _rows(texts: list[ExtractedText], vectors: np.ndarray, model_id: str, now: int) -> list[dict]:
    return [
        {
            "pk": t.pk,
            "tenant": t.tenant,
            "day": t.day,
            "kind": t.kind,
            "record_id": t.record_id[: milvus_store.MAX_RECORD_ID],
            "content_hash": t.hash_for(model_id),
            "model": model_id,
            "created_at": t.timestamp,
            "embedded_at": now,
            "preview": t.preview.encode("utf-8")[: milvus_store.MAX_PREVIEW - 4].decode("utf-8", "ignore"),
            "passage": t.passage,
            "text": t.text.encode("utf-8")[: milvus_store.MAX_PASSAGE_TEXT - 4].decode("utf-8", "ignore"),
            "vector": v.tolist(),
        }
        for t, v in zip(texts, vectors)
    ]


def extract_partitions(index: LandingIndex, keys: Iterable[PartitionKey]) -> dict[PartitionKey, PartitionResult]:
    """Read and extract the records of each tenant-day (no Milvus, no model).

    A record whose day differs from its partition's (it cannot, unless the index is stale) is
    quarantined rather than written to the wrong partition. Superseded versions of a record id
    (:class:`vector_assets.ingest.landing.LandingIndex`) are quarantined with their reason.
    """
    keys = list(keys)
    located = index.read_partitions(keys)
    results: dict[PartitionKey, PartitionResult] = {}
    for key in keys:
        tenant, day = key
        item = located[key]
        good, bad = extract_records(item.records)
        result = PartitionResult(
            tenant, day, records_read=len(item.records) + len(item.superseded), quarantined=item.superseded + bad,
            superseded=len(item.superseded), fingerprint=item.fingerprint,
        )
        for text in good:
            if text.tenant != tenant or text.day != day:
                result.quarantined.append(BadRecord(text.path, text.line, f"record belongs to {text.tenant}|{text.day}, not {tenant}|{day}", ""))
            else:
                result.texts.append(text)
        result.records = len(result.texts)
        results[key] = result
    return results


def split_into_passages(results: dict[PartitionKey, PartitionResult], embedder) -> None:
    """Replace each result's record texts by their passages (:mod:`vector_assets.ingest.passages`),
    in place, when ``embedder`` can split (``split_passages``); sets ``records_split`` and
    ``passages_cut``. An embedder without it keeps one row per record."""
    splitter = getattr(embedder, "split_passages", None)
    if splitter is None:
        return
    for result in results.values():
        result.texts, result.records_split, result.passages_cut = splitter(result.texts)


def sync_partitions(
    keys: Iterable[PartitionKey],
    index: LandingIndex,
    embedder: Embedder,
    milvus,
    before_write: Callable[[PartitionResult, list[ExtractedText], np.ndarray, np.ndarray], bool] | None = None,
    log: Callable[[str], None] = lambda msg: None,
    after_extract: Callable[[dict[PartitionKey, PartitionResult]], None] | None = None,
    timings: dict[str, float] | None = None,
    delete_vanished: bool = False,
) -> dict[PartitionKey, PartitionResult]:
    """Materialise tenant-days into Milvus incrementally.

    Args:
        keys: ``(tenant, day)`` pairs.
        index: the landing index to read from.
        embedder: the model (loaded only if some text needs embedding).
        milvus: a :class:`~vector_assets.resources.MilvusResource` (``get_client``,
            ``collection_for``, ``ensure_collection``).
        before_write: optional gate called per partition with the texts to write, their raw
            (pre-normalisation) and normalised ``(n, dim)`` vectors; returning False skips that
            partition's write (blocking checks).
        log: progress messages.
        after_extract: called once with all partitions' extracted texts, before any Milvus work
            (the run-wide text validation).
        timings: if given, ``encode_s`` and ``write_s`` (seconds) are added to it.
        delete_vanished: delete the rows of tenants that have no line in the landing data any
            more. Off by default: a tenant whose files all vanished (removed, an empty or
            unmounted landing directory) keeps its rows and its partitions are *refused*
            (``PartitionResult.refused`` says why and how many rows would go).

    Returns ``{(tenant, day): PartitionResult}``. Raises
    :class:`~vector_assets.store.milvus_store.SourceMismatchError` before any write when the
    collection is bound to another landing source than ``index``'s. Raises whatever Milvus raises on a failed
    write (the partition is then not in sync and the run fails). What was written is not yet
    recorded as synced: the caller does that with :func:`record_synced` once the write is
    recorded where it must be (the Dagster materialisations), so a crash in between leaves the
    partition to be run again.
    """
    keys = list(keys)
    results = extract_partitions(index, keys)
    vanished = set() if delete_vanished else index.vanished_among(t for t, _ in keys)
    # Each tenant-day's quarantine report, replaced (cleared when nothing is bad), in one transaction.
    index.write_quarantine({(r.tenant, r.day): r.quarantined for r in results.values()})
    if after_extract is not None:
        after_extract(results)
    timings = timings if timings is not None else {}
    split_into_passages(results, embedder)

    model_id = embedder.model_id
    client = milvus.get_client()
    name = milvus.collection_for(model_id)
    exists = client.has_collection(name)
    created_now = not exists
    if exists:
        # Before anything is written or deleted: a collection bound to another landing source
        # raises SourceMismatchError (issue #17 item 1).
        milvus_store.bind_source(client, name, index.source)
        client.load_collection(name)

    # What Milvus holds for these partitions, one query per tenant.
    stored = milvus_store.partition_rows(client, name, keys, ["content_hash"]) if exists else {}

    # Classify texts: unchanged (skip), moved from another day with the same text (reuse the
    # vector), new or changed (embed).
    to_embed: list[ExtractedText] = []
    unknown: list[ExtractedText] = []
    for key, result in results.items():
        held = stored.get(key, {})
        for text in result.texts:
            row = held.get(text.pk)
            if row is None:
                unknown.append(text)
            elif row["content_hash"] != text.hash_for(model_id):
                to_embed.append(text)
            # else unchanged: counted per record once the tenant-day is written
    reuse: dict[str, list[float]] = {}
    if exists and unknown:
        elsewhere = milvus_store.rows_by_pk(client, name, [t.pk for t in unknown], ["pk", "content_hash", "vector"])
        for text in unknown:
            row = elsewhere.get(text.pk)
            if row is not None and row["content_hash"] == text.hash_for(model_id):
                reuse[text.pk] = row["vector"]
            else:
                to_embed.append(text)
    else:
        to_embed.extend(unknown)

    vectors: dict[str, np.ndarray] = {}
    raw_vectors: dict[str, np.ndarray] = {}
    truncated: set[str] = set()
    if to_embed:
        # Loading the model (once per process, with its warm-up batch) is a one-time cost,
        # not per-vector processing time: a worker's first run charged 130-186 ms/vector
        # with it inside the timer, against 15-80 ms for its later runs.
        embedder.get_model()
        started = time.perf_counter()
        texts_in = [t.text for t in to_embed]
        raw, encoded = embedder.encode_with_raw(texts_in)
        timings["encode_s"] = timings.get("encode_s", 0.0) + time.perf_counter() - started
        log(f"encoded {len(to_embed)} texts in {time.perf_counter() - started:.1f}s")
        vectors = {t.pk: encoded[i] for i, t in enumerate(to_embed)}
        raw_vectors = {t.pk: raw[i] for i, t in enumerate(to_embed)}
        flags = embedder.truncated_flags(texts_in)
        truncated = {t.pk for t, flag in zip(to_embed, flags) if flag}
        if not exists:
            milvus.ensure_collection(model_id, int(encoded.shape[1]))
            milvus_store.bind_source(client, name, index.source)
            exists = True
    for pk, vec in reuse.items():
        vectors[pk] = np.asarray(vec, dtype=np.float32)

    now = int(time.time())
    # Rows of the tenant-days that passed their gate, written together after the loop: one
    # upsert per 2,000 rows instead of one per tenant-day (about 20 ms each through gRPC, most of
    # a run's non-encode time at 1-3 records a tenant-day). Deletes stay per tenant-day (they
    # filter on the day); a moved record's old row is deleted by day, its new row upserted by
    # key, so their order does not matter.
    pending: list[dict] = []
    for key, result in results.items():
        tenant, day = key
        held = stored.get(key, {})
        changed = [t for t in result.texts if t.pk in vectors]
        mat = np.stack([vectors[t.pk] for t in changed]) if changed else np.zeros((0, 0), dtype=np.float32)
        raw_mat = np.stack([raw_vectors.get(t.pk, vectors[t.pk]) for t in changed]) if changed else mat
        current = {t.pk for t in result.texts}
        stale = [pk for pk in held if pk not in current]
        if tenant in vanished and stale:
            result.refused = (
                f"tenant {tenant} has no line in the landing data any more (files removed, or the landing "
                f"directory empty or not mounted); its {len(stale)} rows of {day} are kept. Delete them with "
                "`vector-assets backfill --delete-vanished-tenants` (run config delete_vanished_tenants)"
            )
            log(result.refused)
            continue
        if before_write is not None and not before_write(result, changed, raw_mat, mat):
            continue
        write_started = time.perf_counter()
        if changed:
            pending.extend(_rows(changed, mat, model_id, now))
        if stale:
            # Filtering on the day too: a row whose record moved on to another day since must stay.
            q = milvus_store.quote
            client.delete(name, filter=f"pk in {milvus_store.quote_list(stale)} and day == {q(day)} and tenant == {q(tenant)}")
        # Figures count records (a record is embedded when any of its passages is); the
        # passage_* figures count rows.
        current_records = {record_pk(t.pk) for t in result.texts}
        embedded_records = {record_pk(t.pk) for t in changed if t.pk not in reuse}
        result.embedded = len(embedded_records)
        result.moved = len({record_pk(t.pk) for t in changed if t.pk in reuse} - embedded_records)
        result.skipped = len(current_records) - result.embedded - result.moved
        result.deleted = len({record_pk(pk) for pk in stale} - current_records)
        result.passages_embedded = sum(1 for t in changed if t.pk not in reuse)
        result.passages_deleted = len(stale)
        result.truncated = sum(1 for t in changed if t.pk in truncated)
        result.rows = len(result.texts)
        result.written = True
        result.vectors = {t.pk: vectors[t.pk] for t in changed}
        timings["write_s"] = timings.get("write_s", 0.0) + time.perf_counter() - write_started
    if pending:
        write_started = time.perf_counter()
        milvus_store.write_rows(client, name, pending)
        timings["write_s"] = timings.get("write_s", 0.0) + time.perf_counter() - write_started
    if any(r.passages_embedded or r.moved or r.passages_deleted for r in results.values()):
        # Sealing the written segment keeps later filtered reads fast (an unflushed growing
        # segment is scanned row by row: ~0.15 s a query at 3,000 rows, ~0.01 s once flushed).
        flush_started = time.perf_counter()
        client.flush(name)
        if not created_now:
            # The first flush of a collection created in this run seals its first segment and
            # builds its indexes: a one-time cost, not per-vector processing time.
            timings["write_s"] = timings.get("write_s", 0.0) + time.perf_counter() - flush_started
    return results


def record_synced(index: LandingIndex, milvus, model_id: str, results: dict[PartitionKey, PartitionResult]) -> int:
    """Record the written partitions of ``results`` as synced to ``model_id``'s collection in
    ``milvus`` (:func:`vector_assets.store.milvus_store.store_key`), each against the fingerprint of
    the lines it was read from: an edit made while the run encoded changes the fingerprint, so
    the next backfill runs that partition again. Returns the number recorded."""
    written = {k: r for k, r in results.items() if r.written}
    if not written:
        return 0
    store = milvus.store_key(model_id)
    if store is None:
        return 0
    # Records, not passages: what a later backfill reports as skipped for an unchanged tenant-day.
    index.mark_synced(store, {k: (r.fingerprint, r.records) for k, r in written.items()})
    return len(written)


def cut_over_search_alias(index: LandingIndex, milvus, model_id: str, start: str | None = None, end: str | None = None) -> str | None:
    """Point the search alias at ``model_id``'s collection once that collection is complete.

    Complete means every tenant-day of the landing data in ``[start, end]`` was written for
    this model from its current input (:meth:`LandingIndex.unsynced_partitions` is empty). Until
    then search keeps answering from the collection the alias names (the previous model's).
    With no alias yet, the first model's collection gets it at once. Returns a message when the
    alias moved, else None.
    """
    client = milvus.get_client()
    name = milvus.collection_for(model_id)
    if not client.has_collection(name):
        return None
    alias = milvus.search_alias
    target = milvus_store.alias_target(client, alias)
    if target == name:
        return None
    if target is not None and index.unsynced_partitions(milvus.store_key(model_id), start, end):
        return None
    milvus_store.point_alias(client, alias, name)
    return f"search alias {alias} now names {name} (was {target or 'unset'})"
