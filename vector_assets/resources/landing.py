"""The landing data (JSONL exports in a folder or an object store) and local git repositories,
as one resource."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import dagster as dg
from pydantic import Field

from .. import state
from ..ingest.records import safe_name
from ..ingest.landing import LandingIndex, RefreshReport, export_git_repository, git_head


class LandingResource(dg.ConfigurableResource):
    """Source of records: every ``*.jsonl`` under ``landing_dir`` plus the history of each
    configured git repository.

    Attributes:
        landing_dir: folder of JSONL export files (read as they are, e.g. ``../shared/data``),
            or an object-store URL (``s3://bucket/prefix``; see :class:`LandingIndex`).
        state_dir: this machine's folder for git exports (and, by default, the SQLite state
            database).
        state_url: SQLAlchemy URL of the state database (landing index, sync marks,
            quarantine reports); empty: :func:`vector_assets.state.state_url`.
        git_repos: ``tenant=path`` entries; each repository's HEAD history becomes the
            tenant's commits.
    """

    landing_dir: str
    state_dir: str
    state_url: str = ""
    git_repos: list[str] = Field(default_factory=list)

    def _git_exports(self) -> list[tuple[str, Path, Path]]:
        out = []
        for entry in self.git_repos:
            if "=" not in entry:
                raise ValueError(f"git_repos entry {entry!r} is not tenant=path")
            tenant, path = entry.split("=", 1)
            out.append((tenant.strip(), Path(path.strip()).expanduser(), Path(self.state_dir) / "git_exports" / f"{safe_name(tenant.strip())}.jsonl"))
        return out

    def database_url(self) -> str:
        """The state database's URL: ``state_url``, else ``VECTOR_ASSETS_STATE_URL``, the
        Dagster instance's PostgreSQL, or ``<state_dir>/state.sqlite``."""
        import os

        if self.state_url:
            return self.state_url
        if os.environ.get("VECTOR_ASSETS_STATE_URL") or os.environ.get("DAGSTER_PG_HOST"):
            return state.state_url()
        return f"sqlite:///{Path(self.state_dir).expanduser().resolve() / 'state.sqlite'}"

    def index(self) -> LandingIndex:
        """The :class:`LandingIndex` over the landing data and the git exports, in the state
        database; each landing source has its own rows (pointing ``VECTOR_ASSETS_LANDING_DIR``
        elsewhere never plans or deletes the old source's tenant-days).

        A landing index file of before the state database
        (``<state_dir>/landing_index-<hash>.sqlite``) is migrated once: its sync marks and the
        tenant-days it saw are imported, the file is renamed ``….migrated`` and a message says
        so on stderr; the lines are re-read from the landing files by the next refresh."""
        index = LandingIndex(self.landing_dir, self.database_url(), [e[2] for e in self._git_exports()])
        if not index.remote:
            old = Path(self.state_dir) / f"landing_index-{hashlib.blake2b(index.source.encode(), digest_size=6).hexdigest()}.sqlite"
            if old.is_file():
                try:
                    marks, seen = index.import_sqlite_index(old)
                    note = f"imported {marks} sync marks and {seen} tenant-days seen; the lines are re-read from the landing files"
                except Exception as err:  # noqa: BLE001 - an unreadable old index is rebuilt, not fatal
                    note = f"it could not be read ({err}); the index is rebuilt from the landing files and the next backfill embeds nothing unchanged"
                old.rename(old.with_name(old.name + ".migrated"))
                print(f"vector_assets: the landing index {old} moved to the state database {state.redacted(index.state_url)}: {note}", file=sys.stderr, flush=True)
        return index

    def refresh(self) -> RefreshReport:
        """Export git repositories whose HEAD moved, then refresh the index (only changed files
        are read). Returns the :class:`RefreshReport`."""
        for tenant, repo, out in self._git_exports():
            head = git_head(repo)
            marker = out.with_suffix(".head")
            if not out.exists() or not marker.exists() or marker.read_text() != head:
                export_git_repository(repo, tenant, out)
                marker.write_text(head)
        return self.index().refresh()

