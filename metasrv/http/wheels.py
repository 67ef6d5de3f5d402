"""Wheels with METADATA and RECORD rewritten; every other entry copied raw; deterministic."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

from metasrv.errors import InvalidArchive
from metasrv.model import CoreMetadata

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_CENTRAL_HEADER = struct.Struct("<4s6H3L5H2L")
_END_RECORD = struct.Struct("<4s4H2LH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_CENTRAL_SIGNATURE = b"PK\x01\x02"
_END_SIGNATURE = b"PK\x05\x06"
# Fields the rewrite owns; every other header line of METADATA is kept as it was.
REWRITTEN_FIELDS = ("requires-dist", "requires-python", "provides-extra")


def render_metadata_file(name: str, version: str, metadata: CoreMetadata) -> bytes:
    """Return a METADATA document holding the fields resolvers and installers compare."""
    lines = [
        f"Metadata-Version: {metadata.metadata_version}",
        f"Name: {name}",
        f"Version: {version}",
    ]
    lines += [f"Dynamic: {field}" for field in metadata.dynamic]
    lines += _resolver_fields(metadata)
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _resolver_fields(metadata: CoreMetadata) -> list[str]:
    lines = []
    if metadata.requires_python is not None:
        lines.append(f"Requires-Python: {metadata.requires_python}")
    lines += [f"Provides-Extra: {extra}" for extra in metadata.provides_extra]
    lines += [f"Requires-Dist: {requirement}" for requirement in metadata.requires_dist]
    return lines


def patch_metadata_document(original: bytes, metadata: CoreMetadata) -> bytes:
    """Return ``original`` METADATA with its resolver fields replaced, everything else kept."""
    text = original.decode("utf-8")
    head, _, body = text.partition("\n\n")
    kept: list[str] = []
    dropping = False
    for line in head.split("\n"):
        if line[:1] in (" ", "\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(":", 1)[0].strip().lower() in REWRITTEN_FIELDS
        if not dropping:
            kept.append(line)
    return ("\n".join(kept + _resolver_fields(metadata)) + "\n\n" + body).encode("utf-8")


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    local_header_and_data: bytes
    central_fields: tuple[int, ...]
    extra: bytes
    comment: bytes


def rewrite_wheel(wheel: bytes, metadata: CoreMetadata) -> tuple[bytes, bytes]:
    """Return the wheel with METADATA patched and RECORD updated to match, and that METADATA."""
    entries = _read_entries(wheel)
    metadata_name = _single(entries, ".dist-info/METADATA")
    record_name = _single(entries, ".dist-info/RECORD")
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        new_metadata = patch_metadata_document(archive.read(metadata_name), metadata)
        record = archive.read(record_name).decode("utf-8")
    digest = base64.urlsafe_b64encode(hashlib.sha256(new_metadata).digest()).rstrip(b"=").decode()
    record_lines = [
        f"{metadata_name},sha256={digest},{len(new_metadata)}"
        if line.split(",", 1)[0] == metadata_name
        else line
        for line in record.splitlines()
    ]
    new_record = ("\n".join(record_lines) + "\n").encode("utf-8")
    return _write(entries, {metadata_name: new_metadata, record_name: new_record}), new_metadata


def _single(entries: list[_Entry], suffix: str) -> str:
    names = [e.name for e in entries if e.name.endswith(suffix) and e.name.count("/") == 1]
    if len(names) != 1:
        raise InvalidArchive(f"wheel has {len(names)} top-level *{suffix}")
    return names[0]


def _read_entries(wheel: bytes) -> list[_Entry]:
    end = wheel.rfind(_END_SIGNATURE)
    if end < 0:
        raise InvalidArchive("wheel has no end of central directory")
    _sig, _disk, _cd_disk, _n_disk, count, cd_size, cd_offset, _comment = _END_RECORD.unpack_from(
        wheel, end
    )
    if cd_offset == 0xFFFFFFFF or count == 0xFFFF:
        raise InvalidArchive("zip64 wheels are not rewritten")
    entries = []
    position = cd_offset
    for _ in range(count):
        fields = _CENTRAL_HEADER.unpack_from(wheel, position)
        if fields[0] != _CENTRAL_SIGNATURE:
            raise InvalidArchive("corrupt central directory")
        name_length, extra_length, comment_length = fields[10], fields[11], fields[12]
        local_offset = fields[16]
        start = position + _CENTRAL_HEADER.size
        name = wheel[start : start + name_length].decode("utf-8")
        extra = wheel[start + name_length : start + name_length + extra_length]
        comment = wheel[
            start + name_length + extra_length : start + name_length + extra_length + comment_length
        ]
        local = _LOCAL_HEADER.unpack_from(wheel, local_offset)
        if local[0] != _LOCAL_SIGNATURE:
            raise InvalidArchive(f"corrupt local header for {name}")
        data_end = local_offset + _LOCAL_HEADER.size + local[9] + local[10] + fields[8]
        if local[2] & 0x08:
            # A data descriptor follows the data: crc and sizes, with or without a signature.
            data_end += 16 if wheel[data_end : data_end + 4] == b"PK\x07\x08" else 12
        entries.append(_Entry(name, wheel[local_offset:data_end], fields, extra, comment))
        position = start + name_length + extra_length + comment_length
    if position != cd_offset + cd_size:
        raise InvalidArchive("central directory size does not add up")
    return entries


def _write(entries: list[_Entry], replacements: dict[str, bytes]) -> bytes:
    """Write entries in their order: replaced ones stored uncompressed, the rest byte for byte."""
    output = bytearray()
    central = bytearray()
    for entry in entries:
        offset = len(output)
        fields = list(entry.central_fields)
        name_bytes = entry.name.encode("utf-8")
        if entry.name in replacements:
            content = replacements[entry.name]
            crc = zlib.crc32(content)
            # version, flags (UTF-8 kept), method 0 = stored, the original time and date.
            flags = fields[3] & 0x0800
            output += _LOCAL_HEADER.pack(
                _LOCAL_SIGNATURE,
                20,
                flags,
                0,
                fields[5],
                fields[6],
                crc,
                len(content),
                len(content),
                len(name_bytes),
                0,
            )
            output += name_bytes + content
            fields[2], fields[3], fields[4] = 20, flags, 0
            fields[7], fields[8], fields[9] = crc, len(content), len(content)
            extra = b""
        else:
            output += entry.local_header_and_data
            extra = entry.extra
        fields[11], fields[16] = len(extra), offset
        central += _CENTRAL_HEADER.pack(*fields) + name_bytes + extra + entry.comment
    cd_offset = len(output)
    output += central
    output += _END_RECORD.pack(
        _END_SIGNATURE, 0, 0, len(entries), len(entries), len(central), cd_offset, 0
    )
    return bytes(output)
