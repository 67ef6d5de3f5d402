"""Compute an sdist's core metadata with its PEP 517 backend, run in a sandbox."""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
import tempfile
import time
import tomllib
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyproject_hooks

from metasrv.errors import InvalidArchive, MetasrvError
from metasrv.index import archives
from metasrv.index.buildenvs import BuildEnvironments, RequirementsUnavailable
from metasrv.index.sandbox import Limits, run_sandboxed
from metasrv.model import CoreMetadata

# PEP 517: a project without [build-system] is built with setuptools' legacy backend.
DEFAULT_REQUIRES = ("setuptools>=40.8.0",)
DEFAULT_BACKEND = "setuptools.build_meta:__legacy__"
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_REASON_CHARACTERS = 200
# The part of a build's folder the sandbox may write; its logs stay beside it, out of reach.
SANDBOXED = "sandboxed"
_T = TypeVar("_T")
BACKEND_WARNING: type[Warning] = getattr(pyproject_hooks, "BuildBackendWarning", UserWarning)
# What a build's log says when the code is Python 2, or when it wanted to compile C.
_PYTHON_2 = re.compile(
    r"Missing parentheses in call to '?print|print [\"']|except [\w.]+, \w+:"
    r"|multiple exception types must be parenthesized|invalid decimal literal"
)
# A setup.py that refuses Python 3 outright, or imports what only Python 2 had.
_REFUSES_PYTHON_3 = re.compile(r"Python 3 (is )?not (yet )?supported|requires Python 2", re.I)
_PYTHON_2_MODULES = frozenset(
    {"__builtin__", "urllib2", "urlparse", "ConfigParser", "StringIO", "cPickle", "commands"}
)
_COMPILER = re.compile(r"\bgcc\b|Python\.h|\bcc\b|compiler|cl\.exe", re.IGNORECASE)
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")


class BuildFailed(MetasrvError):
    """An sdist whose metadata could not be built; the message is the reason recorded."""


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What building one sdist's metadata gave: metadata, or the reason there is none."""

    metadata: CoreMetadata | None
    name: str | None
    reason: str | None
    seconds: float
    document: bytes | None = None  # the METADATA the build wrote, byte for byte (PEP 658)


@dataclass(slots=True)
class Builder:
    """Builds sdists' metadata with environments from ``environments`` under ``limits``."""

    environments: BuildEnvironments
    limits: Limits = field(default_factory=Limits)
    # Where each build's throwaway folder is made; None is the system's temporary folder.
    scratch: Path | None = None

    def build(self, sdist: Path) -> BuildResult:
        """Return the core metadata a build of ``sdist`` produces, or why it could not."""
        started = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix="metasrv-build-", dir=self.scratch))
        try:
            read = self._build_in(workdir, sdist)
        except (BuildFailed, RequirementsUnavailable, InvalidArchive) as exc:
            return BuildResult(None, None, exc.message, time.monotonic() - started)
        finally:
            # Everything the build wrote is below workdir, even if it ran as another user.
            shutil.rmtree(workdir, ignore_errors=True)
        seconds = time.monotonic() - started
        return BuildResult(read.metadata, read.name, None, seconds, document=read.document)

    def _build_in(self, workdir: Path, sdist: Path) -> archives.ReadMetadata:
        source = unpack_sdist(sdist, workdir / SANDBOXED / "source")
        requires, backend, backend_path = read_build_system(source)
        environment = self.environments.ensure(requires)
        caller = self._caller(workdir, source, environment, backend, backend_path)
        extra = _call(caller.get_requires_for_build_wheel, backend)
        if not isinstance(extra, list) or not all(isinstance(r, str) for r in extra):
            raise BuildFailed(f"backend {backend} asked for build requirements not as strings")
        if extra:
            environment = self.environments.ensure([*requires, *extra])
            caller = self._caller(workdir, source, environment, backend, backend_path)
        output = workdir / SANDBOXED / "metadata"
        output.mkdir()
        dist_info = _call(lambda: caller.prepare_metadata_for_build_wheel(str(output)), backend)
        metadata_file = output / str(dist_info) / "METADATA"
        if not metadata_file.resolve().is_relative_to(output.resolve()):
            raise BuildFailed(f"backend {backend} put METADATA outside its folder")
        _require_regular_file(metadata_file)
        return archives.parse_metadata(metadata_file.read_bytes())

    def _caller(
        self,
        workdir: Path,
        source: Path,
        environment: Path,
        backend: str,
        backend_path: Sequence[str] | None,
    ) -> pyproject_hooks.BuildBackendHookCaller:
        sandboxed = workdir / SANDBOXED
        home = sandboxed / "home"
        home.mkdir(exist_ok=True)
        base = {
            "PATH": f"{environment / 'bin'}:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
        }
        readable = [environment, Path(pyproject_hooks.__file__).parent / "_in_process"]
        if not sys.base_prefix.startswith("/usr/"):
            readable.append(Path(sys.base_prefix))
        limits = self.limits

        def runner(
            cmd: Sequence[str],
            cwd: str | None = None,
            extra_environ: Mapping[str, str] | None = None,
        ) -> None:
            # pyproject-hooks talks to its hook process through files in a control folder.
            control = Path(cmd[-1])
            outcome = run_sandboxed(
                cmd,
                cwd=Path(cwd or source),
                writable=[sandboxed, control],
                readable=readable,
                environment={**base, **(extra_environ or {})},
                limits=limits,
                # The log is outside every folder the build can write: it cannot swap it.
                log_path=workdir / f"{control.name}.log",
            )
            if not outcome.ok:
                raise BuildFailed(outcome.stopped or reason_from_log(outcome.log_tail))
            _require_regular_file(control / "output.json")

        return pyproject_hooks.BuildBackendHookCaller(
            str(source),
            backend,
            backend_path=list(backend_path) if backend_path else None,
            runner=runner,
            python_executable=str(environment / "bin" / "python"),
        )


