"""Build real, installable wheels and sdists for tests."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.utils import canonicalize_name

# A fixed timestamp keeps archives byte-identical between runs.
EPOCH = (2020, 1, 1, 0, 0, 0)


def metadata_text(
    name: str,
    version: str,
    *,
    requires_dist: Iterable[str] = (),
    requires_python: str | None = None,
    provides_extra: Iterable[str] = (),
    metadata_version: str = "2.1",
    dynamic: Iterable[str] = (),
) -> str:
    """Return a METADATA / PKG-INFO document."""
    lines = [f"Metadata-Version: {metadata_version}", f"Name: {name}", f"Version: {version}"]
    lines += [f"Dynamic: {field}" for field in dynamic]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Provides-Extra: {extra}" for extra in provides_extra]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires_dist]
    return "\n".join(lines) + "\n\n"


def _record_line(path: str, content: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(content)}"


def build_wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    requires_dist: Iterable[str] = (),
    requires_python: str | None = None,
    provides_extra: Iterable[str] = (),
    padding: int = 0,
    metadata: str | bytes | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write an installable pure-Python wheel and return its path.

    ``padding`` adds a file of that many incompressible bytes before the dist-info, so that
    reading METADATA by ranges can be told apart from downloading the wheel.
    """
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    package = canonicalize_name(name).replace("-", "_")
    dist_info = f"{stem}.dist-info"
    metadata = metadata or metadata_text(
        name,
        version,
        requires_dist=requires_dist,
        requires_python=requires_python,
        provides_extra=provides_extra,
    )
    sources = {f"{package}/__init__.py": f'__version__ = "{version}"\n', **(files or {})}
    entries = [(path, text.encode()) for path, text in sources.items()]
    if padding:
        entries.append((f"{package}/padding.bin", hashlib.shake_256(stem.encode()).digest(padding)))
    entries += [
        (f"{dist_info}/METADATA", metadata if isinstance(metadata, bytes) else metadata.encode()),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: metasrv-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        ),
    ]
    record = "\n".join(_record_line(path, content) for path, content in entries)
    entries.append((f"{dist_info}/RECORD", f"{record}\n{dist_info}/RECORD,,\n".encode()))
    path = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entry_path, content in entries:
            info = zipfile.ZipInfo(entry_path, EPOCH)
            info.compress_type = (
                zipfile.ZIP_STORED if entry_path.endswith(".bin") else zipfile.ZIP_DEFLATED
            )
            archive.writestr(info, content)
    return path


def build_sdist(
    folder: Path,
    name: str,
    version: str,
    *,
    requires_dist: Iterable[str] = (),
    metadata_version: str = "2.2",
    dynamic: Iterable[str] = (),
    pyproject: str = "[build-system]\nrequires = []\n",
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write an sdist (.tar.gz) whose PKG-INFO states the given metadata, with ``files``."""
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    pkg_info = metadata_text(
        name,
        version,
        requires_dist=requires_dist,
        metadata_version=metadata_version,
        dynamic=dynamic,
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        members = [(f"{stem}/PKG-INFO", pkg_info), (f"{stem}/pyproject.toml", pyproject.encode())]
        members += [(f"{stem}/{path}", text.encode()) for path, text in (files or {}).items()]
        for member_path, content in members:
            info = tarfile.TarInfo(member_path)
            info.size, info.mtime = len(content), 1577836800
            archive.addfile(info, io.BytesIO(content))
    path = folder / f"{stem}.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


def build_sdist_bomb(folder: Path, name: str, version: str, zeros: int) -> Path:
    """Write a small .tar.gz sdist whose first member inflates to ``zeros`` zero bytes.

    One gzip member made of byte-aligned deflate segments, one zero block compressed once and
    repeated, so that it costs almost nothing to make.
    """
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    block = bytes(1024 * 1024)
    assert zeros % len(block) == 0
    padding = tarfile.TarInfo(f"{stem}/aaa-padding.bin")
    padding.size, padding.mtime = zeros, 1577836800
    pkg_info = metadata_text(name, version, metadata_version="2.2").encode()
    tail = io.BytesIO()
    with tarfile.open(fileobj=tail, mode="w") as archive:
        info = tarfile.TarInfo(f"{stem}/PKG-INFO")
        info.size, info.mtime = len(pkg_info), 1577836800
        archive.addfile(info, io.BytesIO(pkg_info))

    def deflate(data: bytes, mode: int) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        return compressor.compress(data) + compressor.flush(mode)

    header = padding.tobuf()
    crc = zlib.crc32(header)
    for _ in range(zeros // len(block)):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(tail.getvalue(), crc)
    size = len(header) + zeros + len(tail.getvalue())
    path = folder / f"{stem}.tar.gz"
    path.write_bytes(
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # RFC 1952 header, no name, no mtime
        + deflate(header, zlib.Z_FULL_FLUSH)
        + deflate(block, zlib.Z_FULL_FLUSH) * (zeros // len(block))
        + deflate(tail.getvalue(), zlib.Z_FINISH)
        + struct.pack("<II", crc, size & 0xFFFFFFFF)
    )
    return path
