"""Canonical, deterministic TOML in and out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import tomli
import tomli_w

from metasrv.errors import InvalidData

_SCALARS = (str, int, float, bool)
# Strings and keys that TOML writes verbatim (printable ASCII but the quote and the backslash);
# anything else goes through tomli_w's escaping.
_PLAIN_STRING = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*").fullmatch
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+").fullmatch
# Keys repeat in every file entry of a project (numpy's file writes 2,000 of them): each once.
_written_keys: dict[str, str] = {}


def loads(text: bytes | str, *, where: str) -> dict[str, Any]:
    """Parse TOML, naming ``where`` in the error when it is malformed."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return tomli.loads(text)
    except UnicodeDecodeError as exc:
        raise InvalidData(f"{where}: not UTF-8 ({exc.reason})") from None
    except tomli.TOMLDecodeError as exc:
        raise InvalidData(f"{where}:{exc.lineno}: invalid TOML: {exc.msg}") from None


def dumps(document: Mapping[str, Any]) -> bytes:
    """Render TOML deterministically in the caller's key order.

    Values come first, then tables, then arrays of tables; a table of scalars inside an array of
    tables is written inline (``hashes = { sha256 = "..." }``) so one file entry stays compact.
    """
    lines: list[str] = []
    _table_lines(lines, document, header=None, in_array=False)
    return "".join(lines).encode("utf-8")


def _table_lines(
    lines: list[str], table: Mapping[str, Any], header: str | None, in_array: bool
) -> None:
    # One pass, appending to one list: numpy's file is 4,400 tables of ~8 values each, and
    # generators and per-value type checks through Mapping's ABC were most of writing it.
    values: list[str] = []
    tables, arrays = [], []
    for key, value in table.items():
        if type(value) is str and _PLAIN_STRING(value):
            values.append(f'{_written_keys.get(key) or _key(key)} = "{value}"\n')
        elif isinstance(value, _SCALARS):
            values.append(f"{_key(key)} = {_literal(value)}\n")
        elif not _is_table(value):
            if isinstance(value, list) and value and all(_is_table(v) for v in value):
                arrays.append((key, value))
            else:
                values.append(_value_line(key, value))
        elif in_array and value and all(isinstance(v, _SCALARS) for v in value.values()):
            values.append(_inline_table_line(key, value))
        else:
            tables.append((key, value))
    if header is not None and (in_array or values or not (tables or arrays)):
        lines.append(f"\n[[{header}]]\n" if in_array else f"\n[{header}]\n")
    lines += values
    for key, subtable in tables:
        _table_lines(lines, subtable, _join(header, key), in_array=False)
    for key, items in arrays:
        item_header = _join(header, key)
        for item in items:
            _table_lines(lines, item, item_header, in_array=True)


def _is_table(value: Any) -> bool:
    # dict first: the Mapping check is slow and a project file has ~20,000 values.
    return isinstance(value, (dict, Mapping))


def _inline_table_line(key: str, table: Mapping[str, Any]) -> str:
    # A file's hashes: one pair, its digest a plain string.
    pairs = ", ".join([f"{_key(k)} = {_literal(v)}" for k, v in table.items()])
    return f"{_key(key)} = {{ {pairs} }}\n"


def _value_line(key: str, value: Any) -> str:
    if _is_table(value):
        return _inline_table_line(key, value)
    if isinstance(value, list):
        if not value:
            return f"{_key(key)} = []\n"
        items = "".join(f"    {_literal(item)},\n" for item in value)
        return f"{_key(key)} = [\n{items}]\n"
    return f"{_key(key)} = {_literal(value)}\n"


def _literal(value: Any) -> str:
    if type(value) is int:  # a size: not bool, which is an int too
        return str(value)
    if isinstance(value, str) and _PLAIN_STRING(value):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return tomli_w.dumps({"x": value}).split(" = ", 1)[1].rstrip("\n")


def _key(key: str) -> str:
    written = _written_keys.get(key)
    if written is None:
        written = key if _BARE_KEY(key) else _literal(key)
        if len(_written_keys) < 4096:  # field names and versions, not without bound
            _written_keys[key] = written
    return written


def _join(header: str | None, key: str) -> str:
    return _key(key) if header is None else f"{header}.{_key(key)}"
