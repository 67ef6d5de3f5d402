"""The repository's own data/ follows data/README.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metasrv.model import MetadataStatus, Project, status_of_format_1_error
from metasrv.names import name_from_path
from metasrv.repo import tomlcodec

DATA = Path(__file__).resolve().parents[1] / "data"
PROJECT_FILES = sorted(DATA.glob("*/*/*.toml"))


@pytest.mark.parametrize("path", PROJECT_FILES, ids=lambda p: p.name)
def test_every_project_file_parses_round_trips_and_sits_at_its_names_path(path: Path) -> None:
    relative = path.relative_to(DATA).as_posix()
    text = path.read_bytes()
    project = Project.from_toml(tomlcodec.loads(text, where=relative), relative)
    assert name_from_path(relative) == project.normalized_name
    assert tomlcodec.dumps(project.to_toml()) == text


def test_no_two_paths_collide_case_insensitively() -> None:
    lowered = [path.as_posix().lower() for path in DATA.rglob("*")]
    assert len(lowered) == len(set(lowered))


def test_the_sample_holds_the_pallets_family() -> None:
    names = {path.stem for path in PROJECT_FILES}
    assert {"flask", "werkzeug", "jinja2", "click", "itsdangerous", "markupsafe"} <= names


def test_the_readme_example_is_a_valid_project_file() -> None:
    readme = (DATA / "README.md").read_text()
    examples = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    assert examples
    for example in examples:
        project = Project.from_toml(tomlcodec.loads(example, where="README"), "README")
        assert tomlcodec.dumps(project.to_toml()).decode() == example


def test_the_readme_lists_every_metadata_status_and_no_other() -> None:
    readme = (DATA / "README.md").read_text()
    section = readme.split("### Metadata status", 1)[1].split("###", 1)[0]
    listed = re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.MULTILINE)
    assert listed[1:] == [status.value for status in MetadataStatus]


@pytest.mark.parametrize(
    "row",
    re.findall(
        r"^\| `([^`]+)` \| `([a-z-]+)` \|",
        (DATA / "README.md").read_text().split("### Format 1", 1)[1],
        flags=re.MULTILINE,
    ),
)
def test_the_readmes_format_1_examples_read_as_it_says(row: tuple[str, str]) -> None:
    error, status = row
    assert status_of_format_1_error(error.replace("...", "x"))[0] == status
