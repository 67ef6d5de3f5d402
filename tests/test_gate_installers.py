"""Real pip and uv through a gate: unapproved releases are not installable, approved ones are."""

from __future__ import annotations

from pathlib import Path

from metasrv.cli.main import main
from metasrv.repo.storage import Storage
from tests.conftest import running_server
from tests.distributions import build_wheel
from tests.indexserver import serve_index
from tests.test_gates import register_gate
from tests.test_installers import installed, new_venv, pip, uv
from tests.test_understandings import add_rules

APPROVE_1 = {"id": "reviewed-1", "versions": "==1.0", "approve": True, "reason": "diff read"}


def test_a_gate_hides_unapproved_releases_from_pip_and_uv(tmp_path: Path) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    build_wheel(archives, "mtsv-alpha", "1.0")
    build_wheel(archives, "mtsv-alpha", "2.0")
    with serve_index(archives) as index:
        assert main(["init", str(tmp_path / "meta"), "--source", index.simple_url]) == 0
        assert main(["sync", "--all", "--repo", str(tmp_path / "meta")]) == 0
        meta = Storage(tmp_path / "meta")
        register_gate(meta)
        add_rules(meta, "gates/notary", "mtsv-alpha", APPROVE_1)
        with running_server(["--repo", str(meta.path)]) as server:
            plain, gated = f"{server.url}/simple/", f"{server.url}/u/notary/simple/"
            python = new_venv(tmp_path / "pip-env")
            assert pip(python, "install", "--index-url", gated, "mtsv-alpha").returncode == 0
            assert installed(python) == {"mtsv-alpha": "1.0"}
            refused = pip(python, "install", "--index-url", gated, "mtsv-alpha==2.0")
            assert refused.returncode != 0
            assert "No matching distribution" in refused.stderr
            assert pip(python, "install", "--index-url", plain, "-U", "mtsv-alpha").returncode == 0
            assert installed(python) == {"mtsv-alpha": "2.0"}

            cache = tmp_path / "cache"
            assert uv("venv", str(tmp_path / "uv-env"), cache=cache).returncode == 0
            target = ["--python", str(tmp_path / "uv-env")]
            result = uv("pip", "install", *target, "--index-url", gated, "mtsv-alpha", cache=cache)
            assert result.returncode == 0, result.stderr
            assert installed(tmp_path / "uv-env/bin/python") == {"mtsv-alpha": "1.0"}
            pinned = uv(
                "pip", "install", *target, "--index-url", gated, "mtsv-alpha==2.0", cache=cache
            )
            assert pinned.returncode != 0
            assert "mtsv-alpha==2.0" in pinned.stderr
