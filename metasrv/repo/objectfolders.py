"""A git object store's 256 fan-out folders, made before objects need them."""

from __future__ import annotations

import os
from pathlib import Path


def make_object_folders(git_dir: Path) -> None:
    """Make the fan-out folders of ``git_dir``'s object store that do not exist yet."""
    # libgit2 makes one on its first object there, holding the GIL, and a new folder can cost as
    # much as the object (0.2-0.4 ms on a VM's disk): a new repository's first pulls paid for
    # up to two each while clients waited. A clone lacks them too: its objects are packed.
    objects = git_dir / "objects"
    made = {entry.name for entry in os.scandir(objects) if entry.is_dir()}
    for folder in {f"{byte:02x}" for byte in range(256)} - made:
        (objects / folder).mkdir(exist_ok=True)
