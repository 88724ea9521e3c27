"""Keeping the vector store (Milvus, or Postgres with pgvector) in step with the landing data, tenant-day by tenant-day, incrementally.

The tenant-day step is a chain of stages, each a plain function that returns a value (the
asset, :mod:`vector_assets.assets.vectors`, runs the checks between them):

============  ==========================================================================
read          :meth:`LandingIndex.read_partitions`: each tenant-day's current lines
extract       :func:`extract_partitions`, :func:`split_into_passages`: texts, bad records
gate (texts)  the run's text frame validated (:mod:`vector_assets.checks.evaluate`)
embed         :func:`open_collection`, :func:`plan_embeddings` (unchanged texts are skipped,
              moved ones reuse their stored vector), :func:`embed_texts` (one ``encode`` for
              the run), :func:`partition_changes` (rows to write, rows to delete, refusals)
gate (vectors) the blocking vector checks per tenant-day (``vector_quality``)
write         :func:`write_partitions`: upserts and deletes of the tenant-days let through
judge         the checks after the write, on what Milvus holds
record        the materialisations and check evaluations (Dagster), then :func:`record_synced`
              and :func:`cut_over_search_alias`
============  ==========================================================================

Afterwards each written tenant-day holds exactly its current records: no duplicates, no stale
rows, other tenant-days untouched. :func:`sync_partitions` chains the stages without the
gates, for callers without Dagster.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import numpy as np

from . import milvus_store
from .base import VectorStore
from ..ingest.extraction import ExtractedText, extract_records
from ..ingest.landing import LandingIndex, PartitionInput
from ..ingest.passages import record_pk
from ..ingest.records import BadRecord

PartitionKey = tuple[str, str]  # (tenant, day)


class Embedder(Protocol):
    """What the stages need of a model (the one contract of
    :class:`~vector_assets.resources.EmbeddingModelResource` and its OpenAI-compatible
    subclass): its id and dimension; ``get_model()`` loads it (once per process, outside the
    timed encode); ``encode(texts)`` gives normalised ``(n, dim)`` float32 vectors and
    ``encode_with_raw(texts)`` the raw (pre-normalisation) ones too; ``truncated_flags(texts)``
    says which texts are longer than the model's window (only their start is embedded);
    ``model_inputs(texts)`` gives the token ids the model sees of each text (the vector check's
    duplicate rule); ``split_passages(texts)`` cuts record texts into window-sized passages:
    ``(passages, records split, passages cut)``."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def get_model(self) -> object: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def encode_with_raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...

    def truncated_flags(self, texts: list[str]) -> list[bool]: ...

    def model_inputs(self, texts: list[str]) -> list[tuple[int, ...]]: ...

    def split_passages(self, texts: list[ExtractedText]) -> tuple[list[ExtractedText], int, int]: ...


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
    ``passages_deleted`` rows. ``tokens_embedded``: the tokens the model read for the passages
    embedded now (special tokens included, at most its window each): what an embedding
    provider bills.
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
    tokens_embedded: int = 0
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


def extract_partitions(located: dict[PartitionKey, PartitionInput]) -> dict[PartitionKey, PartitionResult]:
    """Stage *extract*: the texts of each tenant-day's records (no Milvus, no model).

    ``located``: :meth:`LandingIndex.read_partitions`' answer (stage *read*). A record whose day
    differs from its partition's (it cannot, unless the index is stale) is quarantined rather
    than written to the wrong partition. Superseded versions of a record id
    (:class:`vector_assets.ingest.landing.LandingIndex`) are quarantined with their reason.
    Returns ``{(tenant, day): PartitionResult}`` with ``texts`` one per record.
    """
    results: dict[PartitionKey, PartitionResult] = {}
    for key, item in located.items():
        tenant, day = key
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


def split_into_passages(results: dict[PartitionKey, PartitionResult], embedder: Embedder) -> dict[PartitionKey, PartitionResult]:
    """Stage *extract*, second half: each result with its record texts replaced by their
    passages (:mod:`vector_assets.ingest.passages`, the embedder's window), ``records_split`` and
    ``passages_cut`` set. Returns new results; ``results`` is left as it was."""
    split = {}
    for key, result in results.items():
        texts, records_split, passages_cut = embedder.split_passages(result.texts)
        split[key] = dataclasses.replace(result, texts=texts, records_split=records_split, passages_cut=passages_cut)
    return split


