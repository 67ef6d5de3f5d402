"""A git object store's 256 fan-out folders, made before objects need them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def make_object_folders(git_dir: Path) -> None:
    """Make the fan-out folders of ``git_dir``'s object store that do not exist yet, as far as
    the disk allows: one it refuses (read-only) fails its commits instead, with their error."""
    # libgit2 makes one on its first object there, holding the GIL, and a new folder can cost as
    # much as the object (0.2-0.4 ms on a VM's disk): a new repository's first pulls paid for
    # up to two each while clients waited. A clone lacks them too: its objects are packed.
    objects = git_dir / "objects"
    try:
        made = {entry.name for entry in os.scandir(objects) if entry.is_dir()}
        mode = objects.stat().st_mode & 0o7777  # a shared repository's group bits, as git's
    except OSError:
        return
    for folder in {f"{byte:02x}" for byte in range(256)} - made:
        with contextlib.suppress(OSError):
            (objects / folder).mkdir()
            os.chmod(objects / folder, mode)
