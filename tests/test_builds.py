"""Building sdists' metadata in a sandbox: what it gives, and what hostile builds cannot do."""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from metasrv.index.buildenvs import BuildEnvironments
from metasrv.index.builds import Builder, BuildResult, reason_from_log
from metasrv.index.sandbox import Limits
from tests.buildbackend import build_backend_wheel, build_dynamic_sdist, build_in_tree_sdist
from tests.distributions import build_sdist, build_wheel
from tests.indexserver import LocalIndex, serve_index

# Small limits keep hostile builds fast; the wall limit is generous for a loaded machine.
LIMITS = Limits(
    wall_seconds=60, cpu_seconds=2, memory_bytes=1024**3, processes=16, output_bytes=1024**2
)


@dataclass
class BuildSetup:
    """A local index with the test backend, a builder using it, and a folder for sdists."""

    index: LocalIndex
    builder: Builder
    sdists: Path
    scratch: Path

    def build(self, name: str, code: str = "", **options: object) -> BuildResult:
        sdist = build_dynamic_sdist(self.sdists, name, "1.0", code=code, **options)  # type: ignore[arg-type]
        return self.builder.build(sdist)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildSetup]:
    root = tmp_path_factory.mktemp("builds")
    (root / "index").mkdir()
    (root / "sdists").mkdir()
    build_backend_wheel(root / "index")
    build_wheel(
        root / "index", "buildhelper", "1.0", files={"buildhelper/__init__.py": 'EXTRA = "six"\n'}
    )
    with serve_index(root / "index") as index:
        environments = BuildEnvironments(root / "environments", index.simple_url)
        (root / "scratch").mkdir()
        builder = Builder(environments, LIMITS, scratch=root / "scratch")
        yield BuildSetup(index, builder, root / "sdists", root / "scratch")


def test_a_dynamic_sdist_builds_to_the_metadata_its_backend_computes(setup: BuildSetup) -> None:
    result = setup.build("alpha", requires_dist=("click>=8", "rich; extra == 'fancy'"))
    assert result.reason is None
    assert result.metadata is not None
    assert result.name == "alpha"
    assert result.metadata.requires_dist == ("click>=8", "rich; extra == 'fancy'")


def test_a_backend_without_prepare_metadata_gives_the_metadata_of_the_wheel_it_builds(
    setup: BuildSetup,
) -> None:
    result = setup.build("beta", requires_dist=("idna",), backend="tinybackend.wheelonly")
    assert result.reason is None
    assert result.metadata is not None
    assert result.metadata.requires_dist == ("idna",)


def test_requirements_the_backend_asks_for_are_installed_before_the_metadata_hook(
    setup: BuildSetup,
) -> None:
    code = (
        'BUILD_REQUIRES = ["buildhelper"]\n'
        "try:\n"
        "    import buildhelper\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        '    METADATA = METADATA.rstrip() + "\\nRequires-Dist: " + buildhelper.EXTRA + "\\n\\n"\n'
    )
    result = setup.build("gamma", code)
    assert result.reason is None
    assert result.metadata is not None
    assert result.metadata.requires_dist == ("six",)


def test_environments_are_reused_for_the_same_build_requirements(setup: BuildSetup) -> None:
    setup.build("delta")
    environments = setup.builder.environments.folder
    before = {path.name for path in environments.iterdir()}
    assert setup.build("epsilon").reason is None
    assert {path.name for path in environments.iterdir()} == before


@pytest.mark.parametrize(
    ("pyproject", "reason"),
    [
        (
            '[build-system]\nrequires = ["tinybackend"]\nbuild-backend = "nosuchbackend"\n',
            "backend nosuchbackend not found",
        ),
        ("", "could not install build requirements"),
        ("[build-system\n", "invalid pyproject.toml"),
        ('[build-system]\nrequires = ["not a requirement!"]\n', "invalid build requirement"),
    ],
)
def test_a_build_system_that_cannot_be_set_up_is_a_failure_with_its_reason(
    setup: BuildSetup, pyproject: str, reason: str
) -> None:
    sdist = build_sdist(
        setup.sdists,
        "zeta",
        "1.0",
        metadata_version="1.2",
        pyproject=pyproject,
        files={"build.py": "METADATA = ''\n"},
    )
    result = setup.builder.build(sdist)
    assert result.metadata is None
    assert result.reason is not None
    assert result.reason.startswith(reason), result.reason


