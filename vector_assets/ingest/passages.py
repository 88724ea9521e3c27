"""Long texts in passages: overlapping token windows, one Milvus row each (issue #11).

A sentence-transformers model reads the first ``max_seq_length`` tokens of a text (256 for
all-MiniLM-L6-v2) and ignores the rest: on ``../shared/data`` that is everything past the
first window of 51.5% of GitHub issues, 24.9% of Jira issues and 19.4% of Bugzilla bugs.
:func:`split_passages` cuts such a text into windows of ``window`` tokens that overlap by
``overlap`` of a window (start: the model's window and 25%, the usual choice of pgai
Vectorizer, LlamaIndex's ``TokenTextSplitter`` and CocoIndex), at most ``max_passages`` per
record; what lies past the last kept window is counted, not silently dropped.

Passage 0 keeps the record's primary key (a text that fits in one window has one row, exactly
as before); passage ``i > 0`` has the key ``<record pk>-<i>``. Every passage carries the
record's fields, its own text (a substring of the record's text, cut at token boundaries by
the tokenizer's character offsets) and its own content hash, so everything keyed by row works
per passage: an unchanged record re-embeds nothing, an edited one re-embeds its passages and
the ones it no longer has are deleted with the rest of the stale rows of its tenant-day.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..settings import DEFAULT_MAX_PASSAGES
from .extraction import ExtractedText

#: Overlap of consecutive windows, as a share of the window (issue #11's starting point).
DEFAULT_OVERLAP = 0.25
#: Tokens kept free of the model's window: the model adds [CLS] and [SEP], and a passage cut
#: inside a word re-tokenises into a few more pieces than its share of the record's tokens.
SPECIAL_AND_SLACK_TOKENS = 8


@dataclass(frozen=True)
class Passage:
    """One window of a record's text: ``index`` (0 = the record's start), ``start``/``end``
    (character offsets into the record's text, end exclusive)."""

    index: int
    start: int
    end: int


def passage_pk(record_pk: str, index: int) -> str:
    """Primary key of passage ``index`` of the record with key ``record_pk`` (passage 0 keeps
    the record's key)."""
    return record_pk if index == 0 else f"{record_pk}-{index}"


def record_pk(pk: str) -> str:
    """The record key of a passage's key (inverse of :func:`passage_pk`; record keys are hex)."""
    return pk.split("-", 1)[0]


def passage_spans(tokenizer, text: str, window: int, overlap: float = DEFAULT_OVERLAP, max_passages: int = DEFAULT_MAX_PASSAGES) -> tuple[list[Passage], int]:
    """Windows of ``window`` tokens over ``text`` (without special tokens), consecutive windows
    sharing ``overlap`` of a window; the last window ends at the text's last token.

    Returns ``(passages, cut)``: at most ``max_passages`` passages, and how many more windows the
    text would have needed. A text of at most ``window`` tokens is one passage covering it all.
    Raises ValueError for ``window < 1``, ``overlap`` outside [0, 1) or ``max_passages < 1``.
    """
    if window < 1 or not 0 <= overlap < 1 or max_passages < 1:
        raise ValueError(f"bad passage settings: window={window}, overlap={overlap}, max_passages={max_passages}")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)["offset_mapping"]
    n = len(offsets)
    if n <= window:
        return [Passage(0, 0, len(text))], 0
    stride = max(1, int(round(window * (1 - overlap))))
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    spans = [Passage(i, 0 if i == 0 else offsets[s][0], offsets[s + window - 1][1]) for i, s in enumerate(starts)]
    return spans[:max_passages], max(0, len(spans) - max_passages)


def split_passages(texts: list[ExtractedText], tokenizer, window: int, overlap: float = DEFAULT_OVERLAP, max_passages: int = DEFAULT_MAX_PASSAGES) -> tuple[list[ExtractedText], int, int]:
    """The passages of ``texts``: each record's text split by :func:`passage_spans`, a copy of
    the record per passage (``pk`` by :func:`passage_pk`, ``passage`` its index, ``text`` its
    text). Texts that cannot exceed ``window`` tokens (no longer than ``window`` characters:
    every token covers at least one) are not tokenised.

    Returns ``(passages, records_split, cut)``: the passages in record order, how many records
    have more than one, how many windows were cut by ``max_passages``.
    """
    out: list[ExtractedText] = []
    split = cut = 0
    for text in texts:
        if len(text.text) <= window:
            out.append(text)
            continue
        spans, lost = passage_spans(tokenizer, text.text, window, overlap, max_passages)
        cut += lost
        if len(spans) == 1:
            out.append(text)
            continue
        split += 1
        out.extend(dataclasses.replace(text, pk=passage_pk(text.pk, p.index), passage=p.index, text=text.text[p.start : p.end]) for p in spans)
    return out, split, cut
