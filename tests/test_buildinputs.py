"""What a build reads before it runs: the sdist archive, unpacked safely, and its build system."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from metasrv.index.builds import BuildFailed, read_build_system, unpack_sdist
from tests.distributions import build_sdist, build_sdist_bomb

LEGACY = (["setuptools>=40.8.0"], "setuptools.build_meta:__legacy__", None)


@pytest.mark.parametrize(
    ("pyproject", "expected"),
    [
        (None, LEGACY),
        ("[project]\nname = 'x'\n", LEGACY),
        ("build-system = 1\n", LEGACY),
        ("[build-system]\n", LEGACY),
        (
            "[build-system]\nrequires = ['flit_core>=3']\nbuild-backend = 'flit_core.buildapi'\n",
            (["flit_core>=3"], "flit_core.buildapi", None),
        ),
        (
            "[build-system]\nrequires = []\nbuild-backend = 'b'\nbackend-path = ['.', 'x']\n",
            ([], "b", [".", "x"]),
        ),
        (
            "[build-system]\nbuild-backend = 'hatchling.build'\n",
            (["setuptools>=40.8.0"], "hatchling.build", None),
        ),
        ("[build-system]\nrequires = ['hatchling']\n", (["hatchling"], LEGACY[1], None)),
    ],
)
def test_the_build_system_is_pyproject_s_or_setuptools_legacy_one(
    tmp_path: Path, pyproject: str | None, expected: tuple[list[str], str, list[str] | None]
) -> None:
    if pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    assert read_build_system(tmp_path) == expected


@pytest.mark.parametrize(
    ("pyproject", "reason"),
    [
        (b"[build-system\n", "invalid pyproject.toml: "),
        (b"[build-system]\nrequires = ['\xff']\n", "invalid pyproject.toml: "),
        (
            b"[build-system]\nrequires = 'setuptools'\n",
            "invalid pyproject.toml: build-system.requires is not a list of strings",
        ),
        (
            b"[build-system]\nrequires = [1]\n",
            "invalid pyproject.toml: build-system.requires is not a list of strings",
        ),
        (
            b"[build-system]\nbuild-backend = ['x']\n",
            "invalid pyproject.toml: build-system.build-backend is not a string",
        ),
        (
            b"[build-system]\nbackend-path = '.'\n",
            "invalid pyproject.toml: build-system.backend-path is not a list",
        ),
        (
            b"[build-system]\nbackend-path = [1]\n",
            "invalid pyproject.toml: build-system.backend-path is not a list",
        ),
    ],
)
def test_a_bad_build_system_table_fails_with_what_is_wrong(
    tmp_path: Path, pyproject: bytes, reason: str
) -> None:
    (tmp_path / "pyproject.toml").write_bytes(pyproject)
    with pytest.raises(BuildFailed) as raised:
        read_build_system(tmp_path)
    assert raised.value.message.startswith(reason), raised.value.message


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def test_a_zip_sdist_unpacks_to_its_one_folder(tmp_path: Path) -> None:
    sdist = _zip(tmp_path / "old-1.0.zip", {"old-1.0/setup.py": b"x", "old-1.0/a/b.txt": b"y"})
    source = unpack_sdist(sdist, tmp_path / "out" / "source")
    assert source == tmp_path / "out" / "source" / "old-1.0"
    assert (source / "a" / "b.txt").read_bytes() == b"y"


def test_a_tar_sdist_unpacks_to_its_one_folder(tmp_path: Path) -> None:
    sdist = build_sdist(tmp_path, "new", "1.0", files={"src/new.py": "x = 1\n"})
    source = unpack_sdist(sdist, tmp_path / "out")
    assert source == tmp_path / "out" / "new-1.0"
    assert (source / "src" / "new.py").read_text() == "x = 1\n"


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return path


def _lying_zip(path: Path, claimed: int) -> Path:
    """Write a zip whose central directory claims its one member inflates to ``claimed`` bytes."""
    _zip(path, {"liar-1.0/PKG-INFO": b"Name: liar\n"})
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", claimed)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda folder: _zip(folder / "a.zip", {"a-1.0/x": b"", "../../evil.txt": b"x"}),
            "sdist member '../../evil.txt' leaves its folder",
        ),
        (lambda folder: _tar(folder / "a.tar.gz", {"../evil.txt": b"x"}), "unreadable sdist: "),
        (
            lambda folder: _tar(folder / "a.tar.gz", {"a-1.0/x": b""}, {"a-1.0/l": "/etc/passwd"}),
            "unreadable sdist: ",
        ),
        (
            lambda folder: _tar(folder / "a.tar.gz", {"a-1.0/x": b"", "b-1.0/y": b""}),
            "sdist does not hold exactly one top-level folder",
        ),
        (
            lambda folder: _zip(folder / "a.zip", {"setup.py": b""}),
            "sdist does not hold exactly one top-level folder",
        ),
        (lambda folder: _lying_zip(folder / "a.zip", 513 * 1024**2), "sdist unpacks to more"),
        (
            lambda folder: build_sdist_bomb(folder, "bomb", "1.0", 513 * 1024**2),
            "sdist unpacks to more than 512 MB",
        ),
        (lambda folder: _write(folder / "a.zip", b"PK\x03\x04 not a zip"), "unreadable sdist: "),
        (lambda folder: _write(folder / "a.tar.gz", b"\x1f\x8b not gzip"), "unreadable sdist: "),
    ],
    ids=[
        "zip-traversal",
        "tar-traversal",
        "tar-link-out",
        "two-folders",
        "no-folder",
        "zip-claims-513-mb",
        "tar-inflates-to-513-mb",
        "corrupt-zip",
        "corrupt-tar",
    ],
)
def test_an_sdist_that_is_unsafe_or_not_one_folder_fails_and_writes_nothing_outside(
    tmp_path: Path, make: object, reason: str
) -> None:
    (tmp_path / "in").mkdir()
    sdist = make(tmp_path / "in")  # type: ignore[operator]
    destination = tmp_path / "work" / "deep" / "source"
    with pytest.raises(BuildFailed) as raised:
        unpack_sdist(sdist, destination)
    assert raised.value.message.startswith(reason), raised.value.message
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "work" / "evil.txt").exists()
    assert not (tmp_path / "work" / "deep" / "evil.txt").exists()
    assert not (destination / "a-1.0" / "l").exists()


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_an_sdist_of_exactly_512_mb_is_unpacked(tmp_path: Path) -> None:
    sdist = _lying_zip(tmp_path / "liar-1.0.zip", 512 * 1024**2)
    assert unpack_sdist(sdist, tmp_path / "out") == tmp_path / "out" / "liar-1.0"