def test_python_2_code_is_a_failure_that_says_so(setup: BuildSetup) -> None:
    result = setup.build("eta", 'print "hello"\n')
    assert result.reason == "python 2 only"


def _sandbox_processes(marker: str) -> list[str]:
    """Return the command lines of running processes that mention ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in command_line:
            found.append(command_line)
    return found


SECRET = "s3cret-key-material"
HOSTILE = {
    "write outside its folder": (
        "open({outside!r}, 'w').write('escaped')\nopen('/usr/escaped', 'w').write('escaped')",
        "build failed: ",
    ),
    "read the meta repository": ("print(open({secret!r}).read())", "build failed: FileNotFound"),
    "read ~/.ssh": (
        "import os\nprint(open(os.path.expanduser('~/.ssh/id_rsa')).read())\n"
        "print(open({ssh!r}).read())",
        "build failed: FileNotFound",
    ),
    "open a socket": (
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)"
        ".sendall(b'GET /escaped HTTP/1.0\\r\\n\\r\\n')",
        "build failed: ConnectionRefusedError",
    ),
    "fork without end": ("import os\nwhile True:\n    os.fork()", "started more than 16 processes"),
    "allocate 10 GB": ("hog = b'x' * (10 * 1024 ** 3)", "needed more than 1024 MB of memory"),
    "sleep forever": (
        "import subprocess, time\nsubprocess.Popen(['sleep', '4242.5'])\ntime.sleep(10 ** 6)",
        "timed out after 3 s",
    ),
    "print a gigabyte": (
        "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 1024 * 1024)",
        "printed more than 1 MB",
    ),
    "spin the CPU": ("while True:\n    pass", "used more than 2 s of CPU"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_build_is_stopped_leaves_nothing_and_the_next_build_works(
    setup: BuildSetup, tmp_path: Path, case: str
) -> None:
    meta = tmp_path / "meta"
    (meta / ".git").mkdir(parents=True)
    (meta / ".git" / "config").write_text(SECRET)
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "id_rsa").write_text(SECRET)
    outside = tmp_path / "escaped.txt"
    port = int(setup.index.url.rsplit(":", 1)[1])
    template, reason = HOSTILE[case]
    code = template.format(
        outside=str(outside),
        secret=str(meta / ".git" / "config"),
        ssh=str(ssh / "id_rsa"),
        port=port,
    )
    if case == "sleep forever":
        setup.builder.limits = replace(LIMITS, wall_seconds=3)
    try:
        result = setup.build("hostile", code)
    finally:
        setup.builder.limits = LIMITS
    assert result.metadata is None
    assert result.reason is not None
    assert result.reason.startswith(reason), result.reason
    assert SECRET not in result.reason
    assert not outside.exists()
    assert not Path("/usr/escaped").exists()
    assert not any("/escaped" in path for path, _range in setup.index.requests)
    assert _sandbox_processes("4242.5") == []
    assert list(setup.scratch.iterdir()) == []
    assert setup.build("afterwards", requires_dist=("idna",)).reason is None


EVIL_BACKEND = """\
import os