@dataclass(frozen=True)
class Collection:
    """A model's collection as a run found it: ``store`` (a
    :class:`~vector_assets.store.base.VectorStore`), its ``name``, whether it ``existed`` before
    the run (then bound to the run's landing source and ready), its vector ``dimension``
    (None when it did not exist) and its store ``key``
    (:func:`vector_assets.store.milvus_store.store_key`; None when it did not exist)."""

    store: VectorStore
    name: str
    existed: bool
    dimension: int | None
    key: str | None = None


def open_collection(milvus, model_id: str, source: str) -> Collection:
    """Stage *embed*, first step: ``model_id``'s collection in ``milvus`` (a store resource:
    :class:`~vector_assets.resources.MilvusResource` or
    :class:`~vector_assets.resources.PgvectorResource`), ready. Raises
    :class:`~vector_assets.store.milvus_store.SourceMismatchError` before anything is written or
    deleted when the collection is bound to another landing source than ``source`` (issue #17
    item 1)."""
    store = milvus.get_store()
    name = milvus.collection_for(model_id)
    if not store.has_collection(name):
        return Collection(store, name, False, None)
    store.bind_source(name, source)
    store.prepare(name)
    return Collection(store, name, True, store.collection_dimension(name), milvus.store_key(model_id))


@dataclass
class EmbeddingPlan:
    """Which texts of a run need a vector: ``stored`` (``{(tenant, day): {pk: {"content_hash"}}}``,
    the rows Milvus holds for the run's tenant-days), ``to_embed`` (new or changed texts) and
    ``reuse`` (``{pk: vector}``: texts whose record moved from another day with the same text,
    their stored vector reused)."""

    stored: dict[PartitionKey, dict[str, dict]]
    to_embed: list[ExtractedText]
    reuse: dict[str, list[float]]


def plan_embeddings(results: dict[PartitionKey, PartitionResult], collection: Collection, model_id: str, index: LandingIndex) -> EmbeddingPlan:
    """Stage *embed*, second step: compare each text's content hash with the row Milvus holds
    under its primary key (one query per group of tenants; one more by key for texts not found
    in their own tenant-day). Unchanged texts are in neither list.

    Only the tenant-days the store may hold rows of are read: where the collection's writes are
    marked (``index.written_among``), a tenant-day without a mark holds no row, and a run's
    empty tenant-days (most of a sparse tenant's days) cost no read of the store."""
    if not collection.existed:
        return EmbeddingPlan({}, [t for r in results.values() for t in r.texts], {})
    store, name = collection.store, collection.name
    may_hold = index.written_among(collection.key, results)
    asked = list(results) if may_hold is None else sorted(may_hold)
    stored = store.partition_rows(name, asked, ["content_hash"]) if asked else {}
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
    reuse: dict[str, list[float]] = {}
    if unknown:
        elsewhere = store.rows_by_pk(name, [t.pk for t in unknown], ["pk", "content_hash", "vector"])
        for text in unknown:
            row = elsewhere.get(text.pk)
            if row is not None and row["content_hash"] == text.hash_for(model_id):
                reuse[text.pk] = row["vector"]
            else:
                to_embed.append(text)
    return EmbeddingPlan(stored, to_embed, reuse)


