"""The package's layout: layers point down, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "metasrv"
MAX_MODULE_LINES = 400
# The data flow, lowest first: source -> git -> understandings / markers -> HTTP and CLI. A module
# may import the modules listed before it in its own layer and anything in a layer below its own.
LAYERS: list[tuple[str, list[str]]] = [
    ("", ["errors", "names", "tables", "buildsettings", "config", "model", "lru"]),
    (
        "repo",
        [
            "tomlcodec",
            "projectfile",
            "worktree",
            "objectfolders",
            "paths",
            "locks",
            "refwatch",
            "storage",
            "namesfile",
            "catalog",
        ],
    ),
    (
        "index",
        [
            "pages",
            "archives",
            "transport",
            "client",
            "filemetadata",
            "pagefiles",
            "sync",
            "rootindex",
            "syncstate",
            "wholeindex",
            "sandbox",
            "buildenvs",
            "builds",
            "buildrun",
            "closure",
            "projectmerge",
            "pullwriter",
            "pullloop",
            "pullthrough",
        ],
    ),
    (
        "understandings",
        ["rules", "overrides", "cooldown", "signatures", "mirrors", "registry", "authoring"],
    ),
    ("", ["markers"]),
    (
        "http",
        [
            "documents",
            "simplepages",
            "wheels",
            "wheelcache",
            "sourcefolder",
            "views",
            "bytecache",
            "listings",
            "readapi",
            "pulling",
            "hotpath",
            "compression",
            "accesslog",
            "simpleroutes",
            "guard",
            "fastpath",
            "app",
        ],
    ),
    ("cli", ["contribute", "builds", "show", "main"]),
    ("", ["__main__"]),
]
ORDER = [
    f"{package}.{module}" if package else module
    for package, modules in LAYERS
    for module in modules
]
PACKAGE_RANK = {package: rank for rank, (package, _) in enumerate(LAYERS) if package}


def _dotted(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _imported_modules(path: Path) -> set[str]:
    """Return every ``metasrv`` module the file imports, as dotted names below ``metasrv``."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "metasrv" or node.module in {f"metasrv.{p}" for p in PACKAGE_RANK}:
                prefix = node.module.removeprefix("metasrv").lstrip(".")
                imported.update(
                    f"{prefix}.{alias.name}" if prefix else alias.name for alias in node.names
                )
            elif node.module.startswith("metasrv."):
                imported.add(node.module.removeprefix("metasrv."))
        elif isinstance(node, ast.Import):
            imported.update(
                alias.name.removeprefix("metasrv.")
                for alias in node.names
                if alias.name.startswith("metasrv.")
            )
    return imported


MODULES = sorted(path for path in PACKAGE.rglob("*.py") if path.stem != "__init__")


def test_every_module_has_a_layer() -> None:
    assert sorted(_dotted(path) for path in MODULES) == sorted(ORDER)


def test_every_subpackage_is_a_layer() -> None:
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert folders == set(PACKAGE_RANK)


@pytest.mark.parametrize("path", MODULES, ids=_dotted)
def test_a_module_imports_only_layers_below_it(path: Path) -> None:
    below = set(ORDER[: ORDER.index(_dotted(path))])
    assert _imported_modules(path) <= below


@pytest.mark.parametrize("path", MODULES, ids=_dotted)
def test_a_module_stays_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


BUILD_MODULES = {"index.sandbox", "index.buildenvs", "index.builds", "index.buildrun"}


@pytest.mark.parametrize(
    "path", [p for p in MODULES if _dotted(p).startswith("http.")], ids=_dotted
)
def test_the_http_server_never_imports_the_sdist_builds(path: Path) -> None:
    # Builds run in their own process (metasrv build-metadata); a request never waits on one.
    assert not _imported_modules(path) & BUILD_MODULES


def test_the_readme_layout_table_names_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    missing = [
        module
        for _, modules in LAYERS
        for module in modules
        if module != "__main__" and f"`{module}`" not in table and f"`{module}.py`" not in table
    ]
    assert not missing, f"README's layout table does not name {missing}"
