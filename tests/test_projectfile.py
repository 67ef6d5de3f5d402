from __future__ import annotations

from pathlib import Path

import pytest

from metasrv.names import parse_version
from metasrv.repo.projectfile import read_project, read_release, write_project
from tests.builders import make_project

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("path", sorted(DATA.glob("*/*/*.toml")), ids=lambda p: p.stem)
def test_reading_one_release_equals_reading_the_whole_file(path: Path) -> None:
    document = path.read_bytes()
    project = read_project(document, path.name)
    # Every release of small projects; 60 spread over large ones (botocore has ~2,000).
    step = max(1, len(project.releases) // 60)
    for release in (*project.releases[::step], project.releases[-1]):
        assert read_release(document, path.name, release.version) == (project.name, release)


def test_an_unknown_version_reads_as_none_with_the_registered_name() -> None:
    document = write_project(make_project("Gamma_Pkg", ["1.0", "2.0"]))
    assert read_release(document, "x", parse_version("3")) == ("Gamma_Pkg", None)
    assert read_release(document, "x", parse_version("2"))[1] is not None


INTERLEAVED = b"""format = 1
name = "x"

[releases."1.0".metadata]
metadata-version = "2.1"

[releases."2.0".metadata]
metadata-version = "2.1"
requires-dist = ["b"]

[releases."1.0"]
files = [{ filename = "x-1.0.tar.gz", url = "u", hashes = {} }]
"""

DOTTED = b"""format = 1
name = "x"
releases."1.0".metadata = { metadata-version = "2.1", requires-dist = ["a"] }
"""


@pytest.mark.parametrize("document", [INTERLEAVED, DOTTED], ids=["interleaved", "dotted-keys"])
def test_a_valid_file_in_another_shape_is_read_whole(document: bytes) -> None:
    _, release = read_release(document, "x", parse_version("1.0"))
    assert release is not None
    assert release == read_project(document, "x").find_release(parse_version("1.0"))
