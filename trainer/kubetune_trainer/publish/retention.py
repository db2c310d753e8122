"""Deleting published versions that a FineTuneJob no longer keeps (spec.output.keepVersions).

The operator decides which versions go (never one a ModelDeployment serves, never the latest passing
one) and runs `kubetune-train prune-versions` in a small Job that mounts the output volume: it never
reads or writes the volume itself (docs/design.md §3).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def prune_versions(root: str | Path, job: str, versions: list[int]) -> list[int]:
    """Delete `<root>/<job>/versions/<v>` for each v; returns the versions deleted (absent ones are
    skipped: a second run of the same Job deletes nothing). ValueError for a job name or version that
    would leave the versions folder."""
    if not job or "/" in job or job in (".", ".."):
        raise ValueError(f"job name {job!r}: a plain name is needed")
    base = Path(root) / job / "versions"
    deleted = []
    for version in versions:
        if int(version) < 1:
            raise ValueError(f"version {version}: versions are numbered from 1")
        target = base / str(int(version))
        if target.is_dir():
            shutil.rmtree(target)
            deleted.append(int(version))
    return deleted
