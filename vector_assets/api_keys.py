"""API keys of the search service: stored hashed, each granting a list of tenants (or all).

A key reads ``va_<id>_<secret>``: ``id`` (12 hex characters) names it in ``keys list`` and
``keys revoke``; ``secret`` is 32 random bytes (``secrets.token_urlsafe``). The store is a JSON
file (``$VECTOR_ASSETS_API_KEYS``, else ``$VECTOR_ASSETS_HOME/api_keys.json``, mode 0600)
holding, per key, its id, the SHA-256 of the whole key, the tenants it grants (``["*"]``: all),
a name, the creation time and, once revoked, the revocation time. The key itself is printed
once, by ``vector-assets keys add``, and never stored. SHA-256 without a salt is enough for
keys of 256 random bits (what GitHub and Stripe tokens do); a slow password hash protects
guessable secrets, which these are not.

The service reloads the file when it changes, so ``keys add``/``keys revoke`` take effect on
the next request without a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import settings

ALL_TENANTS = "*"
KEY_PATTERN = re.compile(r"^va_([0-9a-f]{12})_[A-Za-z0-9_-]{20,}$")


class ApiKeyError(ValueError):
    """A key operation that cannot be done (unknown id, no tenant given, unreadable store)."""


@dataclass
class ApiKey:
    """One stored key: ``id``, ``sha256`` (hex of the whole key), ``tenants`` (``["*"]`` for
    all), ``name``, ``created`` and ``revoked`` (ISO 8601 UTC, ``revoked`` empty while valid)."""

    id: str
    sha256: str
    tenants: list[str]
    name: str = ""
    created: str = ""
    revoked: str = ""

    def grants(self, tenant: str) -> bool:
        """Whether this key may read ``tenant``."""
        return ALL_TENANTS in self.tenants or tenant in self.tenants

    @property
    def all_tenants(self) -> bool:
        return ALL_TENANTS in self.tenants


def keys_path() -> Path:
    """``$VECTOR_ASSETS_API_KEYS``, else ``$VECTOR_ASSETS_HOME/api_keys.json``."""
    return Path(os.environ.get("VECTOR_ASSETS_API_KEYS") or settings.home_dir() / "api_keys.json").expanduser()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class KeyStore:
    """The key file at ``path`` (:func:`keys_path` by default). Thread-safe; writers hold an
    exclusive ``flock`` on ``<path>.lock`` so two ``keys add`` never lose each other's key."""

    path: Path = field(default_factory=keys_path)
    _cache: tuple[float, int, dict[str, ApiKey]] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _read(self) -> dict[str, ApiKey]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise ApiKeyError(f"{self.path}: not a readable key file ({err})") from err
        return {item["id"]: ApiKey(**item) for item in raw.get("keys", [])}

    def keys(self) -> dict[str, ApiKey]:
        """Every stored key by id, re-read when the file changed (mtime or size)."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return {}
        with self._lock:
            if self._cache is None or self._cache[:2] != stamp:
                self._cache = (*stamp, self._read())
            return self._cache[2]

    @contextlib.contextmanager
    def _writing(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = self._read()
            yield keys
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
                json.dump({"keys": [asdict(k) for k in keys.values()]}, fh, indent=1)
            os.replace(tmp, self.path)

    def add(self, tenants: list[str], name: str = "") -> tuple[str, ApiKey]:
        """Create a key granting ``tenants`` (``["*"]``: all). Returns ``(key, stored entry)``;
        the key is not kept anywhere. Raises :class:`ApiKeyError` when ``tenants`` is empty."""
        tenants = sorted({t.strip() for t in tenants if t and t.strip()})
        if not tenants:
            raise ApiKeyError("a key needs at least one tenant (--tenant T, or --all-tenants)")
        key_id = secrets.token_hex(6)
        key = f"va_{key_id}_{secrets.token_urlsafe(32)}"
        entry = ApiKey(key_id, _digest(key), tenants, name, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        with self._writing() as keys:
            keys[key_id] = entry
        return key, entry

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key ``key_id``; raises :class:`ApiKeyError` for an unknown id."""
        with self._writing() as keys:
            if key_id not in keys:
                raise ApiKeyError(f"no key with id {key_id!r} in {self.path}")
            if not keys[key_id].revoked:
                keys[key_id].revoked = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            return keys[key_id]

    def verify(self, key: str) -> ApiKey | None:
        """The valid (not revoked) key entry ``key`` belongs to, else None (constant-time
        comparison of the hashes)."""
        match = KEY_PATTERN.match(key or "")
        if not match:
            return None
        entry = self.keys().get(match.group(1))
        if entry is None or entry.revoked or not hmac.compare_digest(entry.sha256, _digest(key)):
            return None
        return entry
