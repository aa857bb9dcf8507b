"""Layers point one way: the import-linter contracts in pyproject.toml (``[tool.importlinter]``) hold.

``cnndsl.backends`` is the top-level ``backends/`` folder, mapped into the package by setuptools'
``package-dir``; import-linter reads packages from the file system and would not find it there. So the
check runs ``lint-imports`` on the package laid out as installed (``cnndsl/`` with ``backends/`` inside it as
``cnndsl/backends/``), in a temporary directory, against the repository's pyproject.toml. This is how CI
checks the layers; ``python tests/test_layers.py`` runs the same check from a shell.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {"cnndsl": ROOT / "cnndsl", "cnndsl/backends": ROOT / "backends"}  # as pyproject's package-dir maps them


def _lint_imports() -> str | None:
    exe = shutil.which("lint-imports") or (str(Path(sys.executable).with_name("lint-imports"))
                                           if Path(sys.executable).with_name("lint-imports").exists() else None)
    return exe


def lay_out(dest: Path) -> int:
    """Copy the package's Python files into ``dest`` as the installed package has them; return how many."""
    count = 0
    for target, source in LAYOUT.items():
        for path in source.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            out = dest / target / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            count += 1
    return count


def run_contracts(exe: str, edit=None) -> tuple[subprocess.CompletedProcess, int]:
    """``lint-imports`` over the laid-out package (``edit(tree)`` may change it first)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = lay_out(Path(tmp))
        if edit is not None:
            edit(Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        r = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tmp, env=env,
                           capture_output=True, text=True, check=False, timeout=600)
    return r, files


@pytest.fixture(scope="module")
def exe() -> str:
    found = _lint_imports()
    if found is None:
        pytest.skip("import-linter is not installed (pip install 'cnndsl[test]')")
    return found


def test_import_contracts_hold(exe):
    r, files = run_contracts(exe)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    analysed = re.search(r"Analyzed (\d+) files", out)  # our modules and the external ones they import
    assert analysed and int(analysed.group(1)) >= files, out
    assert "Layers point one way" in out and "KEPT" in out and "BROKEN" not in out, out


def test_the_contract_sees_the_backends_and_is_broken_by_an_upward_import(exe):
    """A contract over modules import-linter cannot see passes vacuously: break it inside backends/ on purpose."""
    def upward(tree: Path) -> None:
        base = tree / "cnndsl" / "backends" / "base.py"
        base.write_text(base.read_text(encoding="utf-8") + "\nfrom cnndsl import api  # noqa\n", encoding="utf-8")
        fold = tree / "cnndsl" / "passes" / "fold_bn.py"
        fold.write_text(fold.read_text(encoding="utf-8") + "\nimport torch  # noqa\n", encoding="utf-8")

    r, _ = run_contracts(exe, upward)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "cnndsl.backends is not allowed to import cnndsl.api" in out, out
    assert "cnndsl.backends.base -> cnndsl.api" in out, out
    assert "cnndsl.passes is not allowed to import torch" in out, out
    assert "cnndsl.passes.fold_bn -> torch" in out, out


if __name__ == "__main__":
    exe = _lint_imports()
    if exe is None:
        sys.exit("lint-imports is not installed")
    result, _ = run_contracts(exe)
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)
