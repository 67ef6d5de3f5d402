"""The package's layout: layers point down, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "metasrv"
MAX_MODULE_LINES = 400
# Lower layers first; a module may import only modules listed before it.
LAYERS = [
    "errors",
    "names",
    "tomlcodec",
    "model",
    "projectfile",
    "storage",
    "catalog",
    "simplepages",
    "archives",
    "sources",
    "filemetadata",
    "ingest",
    "markers",
    "rules",
    "overrides",
    "understandings",
    "api",
    "authoring",
    "simple",
    "wheels",
    "simpleapi",
    "bytecache",
    "readapi",
    "hotpath",
    "simpleserver",
    "server",
    "cli_contribute",
    "cli",
    "__main__",
]


def _imported_modules(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "metasrv":
                imported.update(alias.name for alias in node.names)
            elif node.module.startswith("metasrv."):
                imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported.update(
                a.name.split(".")[1] for a in node.names if a.name.startswith("metasrv.")
            )
    return imported


MODULES = sorted(path for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def test_every_module_has_a_layer() -> None:
    assert sorted(path.stem for path in MODULES) == sorted(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_a_module_imports_only_layers_below_it(path: Path) -> None:
    below = set(LAYERS[: LAYERS.index(path.stem)])
    assert _imported_modules(path) <= below


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_a_module_stays_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES
