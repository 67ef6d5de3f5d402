"""Throwaway environments holding an sdist's build requirements, one per set, reused."""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from metasrv.errors import MetasrvError

INSTALL_TIMEOUT_SECONDS = 600.0
READY = "metasrv-ready"


class RequirementsUnavailable(MetasrvError):
    """Build requirements that could not be installed from the index."""


def built_on() -> str:
    """Return the interpreter and platform builds run on, as ``metadata-built-on`` says it."""
    return (
        f"{platform.python_implementation()} {platform.python_version()} "
        f"{sys.platform} {platform.machine()}"
    )


def find_uv() -> str | None:
    """Return the ``uv`` binary next to this interpreter or on PATH, if there is one."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() else shutil.which("uv")


class BuildEnvironments:
    """A folder of virtual environments keyed by the set of requirements installed in them."""

    def __init__(self, folder: Path, index_url: str) -> None:
        self.folder = folder
        self.index_url = index_url

    def ensure(self, requirements: Iterable[str]) -> Path:
        """Return an environment with ``requirements`` installed, creating it once."""
        wanted = _canonical(requirements)
        key_text = "\n".join([built_on(), self.index_url, *wanted])
        path = self.folder / hashlib.sha256(key_text.encode()).hexdigest()[:20]
        if (path / READY).exists():
            return path
        self.folder.mkdir(parents=True, exist_ok=True)
        # One process creates a given environment; others wait for it and then reuse it.
        with (self.folder / f"{path.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (path / READY).exists():
                shutil.rmtree(path, ignore_errors=True)
                try:
                    self._create(path, wanted)
                except BaseException:
                    shutil.rmtree(path, ignore_errors=True)
                    raise
                (path / READY).write_text("\n".join(wanted) + "\n")
        return path

    def _create(self, path: Path, requirements: list[str]) -> None:
        uv = find_uv()
        python = str(path / "bin" / "python")
        if uv is not None:
            self._run([uv, "venv", "--no-config", "--quiet", "--python", sys.executable, str(path)])
            install = [uv, "pip", "install", "--no-config", "--quiet", "--python", python]
            # Wheels only: installing a wheel runs no code, building an sdist would, unsandboxed.
            install += ["--no-build", "--index-url", self.index_url]
            install += ["--cache-dir", str(self.folder / "uv-cache")]
        else:
            self._run([sys.executable, "-m", "venv", str(path)])
            install = [python, "-m", "pip", "install", "--isolated", "--quiet", "--no-input"]
            install += ["--only-binary", ":all:", "--index-url", self.index_url]
            install += ["--disable-pip-version-check"]
        if requirements:
            self._run([*install, "--", *requirements])

    def _run(self, command: list[str]) -> None:
        # The user's pip / uv configuration must not add other indexes or find-links.
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PIP_", "UV_", "VIRTUAL_ENV", "PYTHON"))
        }
        try:
            completed = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=environment,
                timeout=INSTALL_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RequirementsUnavailable(
                f"installing build requirements took more than {INSTALL_TIMEOUT_SECONDS:g} s"
            ) from None
        if completed.returncode != 0:
            lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
            detail = next((line for line in lines if "error" in line.lower()), None)
            raise RequirementsUnavailable(
                f"could not install build requirements: {detail or (lines[-1] if lines else '?')}"
            )


def _canonical(requirements: Iterable[str]) -> list[str]:
    """Return requirements parsed, normalized and sorted, so equal sets share a key."""
    parsed = set()
    for text in requirements:
        try:
            parsed.add(str(Requirement(text)))
        except InvalidRequirement as exc:
            raise RequirementsUnavailable(f"invalid build requirement {text!r}: {exc}") from None
    return sorted(parsed)