def get_requires_for_build_wheel(config_settings=None):
    return {requires}


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    {body}
"""
EVIL = {
    "METADATA is a link to a secret": (
        "dist_info = os.path.join(metadata_directory, 'x-1.0.dist-info')\n"
        "    os.makedirs(dist_info)\n"
        "    os.symlink({secret!r}, os.path.join(dist_info, 'METADATA'))\n"
        "    return 'x-1.0.dist-info'"
    ),
    "the dist-info it names is outside": "return '../' * 12 + {folder!r}",
    "it asks for requirements that are not strings": "return 'x-1.0.dist-info'",
}


@pytest.mark.parametrize("case", list(EVIL))
def test_an_in_tree_backend_that_lies_fails_and_makes_metasrv_read_no_host_file(
    setup: BuildSetup, tmp_path: Path, case: str
) -> None:
    secret = tmp_path / "METADATA"
    secret.write_text(f"Metadata-Version: 2.1\nName: x\nVersion: 1.0\nRequires-Dist: {SECRET}\n")
    body = EVIL[case].format(secret=str(secret), folder=str(tmp_path).lstrip("/"))
    requires = "[42]" if "strings" in case else "[]"
    backend = EVIL_BACKEND.format(body=body, requires=requires)
    sdist = build_in_tree_sdist(setup.sdists, "evil", backend)
    result = setup.builder.build(sdist)
    assert result.metadata is None
    assert result.reason is not None
    assert SECRET not in result.reason
    assert result.reason.startswith(
        ("the build left no regular file", "backend evil put", "backend evil asked")
    )


ENVIRONMENT_REPORT = """\
import os, sys, tempfile
names = ("TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE", "METASRV_TEST_SECRET")
report = {name: os.environ.get(name) for name in names}
report["PATH"] = os.environ["PATH"].split(":")
report["python"] = os.path.dirname(sys.executable)
report["HOME"] = os.environ["HOME"]
report["cwd"] = os.getcwd()
report["home writable"] = os.access(os.environ["HOME"], os.W_OK)
report["tempdir"] = tempfile.gettempdir()
METADATA = METADATA.rstrip() + "\\nSummary: " + repr(report) + "\\n\\n"
"""


def test_a_build_runs_with_a_fixed_environment_and_none_of_metasrv_s(
    setup: BuildSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METASRV_TEST_SECRET", SECRET)
    started = time.monotonic()
    result = setup.build("environ", ENVIRONMENT_REPORT)
    elapsed = time.monotonic() - started
    assert result.document is not None, result.reason
    assert 0 < result.seconds <= elapsed
    summary = result.document.decode().split("Summary: ", 1)[1].split("\n", 1)[0]
    report = ast.literal_eval(summary)
    # Each build has a folder of its own in the scratch folder: its home, its unpacked source.
    workdir = Path(report.pop("HOME")).parent.parent
    assert workdir.parent == setup.scratch.resolve()
    assert workdir.name.startswith("metasrv-build-")
    assert report.pop("cwd") == str(workdir / "sandboxed" / "source" / "environ-1.0")
    assert report.pop("PATH") == [report.pop("python"), "/usr/bin", "/bin"]
    assert report == {
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "METASRV_TEST_SECRET": None,
        "home writable": True,
        "tempdir": "/tmp",
    }


def test_a_failed_build_reports_how_long_it_took(setup: BuildSetup) -> None:
    started = time.monotonic()
    result = setup.build("slowfail", "import time\ntime.sleep(0.2)\nraise SystemExit('no')\n")
    elapsed = time.monotonic() - started
    assert result.reason == "build failed: no"
    assert 0.2 <= result.seconds <= elapsed


FORGING_BACKEND = """\
import atexit, os, sys


def _forge():
    output = os.path.join(sys.argv[-1], "output.json")
    os.remove(output)
    {forge}


def get_requires_for_build_wheel(config_settings=None):
    # Runs after pyproject-hooks wrote its answer: the backend replaces it.
    atexit.register(_forge)
    return []
