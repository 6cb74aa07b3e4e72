"""The built wheel ships the bundled models as the ``pyroem.models`` subpackage."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_models_subpackage(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyroem", "models", "cli"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path / "wheels"
    # built from a copy so that no build/ or egg-info lands in the checkout; no build isolation,
    # so that it runs offline with the installed setuptools
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
           "--no-index", "-q", "-w", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("pyroem-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert "pyroem/models/__init__.py" in names
    assert "pyroem/__init__.py" in names and "pyroem/em.py" in names
    assert not any(n.startswith("models/") for n in names)


def test_public_names_are_not_shadowed_by_submodules():
    """Every name ``pyroem`` exports stays the function or class it names after all of pyroem's
    modules are imported (a submodule of the same name would replace it on first import)."""
    import importlib
    import pkgutil
    import types

    import pyroem

    for info in pkgutil.walk_packages(pyroem.__path__, "pyroem."):
        if not info.name.startswith(("pyroem.models", "pyroem.cli")):
            importlib.import_module(info.name)
    for name in pyroem.__all__:
        assert not isinstance(getattr(pyroem, name), types.ModuleType), name
