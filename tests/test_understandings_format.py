"""understandings/README.md's examples and the bundled samples follow the format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metasrv.config import MetaConfig
from metasrv.model import Project
from metasrv.names import name_from_path, project_path
from metasrv.repo import tomlcodec
from metasrv.understandings.authoring import check_rule_file
from metasrv.understandings.rules import Registration, Rule, RuleFile

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "understandings"
EXAMPLES = re.findall(r"```toml\n(.*?)```", (FOLDER / "README.md").read_text(), flags=re.DOTALL)
REGISTRATIONS = sorted(FOLDER.glob("*.toml"))
RULE_FILES = sorted(FOLDER.glob("*/*/*/*.toml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda text: text.splitlines()[1])
def test_the_readme_examples_are_registrations_and_rule_files(example: str) -> None:
    document = tomlcodec.loads(example, where="README")
    if "understandings" in document:
        # metasrv.toml's allow list, shown beside the registrations.
        config = MetaConfig.from_toml(document, "README")
        assert config.to_toml() == document
        return
    if "name" in document:
        parsed: Registration | RuleFile = Registration.from_toml(document, "README")
    else:
        parsed = RuleFile.from_toml(document, "README")
    assert tomlcodec.dumps(parsed.to_toml()).decode() == example


def test_the_readme_shows_registrations_and_rule_files() -> None:
    kinds = {"name" in tomlcodec.loads(example, where="README") for example in EXAMPLES}
    assert kinds == {True, False}


def test_at_least_two_samples_are_registered() -> None:
    names = [
        Registration.from_toml(tomlcodec.loads(p.read_bytes(), where=p.name), p.name).name
        for p in REGISTRATIONS
    ]
    assert names == [p.stem for p in REGISTRATIONS]
    assert len(names) >= 2


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.relative_to(FOLDER).as_posix())
def test_every_bundled_rule_file_is_valid_against_the_sample_data(path: Path) -> None:
    text = path.read_bytes()
    where = path.relative_to(ROOT).as_posix()
    rules = RuleFile.from_toml(tomlcodec.loads(text, where=where), where)
    normalized_name = name_from_path("/".join(path.relative_to(FOLDER).parts[1:]))
    assert normalized_name is not None
    data = ROOT / "data" / project_path(normalized_name)
    canonical = Project.from_toml(tomlcodec.loads(data.read_bytes(), where="data"), "data")
    assert check_rule_file(rules, where, canonical, text) == []
    assert tomlcodec.dumps(rules.to_toml()) == text


def _table_keys(heading: str) -> list[str]:
    """Return the keys of the README table that follows ``heading``."""
    after = (FOLDER / "README.md").read_text().split(heading, 1)[1]
    table = re.search(r"^\|.*?(?=\n\n)", after, flags=re.MULTILINE | re.DOTALL)
    assert table is not None
    return re.findall(r"^\| `([a-z-]+)` \|", table.group(0), flags=re.MULTILINE)


def test_every_registration_key_is_specified_in_the_readme() -> None:
    everything = Registration(
        "audit", "d", "https://git.test/audit", "main", "rules", "signers", gate=True
    )
    assert list(everything.to_toml()) == _table_keys("## Registrations:")


def test_every_rule_key_is_specified_in_the_readme() -> None:
    table = {
        "id": "r",
        "versions": "<2",
        "uploaded-before": "2024-01-01T00:00:00+00:00",
        "files": "wheels",
        "open-ended": True,
        "relax": ["a"],
        "replace": ["b<2"],
        "remove": ["c"],
        "add": ["d"],
        "requires-python": ">=3.8",
        "yank": "bad",
        "approve": True,
        "reason": "why",
    }
    assert list(Rule.from_toml(table, "README").to_toml()) == _table_keys("### A rule:")