@dataclass
class Embedded:
    """The vectors of a run: ``vectors`` (``{pk: (dim,) float32}``, L2-normalised, embedded now
    or reused), ``raw`` (pre-normalisation, for the texts embedded now), ``reused`` (pks whose
    vector came from a stored row), ``truncated`` (pks of texts longer than the model's window),
    ``tokens`` (``{pk: tokens the model read}`` for the texts embedded now) and ``encode_s``
    (seconds of encoding, the model's load excluded)."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    reused: set[str] = field(default_factory=set)
    truncated: set[str] = field(default_factory=set)
    tokens: dict[str, int] = field(default_factory=dict)
    encode_s: float = 0.0


def embed_texts(plan: EmbeddingPlan, embedder: Embedder, log: Callable[[str], None] = lambda msg: None) -> Embedded:
    """Stage *embed*, third step: encode the plan's ``to_embed`` texts in one ``encode`` (all
    tenant-days of the run, so batches stay full); the model is loaded only when there is
    something to encode. ``log``: one progress message."""
    out = Embedded(reused=set(plan.reuse))
    if plan.to_embed:
        # Loading the model (once per process, with its warm-up batch) is a one-time cost,
        # not per-vector processing time: a worker's first run charged 130-186 ms/vector
        # with it inside the timer, against 15-80 ms for its later runs.
        embedder.get_model()
        started = time.perf_counter()
        texts_in = [t.text for t in plan.to_embed]
        raw, encoded = embedder.encode_with_raw(texts_in)
        out.encode_s = time.perf_counter() - started
        log(f"encoded {len(plan.to_embed)} texts in {out.encode_s:.1f}s")
        out.vectors = {t.pk: encoded[i] for i, t in enumerate(plan.to_embed)}
        out.raw = {t.pk: raw[i] for i, t in enumerate(plan.to_embed)}
        out.truncated = {t.pk for t, flag in zip(plan.to_embed, embedder.truncated_flags(texts_in)) if flag}
        out.tokens = {t.pk: len(ids) for t, ids in zip(plan.to_embed, embedder.model_inputs(texts_in))}
    for pk, vec in plan.reuse.items():
        out.vectors[pk] = np.asarray(vec, dtype=np.float32)
    return out


@dataclass
class PartitionChange:
    """What writing one tenant-day means: ``changed`` (its texts with a vector to write, embedded
    now or reused), their ``raw`` and ``normalised`` ``(n, dim)`` vectors (``(0, 0)`` when none),
    ``stale`` (pks of rows of records gone from the tenant-day) and ``refused`` (why it must not
    be written whatever its checks say, else None)."""

    changed: list[ExtractedText]
    raw: np.ndarray
    normalised: np.ndarray
    stale: list[str]
    refused: str | None = None


def partition_changes(results: dict[PartitionKey, PartitionResult], plan: EmbeddingPlan, embedded: Embedded, vanished: set[str]) -> dict[PartitionKey, PartitionChange]:
    """Stage *embed*, last step: the change of each tenant-day (what the gate judges and the
    write applies). A tenant-day of a tenant in ``vanished`` (no line in the landing data any
    more) with rows to delete is refused: an empty or unmounted landing directory must never
    delete a tenant's vectors (issue #17 item 2)."""
    changes = {}
    vectors = embedded.vectors
    for key, result in results.items():
        tenant, day = key
        changed = [t for t in result.texts if t.pk in vectors]
        normalised = np.stack([vectors[t.pk] for t in changed]) if changed else np.zeros((0, 0), dtype=np.float32)
        raw = np.stack([embedded.raw.get(t.pk, vectors[t.pk]) for t in changed]) if changed else normalised
        current = {t.pk for t in result.texts}
        stale = [pk for pk in plan.stored.get(key, {}) if pk not in current]
        refused = None
        if tenant in vanished and stale:
            refused = (
                f"tenant {tenant} has no line in the landing data any more (files removed, or the landing "
                f"directory empty or not mounted); its {len(stale)} rows of {day} are kept. Delete them with "
                "`vector-assets backfill --delete-vanished-tenants` (run config delete_vanished_tenants)"
            )
        changes[key] = PartitionChange(changed, raw, normalised, stale, refused)
    return changes


@dataclass
class WriteOutcome:
    """What the write stage did: ``results`` (every tenant-day's :class:`PartitionResult`, its
    figures set and ``written`` True for those written; refused ones carry ``refused``) and
    ``write_s`` (seconds of upserts, deletes and flush; a new collection's first flush, which
    builds its indexes, excluded)."""

    results: dict[PartitionKey, PartitionResult]
    write_s: float


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


