"""Typed access to decoded TOML tables, naming the bad key and where it was; no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metasrv.errors import InvalidData

FORMAT_VERSION = 1
"""The ``format`` every understanding and marker file and ``metasrv.toml`` declares."""
DATA_FORMAT_VERSION = 2
"""The ``format`` a project file under data/ is written in; format 1 files are still read."""


def fits_64_bits(value: int) -> bool:
    """Return whether a TOML integer fits the signed 64 bits JSON answers carry it in."""
    # TOML's integers are unbounded; ours are sizes, serials and seconds.
    return -(2**63) <= value < 2**63


class TableReader:
    """Typed access to one decoded TOML table, tracking which keys were read."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        self._table = table
        self._where = where
        self._seen: set[str] = set()

    def _get(self, key: str, kind: type | tuple[type, ...], label: str, required: bool) -> Any:
        self._seen.add(key)
        value = self._table.get(key)
        if value is None:
            if required:
                raise InvalidData(f"{self._where}: missing key {key!r}")
            return None
        # bool is an int subclass; a size of `true` is not a size.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidData(f"{self._where}: {key!r} must be {label}")
        if isinstance(value, int) and not fits_64_bits(value):
            raise InvalidData(f"{self._where}: {key!r} is out of the 64-bit range")
        return value

    def string(self, key: str) -> str:
        """Return a required string."""
        return str(self._get(key, str, "a string", required=True))

    def optional_string(self, key: str) -> str | None:
        """Return a string, or None when absent."""
        value = self._get(key, str, "a string", required=False)
        return None if value is None else str(value)

    def integer(self, key: str) -> int:
        """Return a required integer."""
        return int(self._get(key, int, "an integer", required=True))

    def optional_integer(self, key: str) -> int | None:
        """Return an integer, or None when absent."""
        value = self._get(key, int, "an integer", required=False)
        return None if value is None else int(value)

    def strings(self, key: str) -> tuple[str, ...]:
        """Return an array of strings, empty when absent."""
        return self.optional_strings(key) or ()

    def optional_strings(self, key: str) -> tuple[str, ...] | None:
        """Return an array of strings, or None when absent (so that [] can mean "none")."""
        values = self._get(key, list, "an array of strings", required=False)
        if values is None:
            return None
        if not all(isinstance(value, str) for value in values):
            raise InvalidData(f"{self._where}: {key!r} must be an array of strings")
        return tuple(values)

    def table(self, key: str) -> Mapping[str, Any]:
        """Return a required table."""
        return dict(self._get(key, dict, "a table", required=True))

    def optional_table(self, key: str) -> Mapping[str, Any] | None:
        """Return a table, or None when absent."""
        value = self._get(key, dict, "a table", required=False)
        return None if value is None else dict(value)

    def tables(self, key: str) -> list[Mapping[str, Any]]:
        """Return an array of tables, empty when absent."""
        values = self._get(key, list, "an array of tables", required=False) or []
        if not all(isinstance(value, dict) for value in values):
            raise InvalidData(f"{self._where}: {key!r} must be an array of tables")
        return list(values)

    def string_table(self, key: str) -> dict[str, str]:
        """Return a required table whose values are strings."""
        table = self._get(key, dict, "a table of strings", required=True)
        if not all(isinstance(value, str) for value in table.values()):
            raise InvalidData(f"{self._where}: {key!r} must be a table of strings")
        return dict(table)

    def require_format(self, accepted: tuple[int, ...] = (FORMAT_VERSION,)) -> int:
        """Return the document's format version; raise InvalidData unless it is ``accepted``."""
        version = self.integer("format")
        if version not in accepted:
            raise InvalidData(f"{self._where}: unsupported format {self._table.get('format')!r}")
        return version

    def value(self, key: str) -> Any:
        """Return a key's raw value (None when absent) for the caller to validate."""
        self._seen.add(key)
        return self._table.get(key)

    def boolean(self, key: str, default: bool) -> bool:
        """Return a boolean, or ``default`` when absent."""
        value = self._get(key, bool, "a boolean", required=False)
        return default if value is None else bool(value)

    def yanked(self, key: str) -> bool | str:
        """Return a PEP 592 yank: False when absent, True, or a reason."""
        value = self._get(key, (bool, str), "a boolean or a reason string", required=False)
        return False if value is None else value

    def reject_unknown(self) -> None:
        """Raise InvalidData naming the first key no accessor read."""
        unknown = sorted(set(self._table) - self._seen)
        if unknown:
            raise InvalidData(f"{self._where}: unknown key {unknown[0]!r}")
