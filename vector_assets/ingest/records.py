"""Records: the raw input of the pipeline, their ids, kinds, days and primary keys.

A *record* is one JSON object from a landing file (one line of JSONL), of one of the kinds in
:data:`KINDS` (the ``source`` field names it). Field layouts follow ``../shared/data/README.md``:
``git_commits.jsonl`` (source ``git``), ``github_issues.jsonl`` (``github_issue``),
``jira_issues_hadoop.jsonl`` (``jira``) and ``bugzilla_seamonkey.jsonl`` (``bugzilla``).
Pull requests exported from GitHub use source ``github_pull_request`` with the issue fields.
A commit with more than one parent gets the kind ``git_merge_commit`` (search can leave merges
out with a kind filter).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping

#: Record kinds the pipeline embeds, keyed by the record's ``source`` field.
KINDS: dict[str, str] = {
    "git": "git_commit",
    "github_issue": "github_issue",
    "github_pull_request": "github_pull_request",
    "jira": "jira_issue",
    "bugzilla": "bugzilla_issue",
}

#: Characters Dagster forbids in a multi-partition dimension key (checked on Dagster 1.13).
FORBIDDEN_TENANT_CHARS = set("|[],")

#: Longest tenant name, in UTF-8 bytes (the Milvus ``tenant`` field's ``max_length``).
MAX_TENANT_BYTES = 256

#: An unpaired UTF-16 surrogate (JSON ``"\\ud83d"`` decodes to one): not encodable as UTF-8.
SURROGATE = re.compile("[\ud800-\udfff]")

#: Timestamp fields, in order of preference: the update time when the record has one, else
#: its creation / author time (issue #2, "Sources").
TIMESTAMP_FIELDS = ("updated_at", "updated", "created_at", "author_date_utc", "author_date", "committer_date")


class RecordError(ValueError):
    """A record that cannot be embedded; ``reason`` is the one-line cause."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_timestamp(value: Any) -> dt.datetime:
    """Parse an ISO-8601 timestamp into an aware UTC datetime.

    Naive timestamps (Jira and Bugzilla exports carry no zone) are taken as UTC.
    Raises :class:`RecordError` when the value is missing or unparseable.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise RecordError(f"timestamp {str(value)[:40]} is a number, not an ISO-8601 string")
    if not isinstance(value, str) or not value.strip():
        raise RecordError("timestamp is missing")
    text = value.strip()
    if text[-1:] in ("Z", "z"):  # RFC 3339 allows a lowercase z
        text = text[:-1] + "+00:00"
    try:
        stamp = dt.datetime.fromisoformat(text)
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.timezone.utc)
        # 9999-12-31T23:00:00-05:00 is valid ISO-8601 but past datetime's range in UTC.
        return stamp.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):
        raise RecordError(f"timestamp {value[:60]!r} is not an ISO-8601 time within years 1-9999 UTC") from None


def record_timestamp(record: Mapping[str, Any]) -> dt.datetime:
    """The record's UTC timestamp: its update time when present, else its created/author time.

    Raises :class:`RecordError` when no timestamp field is present or it is unparseable.
    """
    for field in TIMESTAMP_FIELDS:
        if record.get(field):
            return parse_timestamp(record[field])
    raise RecordError("record has no timestamp (none of " + ", ".join(TIMESTAMP_FIELDS) + ")")


def record_tenant(record: Mapping[str, Any]) -> str:
    """The record's tenant, validated as a Dagster partition key, in Unicode NFC.

    Raises :class:`RecordError` when the tenant is missing, empty, or holds ``| [ ] ,``.
    """
    tenant = record.get("tenant")
    if not isinstance(tenant, str) or not tenant.strip():
        raise RecordError("record has no tenant")
    # NFC: "café" typed precomposed and decomposed (NFD) is one tenant, not two that look alike
    # (issue #17 item 13).
    tenant = unicodedata.normalize("NFC", tenant) if not SURROGATE.search(tenant) else tenant
    if SURROGATE.search(tenant):
        raise RecordError(f"tenant {tenant[:60]!r} holds an unpaired UTF-16 surrogate (not valid Unicode text)")
    if len(tenant.strip().encode("utf-8")) > MAX_TENANT_BYTES:
        raise RecordError(f"tenant is longer than {MAX_TENANT_BYTES} bytes (UTF-8)")
    bad = FORBIDDEN_TENANT_CHARS.intersection(tenant)
    if bad:
        raise RecordError(f"tenant {tenant!r} contains characters not allowed in a partition key: {''.join(sorted(bad))}")
    return tenant.strip()


def record_kind(record: Mapping[str, Any]) -> str:
    """The record's kind (a value of :data:`KINDS`); raises :class:`RecordError` if unknown."""
    source = record.get("source")
    if source not in KINDS:
        raise RecordError(f"unknown record kind (source={source!r}); known: {', '.join(sorted(KINDS))}")
    return KINDS[source]


