"""Real pip and uv install never-synced projects through pull-through, understandings applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasrv.cli.main import main
from metasrv.repo.storage import Storage
from tests.conftest import running_server
from tests.distributions import build_wheel
from tests.indexserver import serve_index
from tests.test_installers import UV, installed, new_venv, pip, uv
from tests.test_understandings import add_rules, register

RELAX = {
    "id": "beta-works-with-alpha-2",
    "versions": "==1.0",
    "relax": ["pt-alpha"],
    "reason": "beta 1.0 runs fine on alpha 2",
}


@pytest.mark.skipif(UV is None, reason="uv is not installed")
def test_pip_and_uv_install_never_synced_projects_with_and_without_an_understanding(
    tmp_path: Path,
) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    build_wheel(archives, "pt-alpha", "1.0")
    build_wheel(archives, "pt-alpha", "2.0")
    build_wheel(archives, "pt-beta", "1.0", requires_dist=["pt-alpha<2"])
    with serve_index(archives) as index:
        assert main(["init", str(tmp_path / "meta"), "--source", index.simple_url]) == 0
        meta = Storage(tmp_path / "meta")
        register(meta, "relaxed", ".", "understandings/relaxed")
        add_rules(meta, "understandings/relaxed", "pt-beta", RELAX)
        with running_server(["--repo", str(meta.path), "--quiet"]) as server:
            plain, relaxed = f"{server.url}/simple/", f"{server.url}/u/relaxed/simple/"
            python = new_venv(tmp_path / "pip")
            result = pip(python, "install", "--index-url", plain, "pt-beta")
            assert result.returncode == 0, result.stderr
            assert installed(python) == {"pt-alpha": "1.0", "pt-beta": "1.0"}
            cache = tmp_path / "uv-cache"
            assert uv("venv", str(tmp_path / "uv"), cache=cache).returncode == 0
            arguments = ["pip", "install", "--python", str(tmp_path / "uv")]
            result = uv(*arguments, "--index-url", relaxed, "pt-beta", "pt-alpha>=2", cache=cache)
            assert result.returncode == 0, result.stderr
            assert installed(tmp_path / "uv/bin/python") == {"pt-alpha": "2.0", "pt-beta": "1.0"}
            refused = uv(
                *arguments,
                "--index-url",
                plain,
                "pt-beta",
                "pt-alpha>=2",
                "--reinstall",
                cache=cache,
            )
            assert refused.returncode != 0
    pulled = [c.message for c in meta._repo.walk(meta._repo.head.target) if "(new, " in c.message]
    assert any("pt-beta (new, 1 files)" in message for message in pulled)
