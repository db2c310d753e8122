"""The source layout docs/design.md §1 asks for, and the traps it avoids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_stdlib_operator_module_is_not_shadowed_from_the_repository_root() -> None:
    out = subprocess.run([sys.executable, "-c", "import operator; print(operator.__file__)"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert not out.startswith(str(REPO)), out
    assert not (REPO / "operator" / "__init__.py").exists()
    assert not (REPO / "trainer" / "__init__.py").exists()


def test_trainer_never_imports_the_operator() -> None:
    import re

    imports = re.compile(r"^\s*(from|import)\s+kubetune_operator\b", re.MULTILINE)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "trainer").rglob("*.py") if imports.search(p.read_text())]
    assert offenders == []


def test_trainer_config_imports_without_torch() -> None:
    code = ("import sys; import kubetune_trainer.contract.config, kubetune_operator.api, kubetune_operator.builders.training;"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    for script in ("kubetune", "kubetune-train", "kubetune-serve"):
        assert (bindir / script).exists(), f"{script} missing: pip install -e ."
