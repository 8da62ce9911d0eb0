"""The package's shape: module sizes, the public API, cheap import, the layer contract."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bayeslat

PKG = Path(bayeslat.__file__).parent
MAX_LINES = 600
HEAVY = ("pymc", "pytensor", "arviz", "nutpie", "jax", "numpyro", "matplotlib", "dask", "distributed")


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_over_the_size_limit():
    big = {str(p.relative_to(PKG)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_public_api_resolves_to_callables():
    for name in bayeslat.__all__:
        obj = getattr(bayeslat, name)
        assert name == "__version__" or callable(obj), name
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        bayeslat.nonsense  # noqa: B018


def test_import_bayeslat_and_the_cli_parser_import_no_sampler():
    code = (
        "import sys, bayeslat, bayeslat.cli; bayeslat.cli.build_parser(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"`import bayeslat` imported {out}"


def test_package_modules_import_heavy_libraries_only_inside_functions():
    offenders = []
    for p in _modules():
        for node in ast.parse(p.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            offenders += [f"{p.relative_to(PKG)}: {n}" for n in names if n.split(".")[0] in HEAVY]
    assert not offenders, offenders


def test_import_contract_holds():
    lint = pytest.importorskip("importlinter.cli", reason="import-linter is a dev extra (.ci/run installs it)")
    root = PKG.parent
    if not (root / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    import os

    cwd = os.getcwd()
    try:
        os.chdir(root)
        assert lint.lint_imports(config_filename=str(root / "pyproject.toml"), no_cache=True, no_logo=True) == 0
    finally:
        os.chdir(cwd)
