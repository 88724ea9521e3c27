"""API keys of the search service: stored hashed, each granting a list of tenants (or all).

A key reads ``va_<id>_<secret>``: ``id`` (12 hex characters) names it in ``keys list`` and
``keys revoke``; ``secret`` is 32 random bytes (``secrets.token_urlsafe``). The store is a JSON
file (``$VECTOR_ASSETS_API_KEYS``, else ``$VECTOR_ASSETS_HOME/api_keys.json``, mode 0600)
holding, per key, its id, the SHA-256 of the whole key, the tenants it grants, whether it grants
every tenant (``all_tenants``: a grant of its own, which no tenant name aliases; a tenant named
``*`` is just a tenant), a name, the creation time and, once revoked, the revocation time. A key
file written before ``all_tenants`` existed stored all-tenant keys as ``tenants: ["*"]``; such an
entry is read as all tenants (what it meant then), and ``keys list`` says to re-issue it. The key itself is printed
once, by ``vector-assets keys add``, and never stored. SHA-256 without a salt is enough for
keys of 256 random bits (what GitHub and Stripe tokens do); a slow password hash protects
guessable secrets, which these are not.

The service reloads the file when it changes, so ``keys add``/``keys revoke`` take effect on
the next request without a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import settings
from ..local import file_lock

#: How key files before ``all_tenants`` wrote "every tenant" (read, never written now).
LEGACY_ALL_TENANTS = "*"
KEY_PATTERN = re.compile(r"^va_([0-9a-f]{12})_[A-Za-z0-9_-]{20,}$")


class ApiKeyError(ValueError):
    """A key operation that cannot be done (unknown id, no tenant given, unreadable store)."""


@dataclass
class ApiKey:
    """One stored key: ``id``, ``sha256`` (hex of the whole key), ``tenants`` (names, each
    granted as it is), ``all_tenants`` (every tenant, and ``/metrics``), ``name``, ``created``
    and ``revoked`` (ISO 8601 UTC, ``revoked`` empty while valid)."""

    id: str
    sha256: str
    tenants: list[str]
    name: str = ""
    created: str = ""
    revoked: str = ""
    all_tenants: bool = False

    def grants(self, tenant: str) -> bool:
        """Whether this key may read ``tenant``: an all-tenants key reads every tenant, another
        key the tenants it names, compared as names (``*`` grants the tenant named ``*``)."""
        return self.all_tenants or tenant in self.tenants

    @classmethod
    def from_json(cls, item) -> "ApiKey":
        """An entry of the key file; raises ValueError naming what is wrong with it. An entry
        without ``all_tenants`` whose tenants are ``["*"]`` (written before the field existed,
        by ``--all-tenants``) is an all-tenants key."""
        if not isinstance(item, dict):
            raise ValueError(f"a key entry is a {type(item).__name__}, not an object")
        missing = [f for f in ("id", "sha256", "tenants") if f not in item]
        if missing:
            raise ValueError(f"key entry {item.get('id', '?')!r} lacks {', '.join(missing)}")
        tenants = item["tenants"]
        if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
            raise ValueError(f"key entry {item['id']!r}: tenants is not a list of names")
        known = {f: item[f] for f in ("id", "sha256", "name", "created", "revoked") if f in item}
        if not all(isinstance(v, str) for v in known.values()):
            raise ValueError(f"key entry {item['id']!r}: id, sha256, name, created and revoked must be strings")
        legacy = "all_tenants" not in item and tenants == [LEGACY_ALL_TENANTS]
        everything = item.get("all_tenants", False)
        if not isinstance(everything, bool):
            raise ValueError(f"key entry {item['id']!r}: all_tenants is not true or false")
        return cls(tenants=[] if legacy else list(tenants), all_tenants=everything or legacy, **known)


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
            if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
                raise ValueError('expected an object {"keys": [...]}, found ' + (type(raw).__name__ if not isinstance(raw, dict) else "no list under keys"))
            return {entry.id: entry for entry in (ApiKey.from_json(item) for item in raw["keys"])}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            # Fails closed: no key is valid while the file cannot be read (issue #17 item 9: an
            # empty file, invalid JSON, [] or another shape gave a TypeError and a bare 500).
            raise ApiKeyError(f"{self.path}: not a readable key file ({str(err).strip() or type(err).__name__})") from err

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
        with file_lock(f"{self.path}.lock"):
            keys = self._read()
            yield keys
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
                json.dump({"keys": [asdict(k) for k in keys.values()]}, fh, indent=1)
            os.replace(tmp, self.path)

    def add(self, tenants: list[str], name: str = "", all_tenants: bool = False) -> tuple[str, ApiKey]:
        """Create a key granting ``tenants``, or every tenant with ``all_tenants`` (then
        ``tenants`` must be empty). Returns ``(key, stored entry)``; the key is not kept
        anywhere. Raises :class:`ApiKeyError` when neither or both are given."""
        tenants = sorted({t.strip() for t in tenants if t and t.strip()})
        if bool(tenants) == all_tenants:
            raise ApiKeyError("a key needs at least one tenant (--tenant T) or --all-tenants, not both")
        key_id = secrets.token_hex(6)
        key = f"va_{key_id}_{secrets.token_urlsafe(32)}"
        entry = ApiKey(key_id, _digest(key), tenants, name, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), all_tenants=all_tenants)
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
