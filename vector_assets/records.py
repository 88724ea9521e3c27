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
    if not isinstance(value, str) or not value.strip():
        raise RecordError("timestamp is missing")
    text = value.strip().replace("Z", "+00:00")
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(f"timestamp {value!r} is not ISO-8601") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.astimezone(dt.timezone.utc)


def record_timestamp(record: Mapping[str, Any]) -> dt.datetime:
    """The record's UTC timestamp: its update time when present, else its created/author time.

    Raises :class:`RecordError` when no timestamp field is present or it is unparseable.
    """
    for field in TIMESTAMP_FIELDS:
        if record.get(field):
            return parse_timestamp(record[field])
    raise RecordError("record has no timestamp (none of " + ", ".join(TIMESTAMP_FIELDS) + ")")


def record_tenant(record: Mapping[str, Any]) -> str:
    """The record's tenant, validated as a Dagster partition key.

    Raises :class:`RecordError` when the tenant is missing, empty, or holds ``| [ ] ,``.
    """
    tenant = record.get("tenant")
    if not isinstance(tenant, str) or not tenant.strip():
        raise RecordError("record has no tenant")
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
    return str(rid).strip()


def primary_key(tenant: str, kind: str, rid: str) -> str:
    """Deterministic Milvus primary key of a record: 32 hex chars of BLAKE2b(tenant, kind, id).

    The same record always maps to the same key, so re-materialising a partition replaces its
    rows instead of adding new ones; different tenants never collide.
    """
    digest = hashlib.blake2b(f"{tenant}\x1f{kind}\x1f{rid}".encode(), digest_size=16)
    return digest.hexdigest()


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