def record_id(record: Mapping[str, Any], tenant: str, kind: str) -> str:
    """The record's stable id: the ``id`` field, or ``git:<tenant>:<sha>`` for a commit.

    Raises :class:`RecordError` when the record has neither.
    """
    if kind in ("git_commit", "git_merge_commit"):
        sha = record.get("sha")
        if not isinstance(sha, str) or not sha.strip():
            raise RecordError("commit has no sha")
        return f"git:{tenant}:{sha.strip()}"
    rid = record.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        raise RecordError("record has no id")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise RecordError(f"record id is a {type(rid).__name__}, not a string or integer")
    rid = str(rid).strip()
    if SURROGATE.search(rid):
        raise RecordError(f"record id {rid[:60]!r} holds an unpaired UTF-16 surrogate (not valid Unicode text)")
    return rid


def record_identity(record: Mapping[str, Any]) -> tuple[str, str, str, str, dt.datetime]:
    """``(tenant, kind, record id, primary key, UTC timestamp)`` of a record: everything that
    places it, without extracting its text. A commit with more than one parent is of kind
    ``git_merge_commit``.

    Raises :class:`RecordError` when any of them is missing or invalid.
    """
    if not isinstance(record, Mapping):
        raise RecordError("line is not a JSON object")
    tenant = record_tenant(record)
    stamp = record_timestamp(record)
    kind = record_kind(record)
    if kind == "git_commit" and (record.get("is_merge") or len(record.get("parents") or []) > 1):
        kind = "git_merge_commit"
    rid = record_id(record, tenant, kind)
    return tenant, kind, rid, primary_key(tenant, kind, rid), stamp


def primary_key(tenant: str, kind: str, rid: str) -> str:
    """Deterministic Milvus primary key of a record: 32 hex chars of BLAKE2b(tenant, kind, id).

    The same record always maps to the same key, so re-materialising a partition replaces its
    rows instead of adding new ones; different tenants never collide.
    """
    digest = hashlib.blake2b(f"{tenant}\x1f{kind}\x1f{rid}".encode(), digest_size=16)
    return digest.hexdigest()


def record_key(kind: str, rid: str) -> str:
    """What identifies one record across tenants and days: 32 hex chars of BLAKE2b(kind, id).

    Unlike :func:`primary_key` it leaves the tenant out, so a record exported again under
    another tenant (a Jira issue moved to another project, an issue transferred to another
    repository) is the same record and its latest version wins (issue #17 item 3). Record ids
    are namespaced by their exporter (``jira:HADOOP:13584318``, ``gh:owner/repo#12``,
    ``bugzilla:SeaMonkey:1872623``); a commit's id holds its repository (``git:<tenant>:<sha>``),
    so a commit in two repositories stays two records.
    """
    return hashlib.blake2b(f"{kind}\x1f{rid}".encode(), digest_size=16).hexdigest()


def content_hash(model_id: str, text: str) -> str:
    """SHA-256 (hex, 64 chars) of the model id and the extracted text.

    A row whose stored hash equals this is up to date for that model; any change of text or
    model changes the hash.
    """
    return hashlib.sha256(f"{model_id}\n{text}".encode()).hexdigest()


@dataclass(frozen=True)
class LocatedRecord:
    """A parsed record with where it came from: ``path`` and 1-based ``line``."""

    path: str
    line: int
    record: dict


@dataclass(frozen=True)
class BadRecord:
    """A record that was quarantined: the file, the 1-based line, the reason and the raw line."""

    path: str
    line: int
    reason: str
    raw: str

    def as_dict(self) -> dict:
        """JSON-serialisable form, as written to the quarantine file."""
        return {"file": self.path, "line": self.line, "reason": self.reason, "raw": self.raw}


def safe_name(value: str, limit: int = 60) -> str:
    """A file name for ``value`` (a tenant): its letters, digits, ``.``, ``_`` and ``-`` (others
    as ``_``), at most ``limit`` characters, then ``-`` and 8 hex characters of its BLAKE2b hash.

    Bounded (no "File name too long" for a 300-character tenant), never ``.`` or ``..`` or a
    path (``../x`` cannot leave its folder), and distinct tenants get distinct names.
    """
    slug = re.sub(r"[^0-9A-Za-z._-]+", "_", value)[:limit].strip(".") or "_"
    return f"{slug}-{hashlib.blake2b(value.encode('utf-8', 'surrogatepass'), digest_size=4).hexdigest()}"
