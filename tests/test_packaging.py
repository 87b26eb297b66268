"""pyproject.toml declares every package that rrm_plugin imports, and the package ships py.typed."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import rrm_plugin

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PACKAGE = Path(rrm_plugin.__file__).parent
PYPROJECT = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> set[str]:
    """Top-level names of every absolute import in the package's source (parsed, not run)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "rrm_plugin"}


def declared(requirements: list[str]) -> set[str]:
    return {_canonical(re.match(r"[A-Za-z0-9_.\-]+", r).group()) for r in requirements}


def test_every_imported_package_is_declared():
    modules = imported_top_level_modules()
    # Known by name, so a parsing slip that finds nothing fails here, not silently below.
    assert {"torch", "sae_lens", "vit_prisma", "timm", "transformers", "huggingface_hub",
            "PIL", "sklearn", "open_clip"} <= modules, modules
    distributions = packages_distributions()
    deps = declared(PYPROJECT["project"]["dependencies"])
    missing = {m: distributions.get(m) for m in modules
               if not {_canonical(d) for d in distributions.get(m, [])} & deps}
    assert not missing, f"imported but not in [project] dependencies: {missing}"


def test_py_typed_ships_with_the_package():
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["rrm_plugin"]
