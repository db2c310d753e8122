"""`kubetune-train prune-versions`: the cleanup Job's command (spec.output.keepVersions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kubetune_trainer.publish.retention import prune_versions


def published(root: Path, job: str, versions: list[int]) -> None:
    for v in versions:
        (root / job / "versions" / str(v)).mkdir(parents=True)
        (root / job / "versions" / str(v) / "manifest.json").write_text("{}")


def test_deletes_only_the_versions_named_and_is_idempotent(tmp_path: Path) -> None:
    published(tmp_path, "support", [1, 2, 3])
    assert prune_versions(tmp_path, "support", [1, 3]) == [1, 3]
    assert sorted(p.name for p in (tmp_path / "support" / "versions").iterdir()) == ["2"]
    assert prune_versions(tmp_path, "support", [1, 3]) == []  # a retried Job deletes nothing more


@pytest.mark.parametrize(("job", "versions"), [("../x", [1]), ("", [1]), ("support", [0])])
def test_refuses_what_would_leave_the_versions_folder(tmp_path: Path, job: str, versions: list[int]) -> None:
    with pytest.raises(ValueError):
        prune_versions(tmp_path, job, versions)


def test_the_command_line_says_what_it_deleted(tmp_path: Path) -> None:
    published(tmp_path, "support", [1, 2])
    out = subprocess.run([sys.executable, "-m", "kubetune_trainer", "prune-versions", "--root", str(tmp_path),
                          "--job", "support", "--versions", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "support" / "versions" / "1").exists() and (tmp_path / "support" / "versions" / "2").exists()
