"""Rewritten wheels: METADATA patched field by field, RECORD matched, every other byte kept."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import struct
import zipfile
import zlib

import pytest

from metasrv.errors import InvalidArchive
from metasrv.http.wheels import patch_metadata_document, render_metadata_file, rewrite_wheel
from metasrv.model import CoreMetadata

DIST_INFO = "demo-1.0.dist-info"
PATCHED = CoreMetadata("2.1", ("alpha>=1", 'beta ; extra == "b"'), ">=3.9", ("b",))
ORIGINAL_METADATA = (
    "Metadata-Version: 2.1\n"
    "Name: demo\n"
    "Version: 1.0\n"
    "Summary: a demo: with a colon\n"
    "Requires-Python: >=3.6\n"
    "Requires-Dist: alpha<1\n"
    "Requires-Dist: pkg @ https://files.example/pkg-1.0.whl\n"
    "Requires-Dist: gamma\n"
    "  ; python_version < '3.8'\n"
    "Provides-Extra: old\n"
    "License: MIT\n"
    "  and a folded second line\n"
    "requires-dist: lowercase<2\n"
    "Classifier: Programming Language :: Python\n"
    "Dynamic: License\n"
    "\n"
    "First paragraph.\n"
    "\n"
    "Second paragraph, with a header-looking line:\n"
    "Requires-Dist: not-a-header\n"
)


def _digest(content: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()


def _record(entries: list[tuple[str, bytes]]) -> bytes:
    lines = [f"{path},sha256={_digest(content)},{len(content)}" for path, content in entries]
    return ("\n".join([*lines, f"{DIST_INFO}/RECORD,,"]) + "\n").encode()


def _entries(metadata: str = ORIGINAL_METADATA) -> list[tuple[str, bytes]]:
    return [
        ("demo/__init__.py", b"VALUE = 1\n" * 50),
        ("demo/caf\u00e9.txt", b"non-ASCII name\n"),
        # Stored, so the end-of-directory signature appears in the wheel before the real one.
        ("demo/signatures.bin", b"PK\x05\x06" * 8),
        (f"{DIST_INFO}/METADATA", metadata.encode()),
        (f"{DIST_INFO}/WHEEL", b"Wheel-Version: 1.0\nTag: py3-none-any\n"),
    ]


def build(
    entries: list[tuple[str, bytes]] | None = None, *, streamed: bool = False, extras: bool = False
) -> bytes:
    """Return a wheel; ``streamed`` adds data descriptors, ``extras`` extra fields, comments."""
    entries = entries if entries is not None else _entries()
    buffer = io.BytesIO()

    class Unseekable(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:  # type: ignore[override]
            return buffer.write(data)

    target: io.BytesIO | Unseekable = Unseekable() if streamed else buffer
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, content in [*entries, (f"{DIST_INFO}/RECORD", _record(entries))]:
            info = zipfile.ZipInfo(path, (2020, 1, 2, 3, 4, 6))
            info.compress_type = (
                zipfile.ZIP_STORED if path.endswith(".bin") else zipfile.ZIP_DEFLATED
            )
            if extras:
                info.extra = struct.pack("<HH4s", 0xCAFE, 4, b"xtra")
                info.comment = f"comment of {path}".encode()
                info.extract_version = 45  # as some tools write, though nothing needs it
            archive.writestr(info, content)
        if extras:
            archive.comment = b"archive comment"
    return _flag_utf8(buffer.getvalue()) if extras else buffer.getvalue()


def _flag_utf8(wheel: bytes) -> bytes:
    """Set the UTF-8 name flag on every entry, as some tools do (zipfile only for non-ASCII)."""
    patched = bytearray(wheel)
    end = wheel.rindex(b"PK\x05\x06")
    count, _, cd_offset = struct.unpack_from("<H2L", wheel, end + 10)
    position = cd_offset
    for _ in range(count):
        central = struct.unpack_from("<4s6H3L5H2L", wheel, position)
        struct.pack_into("<H", patched, position + 8, central[3] | 0x800)
        local_flags = struct.unpack_from("<H", wheel, central[16] + 6)[0]
        struct.pack_into("<H", patched, central[16] + 6, local_flags | 0x800)
        position += 46 + central[10] + central[11] + central[12]
    return bytes(patched)


def read_metadata(wheel: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        return archive.read(f"{DIST_INFO}/METADATA").decode()


def test_only_the_resolver_fields_change_and_the_description_is_kept_whole() -> None:
    patched = patch_metadata_document(ORIGINAL_METADATA.encode(), PATCHED).decode()
    head, body = patched.split("\n\n", 1)
    assert head.split("\n") == [
        "Metadata-Version: 2.1",
        "Name: demo",
        "Version: 1.0",
        "Summary: a demo: with a colon",
        "License: MIT",
        "  and a folded second line",
        "Classifier: Programming Language :: Python",
        "Dynamic: License",
        "Requires-Python: >=3.9",
        "Provides-Extra: b",
        "Requires-Dist: alpha>=1",
        'Requires-Dist: beta ; extra == "b"',
    ]
    assert body == ORIGINAL_METADATA.split("\n\n", 1)[1]


def test_a_folded_header_after_a_dropped_one_is_kept() -> None:
    original = b"Name: demo\nRequires-Dist: a\n\tfolded\nDescription: kept\n\tfolded too\n\nbody"
    patched = patch_metadata_document(original, CoreMetadata("2.1"))
    assert patched == b"Name: demo\nDescription: kept\n\tfolded too\n\nbody"


def test_a_metadata_file_holds_exactly_the_fields_resolvers_compare() -> None:
    metadata = CoreMetadata("2.2", ("a>=1", "b"), ">=3.8", ("x", "y"), ("Requires-Dist",))
    assert render_metadata_file("Demo", "1.0", metadata) == (
        b"Metadata-Version: 2.2\nName: Demo\nVersion: 1.0\nDynamic: Requires-Dist\n"
        b"Requires-Python: >=3.8\nProvides-Extra: x\nProvides-Extra: y\n"
        b"Requires-Dist: a>=1\nRequires-Dist: b\n\n"
    )
    assert render_metadata_file("Demo", "1.0", CoreMetadata("2.1")) == (
        b"Metadata-Version: 2.1\nName: Demo\nVersion: 1.0\n\n"
    )


@pytest.mark.parametrize(
    ("streamed", "extras"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_a_rewritten_wheel_keeps_every_other_entry_and_its_record_matches(
    streamed: bool, extras: bool
) -> None:
    original = build(streamed=streamed, extras=extras)
    rewritten, new_metadata = rewrite_wheel(original, PATCHED)
    with (
        zipfile.ZipFile(io.BytesIO(rewritten)) as new,
        zipfile.ZipFile(io.BytesIO(original)) as old,
    ):
        assert new.testzip() is None
        assert new.namelist() == old.namelist()
        assert new.read(f"{DIST_INFO}/METADATA") == new_metadata
        assert new_metadata == patch_metadata_document(old.read(f"{DIST_INFO}/METADATA"), PATCHED)
        old_record = old.read(f"{DIST_INFO}/RECORD").decode().splitlines()
        new_record = new.read(f"{DIST_INFO}/RECORD").decode()
        metadata_line = f"{DIST_INFO}/METADATA,sha256={_digest(new_metadata)},{len(new_metadata)}"
        assert (
            new_record
            == "\n".join(
                metadata_line if line.startswith(f"{DIST_INFO}/METADATA,") else line
                for line in old_record
            )
            + "\n"
        )
        for old_info in old.infolist():
            new_info = new.getinfo(old_info.filename)
            assert new_info.date_time == old_info.date_time
            assert new_info.flag_bits & 0x800 == old_info.flag_bits & 0x800
            assert new_info.comment == old_info.comment
            if old_info.filename.endswith(("METADATA", "RECORD")):
                assert new_info.compress_type == zipfile.ZIP_STORED
                assert new_info.extra == b""
                continue
            assert new.read(old_info.filename) == old.read(old_info.filename)
            assert (new_info.compress_type, new_info.CRC, new_info.extra) == (
                old_info.compress_type,
                old_info.CRC,
                old_info.extra,
            )
    assert rewrite_wheel(original, PATCHED) == (rewritten, new_metadata)


def test_a_record_line_that_only_starts_like_metadata_is_kept() -> None:
    entries = [*_entries(), (f"{DIST_INFO}/METADATA.orig", b"kept\n")]
    rewritten, _ = rewrite_wheel(build(entries), PATCHED)
    with zipfile.ZipFile(io.BytesIO(rewritten)) as archive:
        record = archive.read(f"{DIST_INFO}/RECORD").decode()
    kept = _digest(b"kept\n")
    assert f"{DIST_INFO}/METADATA.orig,sha256={kept},5\n" in record
    assert f"{DIST_INFO}/RECORD,,\n" in record


def _without(name: str) -> list[tuple[str, bytes]]:
    return [entry for entry in _entries() if not entry[0].endswith(name)]


def _corrupt(wheel: bytes, old: bytes, new: bytes, occurrence: int = 0) -> bytes:
    position = -1
    for _ in range(occurrence + 1):
        position = wheel.index(old, position + 1)
    return wheel[:position] + new + wheel[position + len(old) :]


def _central_size_off_by_one(wheel: bytes) -> bytes:
    end = wheel.rindex(b"PK\x05\x06")
    size = struct.unpack_from("<L", wheel, end + 12)[0]
    return wheel[: end + 12] + struct.pack("<L", size + 1) + wheel[end + 16 :]


def _zip64(wheel: bytes) -> bytes:
    end = wheel.rindex(b"PK\x05\x06")
    return wheel[: end + 16] + struct.pack("<L", 0xFFFFFFFF) + wheel[end + 20 :]


def _nested_metadata() -> list[tuple[str, bytes]]:
    return [*_entries(), (f"demo/{DIST_INFO}/METADATA", b"Name: vendored\n\n")]


@pytest.mark.parametrize(
    ("wheel", "message"),
    [
        (build(_without("METADATA")), "wheel has 0 top-level *.dist-info/METADATA"),
        (
            build([*_entries(), ("other-1.0.dist-info/METADATA", b"")]),
            "wheel has 2 top-level *.dist-info/METADATA",
        ),
        (b"not a zip at all", "wheel has no end of central directory"),
        (_zip64(build()), "zip64 wheels are not rewritten"),
        (_corrupt(build(), b"PK\x01\x02", b"PK\x01\x09"), "corrupt central directory"),
        (
            _corrupt(build(), b"PK\x03\x04", b"PK\x03\x09"),
            "corrupt local header for demo/__init__.py",
        ),
        (_central_size_off_by_one(build()), "central directory size does not add up"),
    ],
    ids=["no-metadata", "two-metadata", "not-zip", "zip64", "central", "local", "size"],
)
def test_a_wheel_that_cannot_be_rewritten_is_refused_by_name(wheel: bytes, message: str) -> None:
    with pytest.raises(InvalidArchive, match=f"^{re.escape(message)}$"):
        rewrite_wheel(wheel, PATCHED)


def test_a_vendored_dist_info_below_the_top_is_not_the_wheels_own() -> None:
    rewritten, new_metadata = rewrite_wheel(build(_nested_metadata()), PATCHED)
    assert read_metadata(rewritten).encode() == new_metadata
    with zipfile.ZipFile(io.BytesIO(rewritten)) as archive:
        assert archive.read(f"demo/{DIST_INFO}/METADATA") == b"Name: vendored\n\n"


def check_structure(wheel: bytes) -> list[dict[str, int]]:
    """Check what a strict unzip checks that zipfile does not; return each entry's local header.

    The end record names one disk and no comment and points at the central directory, and every
    local header agrees with its central header on version, flags, method, time, CRC and sizes.
    """
    end = wheel.rindex(b"PK\x05\x06")
    sig, disk, cd_disk, on_disk, count, cd_size, cd_offset, comment = struct.unpack_from(
        "<4s4H2LH", wheel, end
    )
    assert (sig, disk, cd_disk, on_disk) == (b"PK\x05\x06", 0, 0, count)
    assert end + 22 + comment == len(wheel)
    assert cd_offset + cd_size == end
    headers = []
    position = cd_offset
    entry_start = 0  # entries follow one another with no gap and no overlap
    for _ in range(count):
        central = struct.unpack_from("<4s6H3L5H2L", wheel, position)
        local = struct.unpack_from("<4s5H3L2H", wheel, central[16])
        assert local[0] == b"PK\x03\x04"
        assert central[16] == entry_start
        descriptor = bool(central[3] & 0x08)
        # version needed, flags, method, time, date; with a data descriptor the rest may be 0.
        assert local[1:6] == central[2:7]
        entry_start = central[16] + 30 + local[9] + local[10] + central[8]
        if descriptor:
            # APPNOTE 4.3.9: crc and sizes after the data, with an optional signature first.
            if wheel[entry_start : entry_start + 4] == b"PK\x07\x08":
                entry_start += 4
            assert struct.unpack_from("<3L", wheel, entry_start) == central[7:10]
            entry_start += 12
        else:
            assert local[6:9] == central[7:10]
        headers.append({"flags": local[2], "method": local[3], "extra_length": local[10]})
        position += 46 + central[10] + central[11] + central[12]
    assert entry_start == cd_offset
    return headers


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("extras", [False, True])
def test_a_strict_unzip_finds_every_header_consistent(streamed: bool, extras: bool) -> None:
    original = build(streamed=streamed, extras=extras)
    check_structure(original)
    rewritten, _ = rewrite_wheel(original, PATCHED)
    assert rewritten.endswith(b"\x00\x00")  # the archive comment is not kept: no length
    old_headers = check_structure(original)
    for name, old, new in zip(
        zipfile.ZipFile(io.BytesIO(original)).namelist(),
        old_headers,
        check_structure(rewritten),
        strict=True,
    ):
        if name.endswith(("METADATA", "RECORD")):
            assert new == {"flags": old["flags"] & 0x800, "method": 0, "extra_length": 0}
        else:
            assert new == old


def hand_made_wheel(entries: list[tuple[str, bytes]], *, descriptor_signature: bool) -> bytes:
    """Return a stored zip whose entries end in data descriptors, with or without a signature.

    zipfile always writes the optional signature; other writers do not (APPNOTE 4.3.9.3).
    """
    output, central = bytearray(), bytearray()
    entries = [*entries, (f"{DIST_INFO}/RECORD", _record(entries))]
    for path, content in entries:
        name, crc, offset = path.encode(), zlib.crc32(content), len(output)
        flags = 0x08 if path.isascii() else 0x808
        output += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, flags, 0, 0, 0x21, 0, 0, 0, len(name), 0
        )
        output += name + content
        output += (b"PK\x07\x08" if descriptor_signature else b"") + struct.pack(
            "<3L", crc, len(content), len(content)
        )
        central += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            20,
            20,
            flags,
            0,
            0,
            0x21,
            crc,
            len(content),
            len(content),
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += name
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(output), 0
    )
    return bytes(output + central + end)


@pytest.mark.parametrize("descriptor_signature", [True, False])
def test_data_descriptors_with_or_without_their_signature_are_kept(
    descriptor_signature: bool,
) -> None:
    original = hand_made_wheel(_entries(), descriptor_signature=descriptor_signature)
    rewritten, new_metadata = rewrite_wheel(original, PATCHED)
    check_structure(rewritten)
    with zipfile.ZipFile(io.BytesIO(rewritten)) as archive:
        assert archive.testzip() is None
        assert archive.read(f"{DIST_INFO}/METADATA") == new_metadata
        for path, content in _entries():
            if not path.endswith("METADATA"):
                assert archive.read(path) == content


def test_an_empty_zip_has_no_metadata_to_rewrite() -> None:
    empty = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(InvalidArchive, match=r"^wheel has 0 top-level \*\.dist-info/METADATA$"):
        rewrite_wheel(empty, PATCHED)


def test_a_zip64_entry_count_is_refused() -> None:
    wheel = build()
    end = wheel.rindex(b"PK\x05\x06")
    marked = wheel[: end + 10] + struct.pack("<H", 0xFFFF) + wheel[end + 12 :]
    with pytest.raises(InvalidArchive, match=r"^zip64 wheels are not rewritten$"):
        rewrite_wheel(marked, PATCHED)