"""
FORGED = {
    "not JSON": ("backend evil answered nonsense: JSONDecodeError", "'{'"),
    "not an object": ("backend evil answered nonsense: AttributeError", "'[]'"),
    "no return value": ("backend evil answered nonsense: KeyError", "'{}'"),
    "a hook missing": (
        "backend evil has no get_requires_for_build_wheel hook",
        "'{\"hook_missing\": true}'",
    ),
    "no backend": ("backend evil not found", "'{\"no_backend\": true}'"),
    "an unsupported operation": (
        "backend evil answered nonsense: UnsupportedOperation",
        "'{\"unsupported\": true}'",
    ),
}


@pytest.mark.parametrize("case", [*FORGED, "a link to a host file"])
def test_a_backend_that_forges_its_hook_s_answer_fails_with_a_reason(
    setup: BuildSetup, tmp_path: Path, case: str
) -> None:
    secret = tmp_path / "answer.json"
    secret.write_text('{"return_val": ["' + SECRET + '"]}')
    if case in FORGED:
        reason, content = FORGED[case]
        forge = f"open(output, 'w').write({content})"
    else:
        reason, forge = (
            "the build left no regular file output.json",
            f"os.symlink({str(secret)!r}, output)",
        )
    sdist = build_in_tree_sdist(setup.sdists, "evil", FORGING_BACKEND.format(forge=forge))
    result = setup.builder.build(sdist)
    assert (result.metadata, result.reason) == (None, reason)


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        (
            '  File "setup.py", line 3\n    print "hi"\nSyntaxError: Missing parentheses',
            "python 2 only",
        ),
        (
            "    except OSError, e:\nSyntaxError: multiple exception types must be parenthesized",
            "python 2 only",
        ),
        ("Traceback\nException: Sorry, Python 3 not yet supported", "python 2 only"),
        ("ModuleNotFoundError: No module named '__builtin__'", "python 2 only"),
        ("error: command 'gcc' failed: No such file or directory", "needs a compiler"),
        (
            "fatal error: Python.h: No such file or directory\nerror: build failed",
            "needs a compiler",
        ),
        (
            "ModuleNotFoundError: No module named 'numpy'",
            "needs module 'numpy', which its build requirements do not install",
        ),
        (
            "Traceback\nFileNotFoundError: 'README.rst'",
            "build failed: FileNotFoundError: 'README.rst'",
        ),
        ("", "build failed: no output"),
        ("  \n\n   \n", "build failed: no output"),
        ("Traceback\n  RuntimeError: boom  \n\n", "build failed: RuntimeError: boom"),
        ("x" * 300, "build failed: " + "x" * 186),
        # Python 2 syntax only counts in a SyntaxError; a refusal only near the end.
        ("SyntaxError: multiple exception types must be parenthesized", "python 2 only"),
        ("invalid decimal literal", "build failed: invalid decimal literal"),
        ("SyntaxError: invalid syntax", "build failed: SyntaxError: invalid syntax"),
        ("Python 3 not supported\n1\n2\n3\n4", "python 2 only"),
        ("Python 3 not supported\n1\n2\n3\n4\n5", "build failed: 5"),
        ("ModuleNotFoundError: No module named 'urllib2.request'", "python 2 only"),
        (
            "ModuleNotFoundError: No module named 'urllib2'\n"
            "ModuleNotFoundError: No module named 'numpy.core'",
            "needs module 'numpy.core', which its build requirements do not install",
        ),
        # A compiler counts when it fails near the end, whatever the case of "error".
        ("gcc -c foo.c\nERROR: command failed", "needs a compiler"),
        ("gcc -c foo.c\ndone", "build failed: done"),
        ("running build_ext\ngcc -pthread -c x.c\nerror: command failed", "needs a compiler"),
        ("gcc: Error\n" + "line\n" * 29, "needs a compiler"),
        ("gcc: Error\n" + "line\n" * 30, "build failed: line"),
    ],
)
def test_a_failed_build_s_log_gives_a_short_reason(log: str, reason: str) -> None:
    assert reason_from_log(log) == reason


IN_TREE_BACKEND = """\
import atexit, os, sys


def get_requires_for_build_wheel(config_settings=None):
    return ["buildhelper"]


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    import buildhelper  # there only if the environment got what this backend asked for

    def forge():
        with open(os.path.join(sys.argv[-1], "output.json"), "w") as out:
            out.write("{")

    atexit.register(forge)
    return "x-1.0.dist-info"
"""


def test_an_in_tree_backend_that_asks_for_more_is_found_again_and_its_answer_checked(
    setup: BuildSetup,
) -> None:
    sdist = build_in_tree_sdist(setup.sdists, "intree", IN_TREE_BACKEND)
    result = setup.builder.build(sdist)
    assert result.reason == "backend intree answered nonsense: JSONDecodeError"
