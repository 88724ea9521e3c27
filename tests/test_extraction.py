"""Extraction of each record kind, on real records of the bundled sample."""

import json

import pytest

from vector_assets.ingest.extraction import extract_record, extract_records, normalise_text
from vector_assets.ingest.records import LocatedRecord, RecordError, primary_key

from .conftest import SAMPLE, sample_records


def first(file: str, pred=lambda r: True) -> dict:
    with open(SAMPLE / file, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if pred(record):
                return record
    raise AssertionError(f"no matching record in {file}")


def test_jira_issue_gives_summary_description_and_versions():
    record = first("jira_issues_hadoop.jsonl", lambda r: r["affects_versions"] and r["description"])
    text = extract_record(LocatedRecord("f", 1, record))
    assert text.kind == "jira_issue"
    assert text.record_id == record["id"]
    assert text.text.startswith(normalise_text(record["summary"]))
    assert "Affects versions: " + ", ".join(record["affects_versions"]) in text.text
    assert "Labels:" not in text.text  # labels are always empty in this export
    assert text.day == record["day"]


def test_bugzilla_issue_gives_summary_and_description():
    record = first("bugzilla_seamonkey.jsonl", lambda r: len(r["description"]) > 50)
    text = extract_record(LocatedRecord("f", 1, record))
    assert text.kind == "bugzilla_issue"
    assert normalise_text(record["summary"]) in text.text
    assert normalise_text(record["description"])[:40] in text.text


def test_github_issue_gives_title_body_labels_without_template_comments():
    record = first("github_issues.jsonl", lambda r: r["labels"] and "<!--" in r["body"])
    text = extract_record(LocatedRecord("f", 1, record))
    assert text.kind == "github_issue"
    assert text.text.startswith(record["title"].strip())
    assert "Labels: " + ", ".join(record["labels"]) in text.text
    assert "<!--" not in text.text and "Do Not Delete This" not in text.text


def test_github_pull_request_includes_review_comments():
    record = dict(first("github_issues.jsonl"), source="github_pull_request", review_comments=[{"body": "Please add a **test** for this."}])
    text = extract_record(LocatedRecord("f", 1, record))
    assert text.kind == "github_pull_request"
    assert "Review comment: Please add a **test** for this." in text.text


def test_commit_gives_message_and_files_and_git_id():
    record = first("git_commits.jsonl", lambda r: len(r["files"]) > 5 and "/" in r["files"][0] and "\n" in r["message"])
    text = extract_record(LocatedRecord("f", 1, record))
    assert text.kind == "git_commit"
    assert text.record_id == f"git:{record['tenant']}:{record['sha']}"
    subject = record["subject"].strip()
    # The subject line, then the whole message (which starts with the subject again).
    assert text.text.startswith(f"{subject}\n{subject}")
    assert record["message"].strip().split("\n")[-1].strip() in text.text
    assert text.preview.startswith(subject) and not text.preview.startswith(f"{subject} {subject}")
    names = ", ".join(f.rsplit("/", 1)[-1] for f in record["files"][:5])
    assert text.text.endswith(f"Files: {names} (+{len(record['files']) - 5} more)")
    assert text.day == record["author_date_utc"][:10]


def test_merge_commit_has_its_own_kind():
    record = first("git_commits.jsonl", lambda r: r["is_merge"])
    text = extract_record(LocatedRecord("f", 1, record))
    assert text.kind == "git_merge_commit"
    assert text.record_id == f"git:{record['tenant']}:{record['sha']}"


def test_normalise_markup_and_whitespace():
    raw = "h2. Title\n\n\n{code:java}int x;{code}  see [the docs|http://x]  and [link](http://y)   <b>bold</b>\r\n\r\n<!-- hidden -->end"
    assert normalise_text(raw) == "Title\nint x; see the docs and link bold\nend"


def test_primary_key_is_deterministic_and_tenant_scoped():
    assert primary_key("a", "jira_issue", "1") == primary_key("a", "jira_issue", "1")
    assert primary_key("a", "jira_issue", "1") != primary_key("b", "jira_issue", "1")
    assert len(primary_key("a", "jira_issue", "1")) == 32


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"source": "jira", "tenant": "T", "created_at": "2024-01-01T00:00:00Z", "summary": "s"}, "record has no id"),
        ({"id": "x", "source": "trello", "tenant": "T", "created_at": "2024-01-01T00:00:00Z"}, "unknown record kind"),
        ({"id": "x", "source": "jira", "tenant": "T", "created_at": "2024-01-01T00:00:00Z", "summary": " ", "description": "<!-- -->"}, "extracted text is empty"),
        ({"id": "x", "source": "jira", "created_at": "2024-01-01T00:00:00Z", "summary": "s"}, "record has no tenant"),
        ({"id": "x", "source": "jira", "tenant": "T", "summary": "s"}, "record has no timestamp"),
        ({"id": "x", "source": "jira", "tenant": "a|b", "created_at": "2024-01-01T00:00:00Z", "summary": "s"}, "not allowed in a partition key"),
    ],
)
def test_bad_records_raise_with_reason(record, reason):
    with pytest.raises(RecordError, match=reason):
        extract_record(LocatedRecord("f", 1, record))


def test_extract_records_keeps_good_and_reports_bad_with_file_and_line():
    good = first("jira_issues_hadoop.jsonl")
    items = [LocatedRecord("in.jsonl", 1, good), LocatedRecord("in.jsonl", 2, {"source": "jira"})]
    texts, bad = extract_records(items)
    assert [t.record_id for t in texts] == [good["id"]]
    assert [(b.path, b.line) for b in bad] == [("in.jsonl", 2)]
    assert bad[0].reason == "record has no tenant"


def test_lowercase_z_zero_width_text_and_nfd_tenants():
    """Issue #17 item 13: a timestamp ending in lowercase z is RFC 3339 UTC; a text of
    zero-width characters only is empty (quarantined, not embedded); café in NFC and NFD is
    one tenant."""
    import unicodedata

    from vector_assets.ingest.extraction import extract_record
    from vector_assets.ingest.records import LocatedRecord, RecordError, parse_timestamp, record_tenant

    assert parse_timestamp("2024-05-02T23:30:00z") == parse_timestamp("2024-05-02T23:30:00Z")
    record = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-12")[0]
    lower = dict(record, updated_at=record["updated_at"].replace("Z", "") + "z" if record.get("updated_at") else "2024-07-01T10:00:00z")
    assert extract_record(LocatedRecord("f.jsonl", 1, lower)).day == parse_timestamp(lower["updated_at"]).date().isoformat()
    invisible = {k: v for k, v in record.items() if k in ("id", "source", "tenant", "updated_at", "created_at")}
    invisible.update(summary="\u200b\u200b", description="\u2060\ufeff \u200d")
    with pytest.raises(RecordError, match="extracted text is empty"):
        extract_record(LocatedRecord("f.jsonl", 2, invisible))
    nfd = unicodedata.normalize("NFD", "café")
    assert nfd != "café" and record_tenant({"tenant": nfd}) == record_tenant({"tenant": "café"}) == "café"
