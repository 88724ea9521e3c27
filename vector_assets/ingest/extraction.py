"""Text extraction per record kind: what of a record is embedded, and how it is normalised.

Rules follow the seeds (``003_*`` §3.2, ``002_*``) as issue #2 settles them:

* Jira / Bugzilla issue: summary, description, labels, affected versions, comments.
* GitHub issue / pull request: title, body, labels, review comments.
* Git commit: the full message and the changed file names.

Markup is reduced to its text (Markdown links and images, HTML tags and comments, Jira wiki
macros and headings) and whitespace is collapsed. Fields that are absent or empty are left
out, so a record never gets a "Labels:" line with nothing after it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .records import BadRecord, LocatedRecord, SURROGATE, RecordError, content_hash, record_identity

#: Longest extracted text of one record, in characters. The bounded-text rule of the
#: text-frame check (``QualityThresholds.max_text_chars``) defaults to it, so a longer record is
#: quarantined on its own instead of failing its tenant-day's blocking check.
MAX_TEXT_CHARS = 1_000_000

_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
# Bracketed parts exclude brackets and are bounded, so that unbalanced input ("[[[[...") costs
# linear time: the unbounded forms took 9 s at 32,000 characters and grew quadratically.
_MD_IMAGE = re.compile(r"!\[([^\[\]]{0,1000})\]\([^()]{0,2000}\)")
_MD_LINK = re.compile(r"\[([^\[\]]{1,1000})\]\((?:[^()]|\([^()]{0,2000}\)){0,2000}\)")
_MD_FENCE = re.compile(r"^\s*(```+|~~~+)[^\n]*$", re.M)
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.M)
_JIRA_MACRO = re.compile(r"\{(?:code|noformat|quote|panel|color)(?::[^}]*)?\}")
_JIRA_LINK = re.compile(r"\[([^|\[\]\n]{1,1000})\|[^\[\]\n]{1,2000}\]")
_JIRA_HEADING = re.compile(r"^\s*(?:h[1-6]|bq)\.\s+", re.M)
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def _strip_html_comments(text: str) -> str:
    """Replace each ``<!-- ... -->`` by a space, in linear time (an unclosed one is kept)."""
    parts, start = [], 0
    while (open_at := text.find("<!--", start)) >= 0:
        close_at = text.find("-->", open_at + 4)
        if close_at < 0:
            break
        parts += [text[start:open_at], " "]
        start = close_at + 3
    parts.append(text[start:])
    return "".join(parts)


def normalise_text(text: str | None) -> str:
    """Reduce markup to text and collapse whitespace.

    Removes HTML comments and tags, Markdown image/link syntax (keeping the link text), code
    fences and heading marks, Jira ``{code}``/``{noformat}``/``{quote}`` macros, ``[text|url]``
    links and ``h1.`` headings; collapses runs of spaces, and of blank lines into one newline.
    Returns ``""`` for ``None``.
    """
    if not text:
        return ""
    # An unpaired UTF-16 surrogate (JSON "\\ud83d") cannot be encoded as UTF-8: U+FFFD instead.
    text = SURROGATE.sub("\ufffd", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _strip_html_comments(text)
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _HTML_TAG.sub(" ", text)
    text = _MD_FENCE.sub("", text)
    text = _MD_HEADING.sub("", text)
    text = _JIRA_MACRO.sub(" ", text)
    text = _JIRA_LINK.sub(r"\1", text)
    text = _JIRA_HEADING.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n", text)
    return text.strip()


def _join_list(values: Any) -> str:
    if not values:
        return ""
    if isinstance(values, str):
        return values.strip()
    return ", ".join(str(v).strip() for v in values if str(v).strip())


def _comments(values: Any) -> list[str]:
    """Comment bodies from a list of strings or of objects with a ``body``/``text`` field."""
    if not values:
        return []
    out = []
    for item in values if isinstance(values, list) else [values]:
        body = item.get("body") or item.get("text") if isinstance(item, Mapping) else item
        body = normalise_text(str(body)) if body else ""
        if body:
            out.append(body)
    return out


def _sections(parts: Iterable[tuple[str, str]]) -> str:
    lines = []
    for label, value in parts:
        if value:
            lines.append(f"{label}{value}" if label else value)
    return "\n".join(lines)


def extract_issue_tracker(record: Mapping[str, Any]) -> str:
    """Text of a Jira or Bugzilla issue: summary, description, labels, affected versions, comments."""
    return _sections(
        [
            ("", normalise_text(record.get("summary"))),
            ("", normalise_text(record.get("description"))),
            ("Labels: ", _join_list(record.get("labels"))),
            ("Affects versions: ", _join_list(record.get("affects_versions"))),
            *[("Comment: ", c) for c in _comments(record.get("comments"))],
        ]
    )


def extract_github(record: Mapping[str, Any]) -> str:
    """Text of a GitHub issue or pull request: title, body, labels, review comments."""
    return _sections(
        [
            ("", normalise_text(record.get("title"))),
            ("", normalise_text(record.get("body"))),
            ("Labels: ", _join_list(record.get("labels"))),
            *[("Comment: ", c) for c in _comments(record.get("comments"))],
            *[("Review comment: ", c) for c in _comments(record.get("review_comments"))],
        ]
    )


#: Changed files named in a commit's text. File paths dilute the mean-pooled embedding: on
#: eval_pr_commits (BurntSushi/ripgrep, exact search, non-trivial queries) full paths gave
#: recall@10 0.727 against 0.758 for the reference document, the first 5 base names 0.758.
MAX_COMMIT_FILES = 5


def commit_files(files: Any) -> str:
    """The base names of the first :data:`MAX_COMMIT_FILES` changed files, and how many more."""
    if not files:
        return ""
    names = [str(f).rstrip("/").rsplit("/", 1)[-1] for f in files[:MAX_COMMIT_FILES]]
    more = len(files) - len(names)
    return ", ".join(names) + (f" (+{more} more)" if more > 0 else "")


def extract_commit(record: Mapping[str, Any]) -> str:
    """Text of a git commit: its subject line, then its full message, then its changed file
    names (base names of the first five, see :data:`MAX_COMMIT_FILES`).

    The subject comes first on its own although the message starts with it: the reference
    document of ``eval_pr_commits`` is ``title + newline + text`` the same way, and weighting the
    subject so keeps the file names from diluting it. Exact search over all 2,548 queries
    (all-MiniLM-L6-v2, ``benchmarks/commit_text.py``): message + files recall@10 0.771, subject +
    message + files 0.787, reference 0.802 (non-trivial 817: 0.604, 0.613, 0.607).
    """
    message = normalise_text(record.get("message") or record.get("subject"))
    subject = normalise_text(record.get("subject") or message.split("\n", 1)[0])
    return _sections([("", subject), ("", message), ("Files: ", commit_files(record.get("files")))])


EXTRACTORS = {
    "git_commit": extract_commit,
    "git_merge_commit": extract_commit,
    "github_issue": extract_github,
    "github_pull_request": extract_github,
    "jira_issue": extract_issue_tracker,
    "bugzilla_issue": extract_issue_tracker,
}


@dataclass(frozen=True)
class ExtractedText:
    """One record's extracted text with its identity and provenance.

    ``created_at``/``updated_at`` are Unix seconds (UTC); ``day`` is ``YYYY-MM-DD`` (UTC) of the
    record's timestamp; ``pk`` is :func:`records.primary_key`.
    """

    pk: str
    tenant: str
    day: str
    kind: str
    record_id: str
    text: str
    timestamp: int
    path: str
    line: int
    #: Passage index within the record (:mod:`vector_assets.ingest.passages`; 0: the record's start).
    passage: int = 0

    def hash_for(self, model_id: str) -> str:
        """:func:`records.content_hash` of this text under ``model_id``."""
        return content_hash(model_id, self.text)

    @property
    def preview(self) -> str:
        """The first 200 characters of the text on one line, without a first line that the
        next line repeats (a commit's subject, which its text carries twice; see
        :func:`extract_commit`)."""
        first, _, rest = self.text.partition("\n")
        body = rest if first and rest.startswith(first) else self.text
        return " ".join(body.split())[:200]


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds a character that is neither whitespace nor an invisible format
    character (Unicode category Cf: zero-width space U+200B, joiners, U+2060, the BOM U+FEFF):
    a text of those only is empty for search (issue #17 item 13: one was embedded)."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text)


def extract_record(located: LocatedRecord) -> ExtractedText:
    """Validate a record and extract its text.

    Raises :class:`RecordError` when the record has no tenant, timestamp or id, is of an
    unknown kind, or its extracted text is empty.
    """
    record = located.record
    tenant, kind, rid, pk, stamp = record_identity(record)
    text = EXTRACTORS[kind](record)
    if not has_visible_text(text):
        raise RecordError("extracted text is empty" + (" (only invisible format characters, such as zero-width spaces)" if text.strip() else ""))
    if len(text) > MAX_TEXT_CHARS:
        raise RecordError(f"extracted text has {len(text):,} characters, more than the {MAX_TEXT_CHARS:,} a record may have")
    return ExtractedText(
        pk=pk,
        tenant=tenant,
        day=stamp.date().isoformat(),
        kind=kind,
        record_id=rid,
        text=text,
        timestamp=int(stamp.timestamp()),
        path=located.path,
        line=located.line,
    )


def _raw(record: Any) -> str:
    """The record as JSON for a quarantine file (first 2,000 characters; surrogates escaped)."""
    try:
        return json.dumps(record)[:2000]
    except (ValueError, TypeError, RecursionError):
        return repr(record)[:2000]


def extract_records(
    located: Iterable[LocatedRecord],
) -> tuple[list[ExtractedText], list[BadRecord]]:
    """Extract every record; bad ones are returned as :class:`BadRecord` with file, line, reason.

    Duplicate primary keys within the input keep the last occurrence (a later export line is
    the newer state) and quarantine the earlier one with reason ``duplicate record id``.
    """
    good: dict[str, ExtractedText] = {}
    bad: list[BadRecord] = []
    for item in located:
        try:
            text = extract_record(item)
        except RecordError as err:
            bad.append(BadRecord(item.path, item.line, err.reason, _raw(item.record)))
            continue
        except (ValueError, TypeError, AttributeError, RecursionError, OverflowError, UnicodeError) as err:
            # A field of an unexpected type or shape: this record is bad, the others still land.
            bad.append(BadRecord(item.path, item.line, f"cannot extract text: {type(err).__name__}: {str(err)[:200]}", _raw(item.record)))
            continue
        previous = good.pop(text.pk, None)
        if previous is not None:
            bad.append(
                BadRecord(previous.path, previous.line, f"duplicate record id {previous.record_id!r} (superseded by line {text.line})", "")
            )
        good[text.pk] = text
    return list(good.values()), bad