def written_result(result: PartitionResult, change: PartitionChange, embedded: Embedded) -> PartitionResult:
    """``result`` once its change is written, with its figures. They count records (a record is
    embedded when any of its passages is); the ``passages_*`` figures count rows."""
    changed = change.changed
    current_records = {record_pk(t.pk) for t in result.texts}
    embedded_records = {record_pk(t.pk) for t in changed if t.pk not in embedded.reused}
    moved = len({record_pk(t.pk) for t in changed if t.pk in embedded.reused} - embedded_records)
    return dataclasses.replace(
        result,
        embedded=len(embedded_records),
        moved=moved,
        skipped=len(current_records) - len(embedded_records) - moved,
        deleted=len({record_pk(pk) for pk in change.stale} - current_records),
        passages_embedded=sum(1 for t in changed if t.pk not in embedded.reused),
        tokens_embedded=sum(embedded.tokens.get(t.pk, 0) for t in changed if t.pk not in embedded.reused),
        passages_deleted=len(change.stale),
        truncated=sum(1 for t in changed if t.pk in embedded.truncated),
        rows=len(result.texts),
        written=True,
        vectors={t.pk: embedded.vectors[t.pk] for t in changed},
    )


def write_partitions(
    milvus,
    collection: Collection,
    model_id: str,
    index: LandingIndex,
    results: dict[PartitionKey, PartitionResult],
    changes: dict[PartitionKey, PartitionChange],
    allowed: set[PartitionKey],
    embedded: Embedded,
) -> WriteOutcome:
    """Stage *write*: apply the changes of the ``allowed`` tenant-days (those that passed their
    gate) to Milvus, creating ``model_id``'s collection (bound to ``index.source``) when it does
    not exist and there are rows to write. Refused tenant-days are never written.

    The tenant-days about to get rows are marked in the state database first
    (``index.mark_written``), so that the store never holds rows of an unmarked tenant-day; a
    run that creates the collection claims it as marked from its first row, and later runs read
    only its marked tenant-days (:func:`plan_embeddings`).

    Rows are upserted together, one upsert per 2,000 rows instead of one per tenant-day (about
    20 ms each through gRPC, most of a run's non-encode time at 1-3 records a tenant-day).
    Deletes stay per tenant-day: they filter on the day too, so a row whose record moved on to
    another day since stays, and a moved record's old row (deleted by day) and new row (upserted
    by key) do not depend on their order. Afterwards the tenant-day holds exactly its current
    texts. Raises whatever Milvus raises on a failed write (the tenant-day is then not in sync
    and the run fails). Nothing is recorded as synced here: :func:`record_synced` does that once
    the write is recorded where it must be.
    """
    started = time.perf_counter()
    out = {}
    pending: list[dict] = []
    to_mark: set[PartitionKey] = set()
    now = int(time.time())
    for key, result in results.items():
        change = changes[key]
        if change.refused is not None:
            out[key] = dataclasses.replace(result, refused=change.refused)
            continue
        if key not in allowed:
            out[key] = result
            continue
        tenant, day = key
        if change.changed:
            pending.extend(_rows(change.changed, change.normalised, model_id, now))
            to_mark.add(key)
        if change.stale:
            collection.store.delete_rows(collection.name, tenant, day, change.stale)
        out[key] = written_result(result, change, embedded)
    write_s = time.perf_counter() - started
    store_key = collection.key
    if pending and not collection.existed:
        # Created when there is something to write (a one-time cost, outside write_s).
        milvus.ensure_collection(model_id, len(pending[0]["vector"]))
        collection.store.bind_source(collection.name, index.source)
        store_key = milvus.store_key(model_id)
    if pending:
        upsert_started = time.perf_counter()
        # Marked before the rows exist (a crash between the two leaves a mark, never an
        # unmarked row); a run that created the collection claims its marks complete. (A store
        # without an identity has no claim either: every tenant-day of it is read.)
        if store_key is not None:
            index.mark_written(store_key, to_mark, claim=not collection.existed)
        collection.store.write_rows(collection.name, pending)
        write_s += time.perf_counter() - upsert_started
    if any(r.passages_embedded or r.moved or r.passages_deleted for r in out.values()):
        # Sealing the written segment keeps later filtered reads fast (an unflushed growing
        # segment is scanned row by row: ~0.15 s a query at 3,000 rows, ~0.01 s once flushed).
        flush_started = time.perf_counter()
        collection.store.flush(collection.name)
        if collection.existed:
            # The first flush of a collection created in this run seals its first segment and
            # builds its indexes: a one-time cost, not per-vector processing time.
            write_s += time.perf_counter() - flush_started
    return WriteOutcome(out, write_s)


