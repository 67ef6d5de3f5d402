"""Mutate the module-level constants mutmut leaves alone, one at a time, and run their tests.

Each mutant is applied to a copy of the work tree (never to this one); a mutant is killed when
its tests fail. Run from the repository root: ``python -m benchmarks.mutate_constants``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_SECONDS = 300


@dataclass(frozen=True)
class Mutant:
    """One textual change to a constant, and the tests that should notice it."""

    path: str
    old: str
    new: str
    tests: tuple[str, ...]


_NAMES = ("tests/test_names.py", "tests/test_rules.py")
_PAGES = ("tests/test_simplepages.py", "tests/test_simple.py")
_WHEELS = ("tests/test_wheels.py", "tests/test_simple.py")
_RULES = ("tests/test_rules.py", "tests/test_overrides.py")
_COOLDOWN = ("tests/test_cooldown.py", "tests/test_gates.py")
_SIGNATURES = ("tests/test_signatures_mutants.py", "tests/test_signatures.py")
_SYNCSTATE = ("tests/test_syncstate.py",)
_ROOT = ("tests/test_rootindex.py", "tests/test_rootindex_mutants.py")
_PULL = ("tests/test_pullthrough_mutants.py",)
_HOT = ("tests/test_fastpath.py", "tests/test_server.py")
_HOTPATH_PY = "metasrv/http/hotpath.py"
_CLOSURE = ("tests/test_closure.py",)
_MIRRORS = ("tests/test_mirrors_git.py",)
_REGISTRY = ("tests/test_registry.py", "tests/test_understandings.py")
_REGISTRY_PY = "metasrv/understandings/registry.py"
_DEFAULT_ALLOW = 'DEFAULT_UNDERSTANDINGS_ALLOW = ("https://",)'
_REFSPECS = '_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")'
_BUILDS = ("tests/test_builds.py",)
_BUILD_INPUTS = ("tests/test_buildinputs.py",)
_SANDBOX = ("tests/test_sandbox.py",)
_BUILDS_PY = "metasrv/index/builds.py"
_SANDBOX_PY = "metasrv/index/sandbox.py"
_SIGNATURES_PY = "metasrv/understandings/signatures.py"
_FETCH_FAILED = "f'\"{MetadataStatus.FETCH_FAILED}\"'.encode()"
_ACTIONS = ("relax", "replace", "remove", "add", "requires-python", "yank", "approve")

MUTANTS = (
    Mutant(
        "metasrv/http/wheelcache.py",
        "RETRY_AFTER_SECONDS = 60.0",
        "RETRY_AFTER_SECONDS = 61.0",
        ("tests/test_wheelcache.py",),
    ),
    Mutant(_HOTPATH_PY, '_PREFIX = "/v1/projects/"', '_PREFIX = "/v1/project/"', _HOT),
    Mutant(_HOTPATH_PY, 'b"application/json")', 'b"application/jsonx")', _HOT),
    Mutant(_HOTPATH_PY, "([0-9a-f]{40})", "([0-9a-f]{41})", _HOT),
    Mutant("metasrv/names.py", "MAX_NAME_LENGTH = 200", "MAX_NAME_LENGTH = 201", _NAMES),
    Mutant("metasrv/names.py", "MAX_NAME_LENGTH = 200", "MAX_NAME_LENGTH = 199", _NAMES),
    Mutant("metasrv/names.py", "MAX_VERSION_LENGTH = 100", "MAX_VERSION_LENGTH = 99", _NAMES),
    Mutant("metasrv/names.py", "MAX_VERSION_LENGTH = 100", "MAX_VERSION_LENGTH = 101", _NAMES),
    Mutant("metasrv/names.py", 'PROJECT_SUFFIX = ".toml"', 'PROJECT_SUFFIX = ".tom"', _NAMES),
    Mutant("metasrv/names.py", "[a-z0-9][a-z0-9_-]{0,63}", "[a-z0-9][a-z0-9_-]{0,64}", _NAMES),
    Mutant("metasrv/names.py", "[a-z0-9][a-z0-9_-]{0,63}", "[a-z0-9][a-z0-9_-]{0,62}", _NAMES),
    Mutant("metasrv/names.py", "[a-z0-9][a-z0-9_-]{0,63}", "[a-z0-9_-][a-z0-9_-]{0,63}", _NAMES),
    Mutant("metasrv/names.py", "[a-z0-9][a-z0-9_-]{0,63}", "[a-z0-9][a-z0-9-]{0,63}", _NAMES),
    Mutant("metasrv/names.py", "[a-z0-9][a-z0-9_-]{0,63}", "[a-zA-Z0-9][a-z0-9_-]{0,63}", _NAMES),
    Mutant("metasrv/names.py", "[a-z0-9][a-z0-9_-]{0,63}", "[a-z0-9][a-z0-9_.-]{0,63}", _NAMES),
    Mutant(
        "metasrv/http/simplepages.py",
        "_PREFERENCE = (MIME_SIMPLE_JSON, MIME_SIMPLE_HTML, MIME_HTML)",
        "_PREFERENCE = (MIME_SIMPLE_HTML, MIME_SIMPLE_JSON, MIME_HTML)",
        _PAGES,
    ),
    Mutant(
        "metasrv/http/simplepages.py",
        "_PREFERENCE = (MIME_SIMPLE_JSON, MIME_SIMPLE_HTML, MIME_HTML)",
        "_PREFERENCE = (MIME_SIMPLE_JSON, MIME_HTML, MIME_SIMPLE_HTML)",
        _PAGES,
    ),
    Mutant(
        "metasrv/http/simplepages.py",
        '"*/*": MIME_HTML, "text/*"',
        '"*/*": MIME_SIMPLE_JSON, "text/*"',
        _PAGES,
    ),
    Mutant(
        "metasrv/http/simplepages.py", '"text/*": MIME_HTML', '"text/*": MIME_SIMPLE_HTML', _PAGES
    ),
    Mutant(
        "metasrv/http/simplepages.py",
        '"application/*": MIME_SIMPLE_JSON',
        '"application/*": MIME_HTML',
        _PAGES,
    ),
    Mutant(
        "metasrv/http/simplepages.py",
        '"application/vnd.pypi.simple.latest+json": MIME_SIMPLE_JSON',
        '"application/vnd.pypi.simple.latest+json": MIME_SIMPLE_HTML',
        _PAGES,
    ),
    Mutant(
        "metasrv/http/simplepages.py",
        '"application/vnd.pypi.simple.latest+html": MIME_SIMPLE_HTML',
        '"application/vnd.pypi.simple.latest+html": MIME_HTML',
        _PAGES,
    ),
    Mutant("metasrv/http/simplepages.py", "    MIME_HTML: MIME_HTML,\n", "", _PAGES),
    Mutant(
        "metasrv/http/wheels.py",
        '("requires-dist", "requires-python", "provides-extra")',
        '("requires-dist", "requires-python")',
        _WHEELS,
    ),
    Mutant(
        "metasrv/http/wheels.py",
        '("requires-dist", "requires-python", "provides-extra")',
        '("requires-dist", "provides-extra")',
        _WHEELS,
    ),
    Mutant(
        "metasrv/http/wheels.py",
        '("requires-dist", "requires-python", "provides-extra")',
        '("requires-python", "provides-extra")',
        _WHEELS,
    ),
    Mutant(
        "metasrv/http/wheels.py",
        '("requires-dist", "requires-python", "provides-extra")',
        '("requires-dist", "requires-python", "provides-extra", "dynamic")',
        _WHEELS,
    ),
    Mutant("metasrv/http/wheels.py", '"<4s5H3L2H"', '"<4s5H3L3H"', _WHEELS),
    Mutant("metasrv/http/wheels.py", '"<4s6H3L5H2L"', '"<4s6H3L4H2L"', _WHEELS),
    Mutant("metasrv/http/wheels.py", '"<4s4H2LH"', '"<4s4H2L"', _WHEELS),
    Mutant(
        "metasrv/http/wheels.py",
        '_LOCAL_SIGNATURE = b"PK\\x03\\x04"',
        '_LOCAL_SIGNATURE = b"PK\\x03\\x05"',
        _WHEELS,
    ),
    Mutant(
        "metasrv/http/wheels.py",
        '_CENTRAL_SIGNATURE = b"PK\\x01\\x02"',
        '_CENTRAL_SIGNATURE = b"PK\\x01\\x03"',
        _WHEELS,
    ),
    Mutant(
        "metasrv/http/wheels.py",
        '_END_SIGNATURE = b"PK\\x05\\x06"',
        '_END_SIGNATURE = b"PK\\x05\\x07"',
        _WHEELS,
    ),
    Mutant(
        "metasrv/understandings/rules.py",
        'FILE_FILTERS = ("wheels", "sdists")',
        'FILE_FILTERS = ("wheels",)',
        _RULES,
    ),
    Mutant(
        "metasrv/understandings/rules.py",
        'FILE_FILTERS = ("wheels", "sdists")',
        'FILE_FILTERS = ("sdists",)',
        _RULES,
    ),
    *(
        Mutant(
            "metasrv/understandings/rules.py",
            f"ACTIONS = {_ACTIONS!r}".replace("'", '"'),
            f"ACTIONS = {tuple(a for a in _ACTIONS if a != action)!r}".replace("'", '"'),
            _RULES,
        )
        for action in _ACTIONS
    ),
    Mutant(
        "metasrv/understandings/cooldown.py",
        'r"([1-9][0-9]{0,3})([dh])"',
        'r"([0-9][0-9]{0,3})([dh])"',
        _COOLDOWN,
    ),
    Mutant(
        "metasrv/understandings/cooldown.py",
        'r"([1-9][0-9]{0,3})([dh])"',
        'r"([1-9][0-9]{0,4})([dh])"',
        _COOLDOWN,
    ),
    Mutant(
        "metasrv/understandings/cooldown.py",
        'r"([1-9][0-9]{0,3})([dh])"',
        'r"([1-9][0-9]{0,3})([dhm])"',
        _COOLDOWN,
    ),
    Mutant(
        "metasrv/understandings/cooldown.py",
        "timedelta(days=3650)",
        "timedelta(days=3651)",
        _COOLDOWN,
    ),
    Mutant(
        _SIGNATURES_PY,
        'SSH_SIGNATURE_HEADER = b"-----BEGIN SSH SIGNATURE-----"',
        'SSH_SIGNATURE_HEADER = b"-----BEGIN PGP SIGNATURE-----"',
        _SIGNATURES,
    ),
    Mutant(_SIGNATURES_PY, 'NAMESPACE = "git"', 'NAMESPACE = "file"', _SIGNATURES),
    Mutant(
        _SIGNATURES_PY, "MAX_UNVERIFIED_COMMITS = 100", "MAX_UNVERIFIED_COMMITS = 99", _SIGNATURES
    ),
    Mutant(
        _SIGNATURES_PY, "MAX_UNVERIFIED_COMMITS = 100", "MAX_UNVERIFIED_COMMITS = 101", _SIGNATURES
    ),
    Mutant(
        "metasrv/index/syncstate.py",
        'STATE_FOLDER = "metasrv-sync"',
        'STATE_FOLDER = "metasrv-state"',
        _SYNCSTATE,
    ),
    Mutant(
        "metasrv/index/syncstate.py",
        f"({_FETCH_FAILED}, b'\"fetch failed: ')",
        "(b'\"fetch failed: ',)",
        _SYNCSTATE,
    ),
    Mutant(
        "metasrv/index/syncstate.py",
        f"({_FETCH_FAILED}, b'\"fetch failed: ')",
        f"({_FETCH_FAILED},)",
        _SYNCSTATE,
    ),
    Mutant(
        "metasrv/index/rootindex.py",
        "_MAX_VALUE_CHARS = 1 << 20",
        "_MAX_VALUE_CHARS = 1 << 19",
        _ROOT,
    ),
    Mutant(
        "metasrv/index/rootindex.py",
        "_MAX_VALUE_CHARS = 1 << 20",
        "_MAX_VALUE_CHARS = 1 << 21",
        _ROOT,
    ),
    Mutant(
        "metasrv/index/rootindex.py", "ROOT_MAX_BYTES = 1 << 30", "ROOT_MAX_BYTES = 1 << 26", _ROOT
    ),
    Mutant("metasrv/index/rootindex.py", '" \\t\\r\\n"', '" \\r\\n"', _ROOT),
    Mutant("metasrv/index/rootindex.py", '" \\t\\r\\n"', '" \\t\\n"', _ROOT),
    Mutant(
        "metasrv/index/closure.py",
        'LEGACY_BUILD_REQUIRES = ("setuptools", "wheel")',
        'LEGACY_BUILD_REQUIRES = ("setuptools",)',
        _CLOSURE,
    ),
    Mutant(
        "metasrv/index/closure.py",
        'LEGACY_BUILD_REQUIRES = ("setuptools", "wheel")',
        'LEGACY_BUILD_REQUIRES = ("wheel",)',
        _CLOSURE,
    ),
    Mutant(
        "metasrv/index/closure.py",
        "LEGACY_BACKEND = DEFAULT_BACKEND",
        'LEGACY_BACKEND = "setuptools.build_meta"',
        _CLOSURE,
    ),
    Mutant(
        "metasrv/index/pullthrough.py", "MISSING_SECONDS = 30.0", "MISSING_SECONDS = 0.0", _PULL
    ),
    Mutant("metasrv/index/pullthrough.py", "PAGE_CACHE_SIZE = 512", "PAGE_CACHE_SIZE = 0", _PULL),
    Mutant(
        "metasrv/understandings/mirrors.py",
        _REFSPECS,
        '_REFSPECS = ("refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")',
        _MIRRORS,
    ),
    Mutant(
        "metasrv/understandings/mirrors.py",
        _REFSPECS,
        '_REFSPECS = ("+refs/heads/*:refs/heads/*",)',
        _MIRRORS,
    ),
    Mutant(
        _REGISTRY_PY,
        "MAX_UNDERSTANDINGS_PER_REQUEST = 16",
        "MAX_UNDERSTANDINGS_PER_REQUEST = 17",
        _REGISTRY,
    ),
    Mutant(
        _REGISTRY_PY,
        "MAX_UNDERSTANDINGS_PER_REQUEST = 16",
        "MAX_UNDERSTANDINGS_PER_REQUEST = 15",
        _REGISTRY,
    ),
    Mutant(
        _REGISTRY_PY,
        _DEFAULT_ALLOW,
        'DEFAULT_UNDERSTANDINGS_ALLOW = ("https://", "http://")',
        _REGISTRY,
    ),
    Mutant(_REGISTRY_PY, _DEFAULT_ALLOW, "DEFAULT_UNDERSTANDINGS_ALLOW = ()", _REGISTRY),
    Mutant(_REGISTRY_PY, 'r"[0-9a-f]{40}"', 'r"[0-9a-f]{39}"', _REGISTRY),
    Mutant(_REGISTRY_PY, 'r"[0-9a-f]{40}"', 'r"[0-9a-f]{7,40}"', _REGISTRY),
    Mutant(
        _BUILDS_PY,
        "MAX_UNPACKED_BYTES = 512 * 1024 * 1024",
        "MAX_UNPACKED_BYTES = 513 * 1024 * 1024",
        _BUILD_INPUTS,
    ),
    Mutant(
        _BUILDS_PY,
        "MAX_UNPACKED_BYTES = 512 * 1024 * 1024",
        "MAX_UNPACKED_BYTES = 511 * 1024 * 1024",
        _BUILD_INPUTS,
    ),
    Mutant(_BUILDS_PY, "MAX_REASON_CHARACTERS = 200", "MAX_REASON_CHARACTERS = 201", _BUILDS),
    Mutant(_BUILDS_PY, "MAX_REASON_CHARACTERS = 200", "MAX_REASON_CHARACTERS = 199", _BUILDS),
    Mutant(
        _BUILDS_PY,
        'DEFAULT_REQUIRES = ("setuptools>=40.8.0",)',
        'DEFAULT_REQUIRES = ("setuptools",)',
        _BUILD_INPUTS,
    ),
    Mutant(
        _BUILDS_PY,
        'DEFAULT_BACKEND = "setuptools.build_meta:__legacy__"',
        'DEFAULT_BACKEND = "setuptools.build_meta"',
        _BUILD_INPUTS,
    ),
    Mutant(_BUILDS_PY, 'SANDBOXED = "sandboxed"', 'SANDBOXED = "sandbox"', _BUILDS),
    Mutant(_BUILDS_PY, '"__builtin__", "urllib2",', '"__builtin__",', _BUILDS),
    Mutant(_BUILDS_PY, "|multiple exception types must be parenthesized", "", _BUILDS),
    Mutant(_BUILDS_PY, "Python 3 (is )?not (yet )?supported", "Python 3 is not supported", _BUILDS),
    Mutant(_SANDBOX_PY, "NOBODY = 65534", "NOBODY = 65533", _SANDBOX),
    Mutant(_SANDBOX_PY, '"/lib32", "/lib64",', '"/lib32",', _SANDBOX),
    Mutant(_SANDBOX_PY, ', "/etc/localtime", "/etc/passwd")', ', "/etc/localtime")', _SANDBOX),
)


def run(mutant: Mutant, tree: Path) -> bool:
    """Apply ``mutant`` in ``tree``, run its tests, undo it; return whether a test failed."""
    path = tree / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.path}: {mutant.old!r} is not there exactly once")
    path.write_text(original.replace(mutant.old, mutant.new))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
            cwd=tree,
            capture_output=True,
            check=False,
            timeout=DEADLINE_SECONDS,
        )
    finally:
        path.write_text(original)
    return result.returncode != 0


def main(argv: list[str] | None = None) -> int:
    """Run every mutant; print a table per module; exit 1 if one survived."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="run the mutants of paths containing this")
    args = parser.parse_args(argv)
    survivors = 0
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "tree"
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        for name in listed:
            if (ROOT / name).is_file():
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, tree / name)
        for mutant in MUTANTS:
            if args.only not in mutant.path:
                continue
            killed = run(mutant, tree)
            survivors += not killed
            print(f"{'killed  ' if killed else 'SURVIVED'} {mutant.path}: {mutant.new.strip()}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
