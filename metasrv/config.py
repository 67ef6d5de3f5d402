"""A meta repository's ``metasrv.toml``: its source repository and how it mirrors it; no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from metasrv.buildsettings import BuildSettings
from metasrv.errors import InvalidData, InvalidInput
from metasrv.names import validate_label
from metasrv.tables import FORMAT_VERSION, TableReader

DEFAULT_REFRESH_SECONDS = 600


@dataclass(frozen=True, slots=True)
class PullThroughConfig:
    """``[pull-through]``: fetch unknown projects on first request, and where to commit them."""

    enabled: bool = True
    refresh: int = DEFAULT_REFRESH_SECONDS  # seconds before a read re-checks the source
    branch: str | None = None  # None: the branch HEAD names

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], where: str) -> PullThroughConfig:
        """Build from a ``[pull-through]`` table."""
        reader = TableReader(table, where)
        refresh = reader.optional_integer("refresh")
        if refresh is not None and refresh < 0:
            raise InvalidData(f"{where}: refresh must be 0 or more seconds")
        config = cls(
            enabled=reader.boolean("enabled", True),
            refresh=DEFAULT_REFRESH_SECONDS if refresh is None else refresh,
            branch=_branch_name(reader.optional_string("branch"), where),
        )
        reader.reject_unknown()
        return config

    def to_toml(self) -> dict[str, Any]:
        """Return the table, omitting defaults."""
        table: dict[str, Any] = {}
        if not self.enabled:
            table["enabled"] = False
        if self.refresh != DEFAULT_REFRESH_SECONDS:
            table["refresh"] = self.refresh
        if self.branch is not None:
            table["branch"] = self.branch
        return table


@dataclass(frozen=True, slots=True)
class MetaConfig:
    """A meta repository's ``metasrv.toml``: which source repository it mirrors, and how."""

    source_url: str | None = None
    pull_through: PullThroughConfig = field(default_factory=PullThroughConfig)
    follow: int | None = None  # seconds between the whole-index syncs a pull-through server runs
    builds: BuildSettings = field(default_factory=BuildSettings)
    # Prefixes an understanding's repository must start with; None: https only (see registry).
    understandings_allow: tuple[str, ...] | None = None

    @classmethod
    def from_toml(cls, document: Mapping[str, Any], where: str) -> MetaConfig:
        """Build from a parsed ``metasrv.toml``."""
        reader = TableReader(document, where)
        reader.require_format()
        source = TableReader(reader.optional_table("source") or {}, f"{where}: source")
        pull_through = PullThroughConfig.from_toml(
            reader.optional_table("pull-through") or {}, f"{where}: pull-through"
        )
        builds = BuildSettings.from_toml(reader.optional_table("builds") or {}, f"{where}: builds")
        understandings = TableReader(
            reader.optional_table("understandings") or {}, f"{where}: understandings"
        )
        allow = understandings.optional_strings("allow")  # [] allows only "." (itself)
        follow = reader.optional_integer("follow")
        if follow is not None and follow < 1:
            raise InvalidData(f"{where}: follow must be at least 1 second")
        config = cls(
            source_url=source.optional_string("url"),
            pull_through=pull_through,
            builds=builds,
            understandings_allow=allow,
            follow=follow,
        )
        understandings.reject_unknown()
        source.reject_unknown()
        reader.reject_unknown()
        return config

    def to_toml(self) -> dict[str, Any]:
        """Return the canonical document."""
        document: dict[str, Any] = {"format": FORMAT_VERSION}
        if self.follow is not None:
            document["follow"] = self.follow
        if self.source_url is not None:
            document["source"] = {"url": self.source_url}
        pull_through = self.pull_through.to_toml()
        if pull_through:
            document["pull-through"] = pull_through
        if self.builds.to_toml():
            document["builds"] = self.builds.to_toml()
        if self.understandings_allow is not None:
            document["understandings"] = {"allow": list(self.understandings_allow)}
        return document


def _branch_name(branch: str | None, where: str) -> str | None:
    """Return a ``[pull-through] branch`` that git and URLs both take as it is, else InvalidData."""
    try:
        return None if branch is None else validate_label(branch, "branch")
    except InvalidInput as exc:
        raise InvalidData(f"{where}: {exc.message}") from None
