"""``[builds]`` of ``metasrv.toml``: whether sync builds sdists' metadata, from where, how far."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from metasrv.errors import InvalidData
from metasrv.tables import TableReader

LIMIT_KEYS = ("wall-seconds", "cpu-seconds", "memory-mb", "processes", "output-mb")


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """How sdists whose metadata is dynamic are built (README: "Sdist metadata, built once")."""

    enabled: bool = False
    index_url: str | None = None
    environments: str | None = None
    wall_seconds: int = 120
    cpu_seconds: int = 120
    memory_mb: int = 4096
    processes: int = 64
    output_mb: int = 256

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], where: str) -> BuildSettings:
        """Build from the ``[builds]`` table."""
        reader = TableReader(table, where)
        limits: dict[str, Any] = {}
        for key in LIMIT_KEYS:
            value = reader.optional_integer(key)
            if value is not None and value < 1:
                raise InvalidData(f"{where}: {key} must be at least 1")
            if value is not None:
                limits[key.replace("-", "_")] = value
        settings = cls(
            enabled=reader.boolean("enabled", False),
            index_url=reader.optional_string("index-url"),
            environments=reader.optional_string("environments"),
            **limits,
        )
        reader.reject_unknown()
        return settings

    def to_toml(self) -> dict[str, Any]:
        """Return the ``[builds]`` table, omitting what is the default."""
        return {
            field.name.replace("_", "-"): getattr(self, field.name)
            for field in fields(self)
            if getattr(self, field.name) != field.default
        }