def sync_partitions(keys: Iterable[PartitionKey], index: LandingIndex, embedder: Embedder, milvus, delete_vanished: bool = False) -> dict[PartitionKey, PartitionResult]:
    """The stages without gates, for callers without Dagster (the tenant-day asset runs the same
    stages with its checks between them): read, extract, embed what changed, write every
    tenant-day that is not refused. Returns ``{(tenant, day): PartitionResult}``; raises what
    the stages raise. ``delete_vanished``: delete the rows of tenants with no line in the
    landing data (off: their tenant-days are refused). The caller records the written ones with
    :func:`record_synced`."""
    keys = list(keys)
    results = extract_partitions(index.read_partitions(keys))
    index.write_quarantine({k: r.quarantined for k, r in results.items()})
    results = split_into_passages(results, embedder)
    collection = open_collection(milvus, embedder.model_id, index.source)
    plan = plan_embeddings(results, collection, embedder.model_id, index)
    embedded = embed_texts(plan, embedder)
    vanished = set() if delete_vanished else index.vanished_among(t for t, _ in keys)
    changes = partition_changes(results, plan, embedded, vanished)
    return write_partitions(milvus, collection, embedder.model_id, index, results, changes, set(results), embedded).results


def record_synced(index: LandingIndex, milvus, model_id: str, results: dict[PartitionKey, PartitionResult]) -> int:
    """Record the written partitions of ``results`` as synced to ``model_id``'s collection in
    ``milvus`` (:func:`vector_assets.store.milvus_store.store_key`), each against the fingerprint of
    the lines it was read from: an edit made while the run encoded changes the fingerprint, so
    the next backfill runs that partition again. The passages and tokens embedded are added to
    each tenant's embedding usage in the same transaction (the service's ``/metrics``). Returns
    the number recorded."""
    written = {k: r for k, r in results.items() if r.written}
    if not written:
        return 0
    store = milvus.store_key(model_id)
    if store is None:
        return 0
    # Records, not passages: what a later backfill reports as skipped for an unchanged tenant-day.
    usage: dict[tuple[str, str], tuple[int, int]] = {}
    for (tenant, _), r in written.items():
        if r.passages_embedded:
            passages, tokens = usage.get((tenant, model_id), (0, 0))
            usage[(tenant, model_id)] = (passages + r.passages_embedded, tokens + r.tokens_embedded)
    index.mark_synced(store, {k: (r.fingerprint, r.records) for k, r in written.items()}, usage)
    return len(written)


def cut_over_search_alias(index: LandingIndex, milvus, model_id: str, start: str | None = None, end: str | None = None, gate=None) -> str | None:
    """Point the search alias at ``model_id``'s collection once that collection is complete.

    Complete means every tenant-day of the landing data in ``[start, end]`` was written for
    this model from its current input (:meth:`LandingIndex.unsynced_partitions` is empty). Until
    then search keeps answering from the collection the alias names (the previous model's).
    With no alias yet, the first model's collection gets it at once. ``gate(old, new)`` (names of
    the collection the alias names and of the complete one) may refuse the move by returning why
    (the tenant-day step passes the retrieval-quality gate, issue #21, which logs its refusal);
    the alias then stays. Returns a message when the alias moved, else None.
    """
    store = milvus.get_store()
    name = milvus.collection_for(model_id)
    if not store.has_collection(name):
        return None
    alias = milvus.search_alias
    target = store.alias_target(alias)
    if target == name:
        return None
    if target is not None and index.unsynced_partitions(milvus.store_key(model_id), start, end):
        return None
    if target is not None and gate is not None and gate(target, name):
        return None  # refused: the gate says why
    store.point_alias(alias, name)
    return f"search alias {alias} now names {name} (was {target or 'unset'})"
