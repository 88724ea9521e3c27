"""Retrieval quality per tenant on golden queries mined from the tenant's own records (issue #21).

No labels are needed: a record is the one right answer to a query made from its own text.

* **Known item** (as ``benchmarks/long_issues.py`` builds them): the first sentence of 8 to 50
  words that starts past token 300 of the record's extracted text (a shorter record: past a
  third of it); the query's words are deep in the record, not in its title.
* **Title**: the record's first line (an issue's summary, a commit's subject) of at least three
  words; its answer is the record, whose body the title summarises.
* **Pull request** (a link): a sampled merge commit of a pull request (``Merge pull request #N
  ...`` with the title on a line of its own) gives the pull request's title; its answers are the
  pull request's commits that the tenant's data holds (:func:`pull_request_commits`: reachable
  from the merge's second parent, not from its first, as ``git log base..head`` lists them), the
  head commit first. The Jira and Bugzilla exports name no duplicate targets, so there are no
  duplicate links.

The queries are mined from the landing data (the records as extracted), never from a
collection, so a rebuilt or replaced collection is judged on the same set. The sample of a
tenant is fixed and versioned: records are ranked by a hash of ``(SAMPLE_SEED, tenant,
record key)`` and the first ones that yield queries are taken, up to
:data:`SAMPLE_QUERIES` queries; so a new record enters the sample only where it ranks, and the
sample's version (a hash of its records' keys and line digests) changes only when one of them
is edited, deleted or outranked. The queries are kept in the state database (every worker reads
the same set) and mined again when the version moves.

Figures are recall@10 and MRR@10 (the share of a query's answer records among the first 10
records, as ``benchmarks/search_quality.py`` scores ``eval_pr_commits``; the reciprocal of the
first answer's rank), averaged over the queries, per search mode, on the tenant's rows as :func:`vector_assets.serving.search.search`
serves them. The ``retrieval_quality`` check compares them with the tenant's baseline (its
first figures on this sample version, on any collection): see :func:`verdict` for the thresholds and
where they come from.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

import sqlalchemy as sa
from pymilvus import MilvusClient

from .. import state
from ..embed.quality import Verdict
from ..store.base import VectorStore
from .search import MODES, SearchError, as_store, search

#: Bumped when the mining rules change (every tenant's sample is mined again, and its baseline
#: starts again). 2: pull-request links. 3: a pull request's commits, not only its head, answer it.
GOLDEN_VERSION = "3"
#: Seed of the order in which records enter a tenant's sample: kept when the rules change, so
#: that a tenant keeps its sampled records (and queries) where the new rules do not touch them.
SAMPLE_SEED = "1"
#: Queries per tenant (known-item and title queries of the first records of the hash order).
SAMPLE_QUERIES = 50
MIN_WORDS, MAX_WORDS = 8, 50
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")

#: A drop of recall@10 or MRR@10 from the tenant's baseline of at least this much is a WARN ...
WARN_DROP = 0.04
#: ... and of at least this much an ERROR. Measured noise: README "Retrieval quality".
ERROR_DROP = 0.10


@dataclass(frozen=True)
class GoldenQuery:
    """One golden query: ``kind`` (``known_item``, ``title`` or ``pull_request``), its text and the ids
    of the records that answer it (``record_id``: one id, or several joined by newlines, as
    stored; :attr:`answers` splits them)."""

    query_id: str
    kind: str
    text: str
    record_id: str

    @property
    def answers(self) -> tuple[str, ...]:
        """The ids of the records that answer the query (one for known-item and title queries)."""
        return tuple(self.record_id.split("\n"))


def query_sentence(text: str, start_char: int) -> str | None:
    """The first sentence of ``text`` that starts at or after character ``start_char`` and has
    ``MIN_WORDS``..``MAX_WORDS`` words (sentences end at ``.``, ``!``, ``?`` before white space,
    or at a line break), on one line; None when there is none."""
    position = 0
    for match in [*SENTENCE_END.finditer(text), None]:
        end = match.start() if match else len(text)
        sentence = text[position:end].strip()
        if position >= start_char and MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            return " ".join(sentence.split())
        if match:
            position = match.end()
    return None


def _rank(tenant: str, key: str) -> str:
    return hashlib.blake2b(f"{SAMPLE_SEED}|{tenant}|{key}".encode(), digest_size=12).hexdigest()


#: A known-item sentence of a record longer than this many tokens starts past this token: past
#: the first 248-token passage, so a single vector of the record's start has not read it
#: (``benchmarks/long_issues.py``'s rule). Shorter records: past a third of the text.
PAST_TOKEN = 300


def queries_of_text(text: str, tokenizer) -> list[tuple[str, str]]:
    """``[(kind, query)]`` of one record's extracted text: a known-item sentence (when one is
    found; see :data:`PAST_TOKEN`) and its title (a first line of at least three words)."""
    out = []
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)["offset_mapping"]
    start = offsets[PAST_TOKEN][0] if len(offsets) > PAST_TOKEN else len(text) // 3
    sentence = query_sentence(text, start)
    if sentence:
        out.append(("known_item", sentence))
    title = text.split("\n", 1)[0].strip()
    if len(title.split()) >= 3 and " ".join(title.split()) != sentence:
        out.append(("title", " ".join(title.split())))
    return out


MERGE_PULL = re.compile(r"^Merge pull request #\d+")


#: A pull request with more commits than this in the data is a branch merged into another (a
#: release or maintenance branch), not one change: its title makes no golden query.
PR_MAX_COMMITS = 20


def _parents(record: dict) -> list[str]:
    parents = record.get("parents") or []
    if isinstance(parents, str):  # exported as a Python list's text
        parents = re.findall(r"[0-9a-f]{7,40}", parents)
    return [p.strip() for p in parents]


def pull_request_commits(parents: list[str], parents_of: dict[str, list[str]], limit: int = PR_MAX_COMMITS) -> list[str] | None:
    """The commits of the pull request merged by a merge commit with ``parents`` (base, head),
    as ``git log base..head`` lists them: reachable from the head, not from the base, walking
    ``parents_of`` (``{sha: [parent sha]}``, the tenant's commits; a commit missing from it ends
    that path), head first. None when there are more than ``limit``."""
    base: set[str] = set()
    stack = [parents[0]]
    while stack:
        sha = stack.pop()
        if sha not in base and sha in parents_of:
            base.add(sha)
            stack.extend(parents_of[sha])
    commits: list[str] = []
    seen: set[str] = set()
    stack = [parents[1]]
    while stack:
        sha = stack.pop()
        if sha in seen or sha in base or sha not in parents_of:
            continue
        seen.add(sha)
        commits.append(sha)
        if len(commits) > limit:
            return None
        stack.extend(reversed(parents_of[sha]))
    return commits


def pull_request_query(record: dict, tenant: str, parents_of: dict[str, list[str]]) -> tuple[str, str] | None:
    """``(pull request title, its commits' record ids joined by newlines)`` of a merge commit
    ``record`` (a landing record) whose message is GitHub's ``Merge pull request #N from ...``
    followed by the title, when the tenant's commits (``parents_of``: ``{sha: [parent sha]}``)
    hold its head commit (the second parent); see :func:`pull_request_commits`. Else None."""
    parents = _parents(record)
    lines = [line.strip() for line in str(record.get("message") or "").splitlines() if line.strip()]
    if len(parents) < 2 or len(lines) < 2 or not MERGE_PULL.match(lines[0]) or len(lines[1].split()) < 3:
        return None
    commits = pull_request_commits(parents, parents_of)
    if not commits:
        return None
    return " ".join(lines[1].split()), "\n".join(f"git:{tenant}:{sha}" for sha in commits)


def commit_graph(index, records) -> dict[str, list[str]]:
    """``{sha: [parent sha]}`` of the commits among ``records`` (``(key, digest, path, line)`` of
    the landing index); lines that do not parse are left out (their runs quarantine them)."""
    import json

    graph = {}
    for _, _, path, line in records:
        try:
            raw = json.loads(index.line_text(path, line))
        except ValueError:
            continue
        if isinstance(raw, dict) and raw.get("sha") and "parents" in raw:
            graph[str(raw["sha"]).strip()] = _parents(raw)
    return graph


def mine(index, tenant: str, size: int = SAMPLE_QUERIES) -> tuple[str, list[GoldenQuery]]:
    """The golden queries of ``tenant`` from its records in the landing data (``index``: a
    :class:`~vector_assets.ingest.landing.LandingIndex`), not from the store, so that how a
    collection indexes them (passages, model, index) never changes the set: ``(version,
    queries)``, ``("", [])`` for a tenant without records. The version hashes the sampled
    records' keys and line digests and the pull-request queries' answers: an edit of one of them,
    or its deletion, moves it."""
    import json

    from ..embed.embedding import load_tokenizer
    from ..ingest.extraction import extract_record
    from ..ingest.records import LocatedRecord, RecordError
    from ..settings import DEFAULT_MODEL

    tokenizer = load_tokenizer(DEFAULT_MODEL)[0]
    records = sorted(index.current_records(tenant), key=lambda r: _rank(tenant, r[0]))
    graph: dict[str, list[str]] | None = None  # read once, when a sampled record is a merge
    queries: list[GoldenQuery] = []
    used: list[tuple[str, str]] = []
    for key, digest, path, line in records:
        if len(queries) >= size:
            break
        try:
            raw = json.loads(index.line_text(path, line))
            text = extract_record(LocatedRecord(path, line, raw))
        except (ValueError, RecordError):
            continue  # a bad record is quarantined by the tenant-day runs; it answers no query
        made = [(kind, query, text.record_id) for kind, query in queries_of_text(text.text, tokenizer)]
        link = None
        if isinstance(raw, dict) and len(_parents(raw)) > 1:
            if graph is None:
                graph = commit_graph(index, records)
            link = pull_request_query(raw, tenant, graph)
        if link:
            made.append(("pull_request", *link))
        if not made:
            continue
        used.append((key, digest))
        for kind, query, answer in made[: size - len(queries)]:
            queries.append(GoldenQuery(f"{tenant}:{len(queries)}", kind, query, answer))
    # A pull request's answers are other records: their set is part of the version too.
    links = [q.record_id for q in queries if q.kind == "pull_request"]
    version = hashlib.blake2b(repr((GOLDEN_VERSION, sorted(used), links)).encode(), digest_size=8).hexdigest() if used else ""
    return version, queries


# ---------------------------------------------------------------------------- stored sets and figures


def load(engine: sa.Engine, tenant: str) -> tuple[str, list[GoldenQuery]]:
    """The stored golden queries of ``tenant``: ``(version, queries)`` (``("", [])`` when none)."""
    G = state.golden_queries
    with engine.begin() as conn:
        rows = conn.execute(sa.select(G.c.version, G.c.query_id, G.c.kind, G.c.text, G.c.record_id).where(G.c.tenant == tenant).order_by(G.c.position)).all()
    return (rows[0][0] if rows else ""), [GoldenQuery(q, k, t, r) for _, q, k, t, r in rows]


def save(engine: sa.Engine, tenant: str, version: str, queries: list[GoldenQuery]) -> None:
    """Replace the stored golden queries of ``tenant``."""
    G = state.golden_queries
    with engine.begin() as conn:
        conn.execute(sa.delete(G).where(G.c.tenant == tenant))
        if queries:
            conn.execute(sa.insert(G), [{"tenant": tenant, "position": i, "version": version, "query_id": q.query_id, "kind": q.kind, "text": q.text, "record_id": q.record_id} for i, q in enumerate(queries)])


def golden_set(engine: sa.Engine, index, tenant: str) -> tuple[str, list[GoldenQuery], bool]:
    """The tenant's golden queries, mined again (:func:`mine`) when its sample's version moved
    (its records changed) or none are stored: ``(version, queries, refreshed)``."""
    version, queries = mine(index, tenant)
    stored_version, stored = load(engine, tenant)
    if stored_version == version and stored:
        return version, stored, False
    save(engine, tenant, version, queries)
    return version, queries, True


def answerable(client: VectorStore | MilvusClient, collection: str, tenant: str, queries: list[GoldenQuery]) -> tuple[list[GoldenQuery], int]:
    """The ``queries`` of ``tenant`` whose answer records ``collection`` holds, each keeping only
    its answers that are there (a pull request's commits not written yet are left out):
    ``(queries, how many were left out)``. A record not written yet (a backfill under way, a
    tenant's later days not materialised) is not a miss of search: the coverage checks judge what
    is written, this judges how search finds it."""
    present = as_store(client).records_present(collection, tenant, sorted({a for q in queries for a in q.answers}))
    out = []
    for q in queries:
        kept = [a for a in q.answers if a in present]
        if kept:
            out.append(q if len(kept) == len(q.answers) else GoldenQuery(q.query_id, q.kind, q.text, "\n".join(kept)))
    return out, len(queries) - len(out)


def baseline_key(version: str, queries: list[GoldenQuery], left_out: int) -> str:
    """The key a tenant's baseline is kept under: the sample ``version`` when every query was
    answerable, else the version and a hash of the answerable queries (at most 32 characters), so
    that figures on a partly written tenant never become the baseline of the whole (fewer rows
    are fewer distractors: they would read as a drop later)."""
    if not left_out:
        return version
    digest = hashlib.blake2b(repr(sorted((q.query_id, q.record_id) for q in queries)).encode(), digest_size=6).hexdigest()
    return f"{version[:16]}-{digest}"


@dataclass
class Figures:
    """Recall@10 and MRR@10 of one search mode on a tenant's golden queries."""

    mode: str
    recall: float
    mrr: float
    queries: int


def evaluate(client: VectorStore | MilvusClient, collection: str, embedder, tenant: str, queries: list[GoldenQuery], modes: list[str] | None = None, k: int = 10, search_params: dict | None = None) -> dict[str, Figures]:
    """:class:`Figures` per mode (default: every mode the collection serves) of ``queries`` on
    ``collection`` (a name; the caller has loaded it) searched as the product searches, through
    ``embedder``. A mode the collection cannot serve (BM25 on a 2.3 server) is left out."""
    if not queries:
        return {}
    modes = modes or [m for m in MODES if m == "dense" or as_store(client).has_bm25(collection)]
    out = {}
    texts = [q.text for q in queries]
    for mode in modes:
        try:
            hits = search(client, collection, embedder, tenant, texts, k=k, mode=mode, check_tenant=False, ensure_loaded=False, search_params=search_params)
        except SearchError:
            continue
        answers = [set(q.answers) for q in queries]
        ranks = [next((i for i, h in enumerate(found, 1) if h.id in relevant), None) for relevant, found in zip(answers, hits)]
        recall = sum(len(relevant & {h.id for h in found[:k]}) / len(relevant) for relevant, found in zip(answers, hits))
        out[mode] = Figures(mode, round(recall / len(ranks), 4), round(sum(1 / r for r in ranks if r) / len(ranks), 4), len(ranks))
    return out


def record(engine: sa.Engine, store: str, tenant: str, version: str, figures: dict[str, Figures]) -> dict[str, tuple[float, float]]:
    """Store ``figures`` of ``tenant`` on the collection ``store`` (its store key) and sample
    ``version``; returns the baseline of each mode, ``{mode: (recall, mrr)}``: the first figures
    stored for that tenant, mode and sample version, on any collection (these ones when there
    were none). A collection rebuilt or replaced (another index, a model switch, fewer passages)
    is so judged against what the tenant's search did before."""
    R = state.retrieval_figures
    now = time.time()
    with engine.begin() as conn:
        conn.execute(sa.insert(R), [{"store": store, "tenant": tenant, "mode": f.mode, "version": version, "recall": f.recall, "mrr": f.mrr, "measured_at": now} for f in figures.values()])
        baselines = {}
        for mode in figures:
            row = conn.execute(sa.select(R.c.recall, R.c.mrr).where(R.c.tenant == tenant, R.c.mode == mode, R.c.version == version).order_by(R.c.measured_at, R.c.id).limit(1)).first()
            baselines[mode] = (row[0], row[1])
    return baselines


def verdict(figures: dict[str, Figures], baselines: dict[str, tuple[float, float]], version: str, refreshed: bool) -> Verdict:
    """The ``retrieval_quality`` verdict of a tenant: a drop of recall@10 or MRR@10 from the
    baseline of at least :data:`ERROR_DROP` in any mode is an ERROR, of at least
    :data:`WARN_DROP` a WARN (thresholds from the run-to-run noise measured on the shared data:
    README "Retrieval quality"); a tenant without golden queries passes, saying so."""
    metadata: dict = {"golden_version": version or "none", "golden_refreshed": refreshed, "queries": max((f.queries for f in figures.values()), default=0)}
    worst, failures = 0.0, []
    for mode, f in figures.items():
        base_recall, base_mrr = baselines.get(mode, (f.recall, f.mrr))
        metadata[f"recall_at_10_{mode}"] = f.recall
        metadata[f"mrr_at_10_{mode}"] = f.mrr
        metadata[f"baseline_recall_at_10_{mode}"] = base_recall
        for name, value, base in (("recall@10", f.recall, base_recall), ("MRR@10", f.mrr, base_mrr)):
            drop = round(base - value, 4)
            worst = max(worst, drop)
            if drop >= WARN_DROP:
                failures.append(f"{mode} {name} {value:.3f} against baseline {base:.3f} (-{drop:.3f})")
    metadata["largest_drop"] = round(worst, 4)
    if worst >= ERROR_DROP:
        return Verdict(False, "ERROR", {**metadata, "failures": "; ".join(failures)})
    if worst >= WARN_DROP:
        return Verdict(False, "WARN", {**metadata, "failures": "; ".join(failures)})
    return Verdict(True, metadata=metadata)


@dataclass
class Comparison:
    """One tenant's golden-query figures on two collections, per mode: ``{mode: (old, new)}``
    of :class:`Figures`."""

    tenant: str
    queries: int
    modes: dict[str, tuple[Figures, Figures]]

    def losses(self, tolerance: float) -> list[str]:
        """What the new collection loses beyond ``tolerance`` (recall@10 or MRR@10, per mode)."""
        out = []
        for mode, (old, new) in self.modes.items():
            for name, a, b in (("recall@10", old.recall, new.recall), ("MRR@10", old.mrr, new.mrr)):
                if a - b >= tolerance:
                    out.append(f"{self.tenant} {mode} {name} {a:.3f} -> {b:.3f}")
        return out


def compare(engine: sa.Engine, index, client: VectorStore | MilvusClient, old: str, new: str, old_embedder, new_embedder, tenants: list[str]) -> list[Comparison]:
    """Every tenant's golden queries (:func:`golden_set`) whose answers ``old`` holds
    (:func:`answerable`) on the collections ``old`` and ``new`` (names, both loaded here), each
    searched with its own model: a :class:`Comparison` per tenant with queries, in the modes
    both collections serve (an answer missing from ``new`` counts as its miss)."""
    for name in (old, new):
        as_store(client).prepare(name)
    out = []
    for tenant in tenants:
        _, queries, _ = golden_set(engine, index, tenant)
        queries, _ = answerable(client, old, tenant, queries)  # what the served collection holds
        if not queries:
            continue
        a = evaluate(client, old, old_embedder, tenant, queries)
        b = evaluate(client, new, new_embedder, tenant, queries)
        out.append(Comparison(tenant, len(queries), {m: (a[m], b[m]) for m in a if m in b}))
    return out


def cut_over_tolerance() -> float:
    """``$VECTOR_ASSETS_CUTOVER_MAX_DROP``: how much recall@10 or MRR@10 a tenant may lose in any
    mode when the search alias moves to a new collection, else :data:`ERROR_DROP`. Raises
    ValueError naming the variable when it is not a number."""
    import os

    raw = os.environ.get("VECTOR_ASSETS_CUTOVER_MAX_DROP", "").strip()
    try:
        return float(raw) if raw else ERROR_DROP
    except ValueError:
        raise ValueError(f"VECTOR_ASSETS_CUTOVER_MAX_DROP={raw!r}: not a number (recall@10 / MRR@10 a tenant may lose at a cut-over)") from None
