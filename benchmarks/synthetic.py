"""Build a synthetic meta repository of many projects straight into git objects."""

from __future__ import annotations

import hashlib
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pygit2

from metasrv.config import MetaConfig
from metasrv.model import CoreMetadata, DistFile, Project, Release, SourceState
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import CONFIG_PATH
from metasrv.repo.storage import Storage
from tests.builders import project_files

SYLLABLES = ["py", "data", "flask", "lib", "net", "aio", "django", "tool", "kit", "ml", "web", "x"]
SYLLABLES += ["core", "utils", "client", "api", "test", "cloud", "sdk", "json", "http", "auth"]
PLATFORM_TAGS = [
    "py3-none-any",
    "cp311-cp311-manylinux_2_17_x86_64",
    "cp311-cp311-macosx_11_0_arm64",
    "cp311-cp311-win_amd64",
    "cp312-cp312-manylinux_2_17_x86_64",
    "cp312-cp312-musllinux_1_2_aarch64",
]
MARKERS = ["", "; python_version < '3.11'", "; sys_platform == 'win32'", "; extra == 'test'"]
BATCH = 5_000


def project_names(count: int, seed: int) -> list[str]:
    """Return ``count`` distinct project names that look like PyPI's."""
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < count:
        parts = rng.sample(SYLLABLES, rng.randint(1, 3))
        names.add("-".join(parts) + (str(rng.randint(0, 9999)) if rng.random() < 0.9 else ""))
    return sorted(names)


def synthetic_project(
    name: str, all_names: list[str], rng: random.Random, serial: int | None = None
) -> Project:
    """Return a project with 5-50 releases of 1-20 files and realistic requirement lists."""
    releases = []
    for index in range(rng.randint(5, 50)):
        version = f"{index // 10}.{index % 10}.{rng.randint(0, 3)}"
        requires = tuple(
            f"{rng.choice(all_names)}>={rng.randint(0, 5)}.{rng.randint(0, 9)}{rng.choice(MARKERS)}"
            for _ in range(rng.randint(0, 8))
        )
        metadata = CoreMetadata("2.1", requires, ">=3.8", ("test",) if rng.random() < 0.3 else ())
        file_count = min(20, 1 + int(rng.expovariate(1 / 1.5)))
        files = [
            _synthetic_file(f"{name.replace('-', '_')}-{version}.tar.gz", metadata)
            if file_number == 0
            else _synthetic_file(
                f"{name.replace('-', '_')}-{version}-{PLATFORM_TAGS[file_number % 6]}"
                f"{'' if file_number < 6 else f'.{file_number}'}.whl",
                metadata,
            )
            for file_number in range(file_count)
        ]
        releases.append(Release.from_files(version, tuple(files)))
    return Project.create(name, releases, SourceState(serial=serial))


def _synthetic_file(filename: str, metadata: CoreMetadata) -> DistFile:
    digest = hashlib.sha256(filename.encode()).hexdigest()
    return DistFile(
        filename=filename,
        url=f"https://files.example/{digest[:2]}/{digest[2:4]}/{filename}",
        hashes={"sha256": digest},
        size=int(digest[:5], 16),
        upload_time="2024-05-06T07:08:09Z",
        requires_python=metadata.requires_python,
        metadata=metadata,
    )


def build_repository(path: Path, count: int, seed: int = 0, serial: int | None = None) -> Storage:
    """Create (or reuse) a meta repository at ``path`` holding ``count`` synthetic projects.

    With ``serial`` every project records it as its source-serial, as a synced mirror does.
    """
    if (path / ".complete").exists():
        return configured(Storage(path))
    # Bare: a working tree of every project would be written and re-indexed on every batch.
    pygit2.init_repository(str(path), bare=True, initial_head="main")
    storage = Storage(path)
    names = project_names(count, seed)
    rng = random.Random(seed)
    for batch in _batches(names):
        projects = [synthetic_project(name, names, rng, serial) for name in batch]
        storage.commit("main", project_files(*projects), f"add {len(batch)} projects")
    configured(storage)
    # A served repository is normally packed; loose objects would cost a file open per read.
    subprocess.run(["git", "repack", "-a", "-d", "-q"], cwd=path, check=True)
    (path / ".complete").write_text("")
    return storage


def configured(storage: Storage) -> Storage:
    """Give the repository a metasrv.toml if it has none: serve refuses one without it."""
    if storage.read(storage.resolve(None), CONFIG_PATH) is None:
        config = tomlcodec.dumps(MetaConfig().to_toml())
        storage.commit("main", {CONFIG_PATH: config}, "metasrv.toml")
    return storage


def _batches(names: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(names), BATCH):
        yield names[start : start + BATCH]
