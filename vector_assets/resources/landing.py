"""The landing directory (JSONL exports) and local git repositories, as one resource."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..records import safe_name
from ..landing import LandingIndex, RefreshReport, export_git_repository, git_head


class LandingResource(dg.ConfigurableResource):
    """Source of records: every ``*.jsonl`` under ``landing_dir`` plus the history of each
    configured git repository.

    Attributes:
        landing_dir: folder of JSONL export files (read as they are, e.g. ``../shared/data``).
        state_dir: where the landing index (``landing_index.sqlite``), git exports and
            quarantine files are kept.
        git_repos: ``tenant=path`` entries; each repository's HEAD history becomes the
            tenant's commits.
    """

    landing_dir: str
    state_dir: str
    git_repos: list[str] = Field(default_factory=list)

    def _git_exports(self) -> list[tuple[str, Path, Path]]:
        out = []
        for entry in self.git_repos:
            if "=" not in entry:
                raise ValueError(f"git_repos entry {entry!r} is not tenant=path")
            tenant, path = entry.split("=", 1)
            out.append((tenant.strip(), Path(path.strip()).expanduser(), Path(self.state_dir) / "git_exports" / f"{safe_name(tenant.strip())}.jsonl"))
        return out

    def index(self) -> LandingIndex:
        """The :class:`LandingIndex` over the landing directory and the git exports.

        Each landing directory has its own index file,
        ``landing_index-<BLAKE2b of its resolved path>.sqlite``: pointing
        ``VECTOR_ASSETS_LANDING_DIR`` elsewhere never plans or deletes the old directory's
        tenant-days."""
        resolved = str(Path(self.landing_dir).expanduser().resolve())
        name = f"landing_index-{hashlib.blake2b(resolved.encode(), digest_size=6).hexdigest()}.sqlite"
        return LandingIndex(self.landing_dir, Path(self.state_dir) / name, [e[2] for e in self._git_exports()])

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

    def quarantine_dir(self) -> Path:
        """Folder of the quarantine files (one JSONL file per tenant-day with bad records)."""
        return Path(self.state_dir) / "quarantine"
