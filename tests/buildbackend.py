"""A tiny PEP 517 backend, built as a wheel for the local index, and sdists that use it."""

from __future__ import annotations

from pathlib import Path

from tests.distributions import build_sdist, build_wheel, metadata_text

BACKEND_NAME = "tinybackend"
# The backend runs the sdist's build.py (as setuptools runs setup.py); its METADATA is the answer.
BACKEND_SOURCE = '''\
"""tinybackend: a PEP 517 backend for metasrv's tests."""
import os
import runpy
import warnings
import zipfile


def _build_py():
    return runpy.run_path("build.py")


def _dist_info(text):
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return fields["Name"].replace("-", "_") + "-" + fields["Version"] + ".dist-info"


def get_requires_for_build_wheel(config_settings=None):
    return list(_build_py().get("BUILD_REQUIRES", []))


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    # Real backends warn (setuptools, a lot); pyproject-hooks passes warnings on to its caller.
    warnings.warn("tinybackend is only for tests")
    text = _build_py()["METADATA"]
    dist_info = _dist_info(text)
    os.makedirs(os.path.join(metadata_directory, dist_info))
    with open(os.path.join(metadata_directory, dist_info, "METADATA"), "w") as out:
        out.write(text)
    return dist_info


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    text = _build_py()["METADATA"]
    dist_info = _dist_info(text)
    filename = dist_info[: -len(".dist-info")] + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as wheel:
        wheel.writestr(dist_info + "/METADATA", text)
        wheel.writestr(
            dist_info + "/WHEEL",
            "Wheel-Version: 1.0\\nGenerator: tinybackend\\nRoot-Is-Purelib: true\\n"
            "Tag: py3-none-any\\n",
        )
        wheel.writestr(dist_info + "/RECORD", "")
    return filename
'''
# A backend without prepare_metadata_for_build_wheel: metadata comes from a built wheel.
WHEEL_ONLY_SOURCE = "from tinybackend import build_wheel, get_requires_for_build_wheel\n"
PYPROJECT = '[build-system]\nrequires = ["tinybackend"]\nbuild-backend = "{backend}"\n'


def build_backend_wheel(folder: Path) -> Path:
    """Write the tinybackend wheel into an index folder."""
    return build_wheel(
        folder,
        BACKEND_NAME,
        "1.0",
        files={
            "tinybackend/__init__.py": BACKEND_SOURCE,
            "tinybackend/wheelonly.py": WHEEL_ONLY_SOURCE,
        },
    )


def build_dynamic_sdist(
    folder: Path,
    name: str,
    version: str,
    *,
    requires_dist: tuple[str, ...] = (),
    code: str = "",
    backend: str = BACKEND_NAME,
) -> Path:
    """Write a metadata 1.2 sdist (so its metadata is unknown) whose build.py runs ``code``.

    ``code`` runs after ``METADATA`` is set, so it may change it.
    """
    built = metadata_text(name, version, requires_dist=requires_dist, metadata_version="2.1")
    build_py = f"METADATA = {built!r}\n{code}\n"
    return build_sdist(
        folder,
        name,
        version,
        metadata_version="1.2",
        pyproject=PYPROJECT.format(backend=backend),
        files={"build.py": build_py},
    )


def build_in_tree_sdist(folder: Path, name: str, backend_source: str) -> Path:
    """Write a metadata 1.2 sdist of ``name`` 1.0 whose backend is its own ``<name>.py``."""
    pyproject = f'[build-system]\nrequires = []\nbuild-backend = "{name}"\nbackend-path = ["."]\n'
    return build_sdist(
        folder,
        name,
        "1.0",
        metadata_version="1.2",
        pyproject=pyproject,
        files={f"{name}.py": backend_source},
    )