def _require_regular_file(path: Path) -> None:
    """Refuse a file the build left as a link: metasrv, outside the sandbox, would follow it."""
    if not path.is_file() or path.is_symlink():
        raise BuildFailed(f"the build left no regular file {path.name}")


def _call(hook: Callable[[], _T], backend: str) -> _T:
    try:
        # pyproject-hooks re-raises the backend's warnings here (setuptools has many): they
        # belong to the build's log, not to metasrv's output.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BACKEND_WARNING)
            return hook()
    except pyproject_hooks.BackendUnavailable:
        raise BuildFailed(f"backend {backend} not found") from None
    except pyproject_hooks.HookMissing as exc:
        raise BuildFailed(f"backend {backend} has no {exc.hook_name} hook") from None
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        OSError,
        pyproject_hooks.UnsupportedOperation,
    ) as exc:
        # The hook process answers in a JSON file the build could have written itself: it
        # may be any JSON, claim anything, and must not stop the run.
        raise BuildFailed(f"backend {backend} answered nonsense: {type(exc).__name__}") from None


def reason_from_log(log: str) -> str:
    """Return a short reason for a failed build, read from the end of its output."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    missing = _MISSING_MODULE.findall(log)
    if (
        (any("SyntaxError" in line for line in lines) and _PYTHON_2.search(log))
        or _REFUSES_PYTHON_3.search("\n".join(lines[-5:]))
        or (missing and missing[-1].split(".")[0] in _PYTHON_2_MODULES)
    ):
        return "python 2 only"
    if _COMPILER.search("\n".join(lines[-30:])) and "error" in log.lower():
        return "needs a compiler"
    if missing:
        return f"needs module {missing[-1]!r}, which its build requirements do not install"
    last = lines[-1] if lines else "no output"
    return f"build failed: {last}"[:MAX_REASON_CHARACTERS]


def read_build_system(source: Path) -> tuple[list[str], str, list[str] | None]:
    """Return an sdist's build requirements, backend and backend-path (PEP 517 / 518)."""
    pyproject = source / "pyproject.toml"
    if not pyproject.is_file():
        return list(DEFAULT_REQUIRES), DEFAULT_BACKEND, None
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildFailed(f"invalid pyproject.toml: {exc}") from None
    build_system = document.get("build-system")
    if not isinstance(build_system, dict):
        return list(DEFAULT_REQUIRES), DEFAULT_BACKEND, None
    requires = build_system.get("requires", list(DEFAULT_REQUIRES))
    backend = build_system.get("build-backend", DEFAULT_BACKEND)
    backend_path = build_system.get("backend-path")
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise BuildFailed("invalid pyproject.toml: build-system.requires is not a list of strings")
    if not isinstance(backend, str):
        raise BuildFailed("invalid pyproject.toml: build-system.build-backend is not a string")
    if backend_path is not None and not (
        isinstance(backend_path, list) and all(isinstance(p, str) for p in backend_path)
    ):
        raise BuildFailed("invalid pyproject.toml: build-system.backend-path is not a list")
    return requires, backend, backend_path


def unpack_sdist(sdist: Path, destination: Path) -> Path:
    """Unpack an sdist safely and return its one top-level folder."""
    destination.mkdir(parents=True)
    name = sdist.name
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as archive:
                _check_size(sum(info.file_size for info in archive.infolist()))
                for info in archive.infolist():
                    target = (destination / info.filename).resolve()
                    if not target.is_relative_to(destination.resolve()):
                        raise BuildFailed(f"sdist member {info.filename!r} leaves its folder")
                archive.extractall(destination)
        else:
            with tarfile.open(sdist) as archive:
                _check_size(sum(member.size for member in archive.getmembers()))
                # The "data" filter refuses absolute paths, links out of the folder and devices.
                archive.extractall(destination, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BuildFailed(f"unreadable sdist: {exc}") from None
    entries = [path for path in destination.iterdir() if path.is_dir()]
    if len(entries) != 1:
        raise BuildFailed("sdist does not hold exactly one top-level folder")
    return entries[0]


def _check_size(total: int) -> None:
    if total > MAX_UNPACKED_BYTES:
        raise BuildFailed(f"sdist unpacks to more than {MAX_UNPACKED_BYTES // 1024 // 1024} MB")
