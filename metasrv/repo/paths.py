"""Repository paths: the changed paths of a commit as the nested trees it rebuilds; no I/O."""

from __future__ import annotations

from collections.abc import Mapping

from metasrv.errors import InvalidInput


def split_paths(
    changes: Mapping[str, bytes | None],
) -> dict[str, bytes | dict[str, object] | None]:
    """Return path -> bytes as nested folder dicts, refusing paths that could escape a tree."""
    root: dict[str, bytes | dict[str, object] | None] = {}
    for path, content in changes.items():
        parts = path.split("/")
        if any(part in ("", ".", "..", ".git") for part in parts):
            raise InvalidInput(f"invalid path {path!r}")
        node: dict[str, object] = root  # type: ignore[assignment]
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidInput(f"path {path!r} runs through a file being written")
            node = child
        node[parts[-1]] = content
    return root
