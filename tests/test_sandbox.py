"""The bubblewrap sandbox itself: what a command in it sees, may write, and is stopped for."""

from __future__ import annotations

import ctypes
import os
import platform
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from metasrv.index import sandbox
from metasrv.index.sandbox import NOBODY, SYSTEM_PATHS, Limits, Outcome, run_sandboxed
from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS, BoundedThread, poll_until

LIMITS = Limits(
    wall_seconds=30, cpu_seconds=5, memory_bytes=512 * 1024**2, processes=24, output_bytes=1024**2
)
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "GREETING": "hello from outside"}


@dataclass
class Folders:
    """A folder the command may write, one it may read, and a file it must not see."""

    writable: Path
    readable: Path
    secret: Path
    log: Path


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    writable = tmp_path / "work"
    (writable / "deep" / "er").mkdir(parents=True)
    (writable / "deep" / "er" / "kept.txt").write_text("kept\n")
    readable = tmp_path / "given"
    readable.mkdir()
    (readable / "input.txt").write_text("given to read\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the sandbox\n")
    return Folders(writable, readable, secret, tmp_path / "command.log")


def sandboxed(folders: Folders, script: str, limits: Limits = LIMITS) -> Outcome:
    return run_sandboxed(
        ["/bin/sh", "-c", script],
        cwd=folders.writable,
        writable=[folders.writable],
        readable=[folders.readable],
        environment=ENVIRONMENT,
        limits=limits,
        log_path=folders.log,
    )


NAMESPACES = ("ipc", "net", "pid", "uts")


def test_a_command_sees_the_system_its_folders_and_nothing_else_of_the_host(
    folders: Folders,
) -> None:
    namespaces = " ".join(f"/proc/self/ns/{name}" for name in NAMESPACES)
    script = (
        f"readlink {namespaces} /proc/self/fd/0; echo; ls -a /; echo; pwd; "
        "cat /proc/self/environ | tr '\\0' '\\n'"
    )
    outcome = sandboxed(folders, script)
    assert outcome.ok, outcome.log_tail
    links, _, rest = outcome.log_tail.partition("\n\n")
    *inside, stdin = links.splitlines()
    for name, link in zip(NAMESPACES, inside, strict=True):
        assert link != os.readlink(f"/proc/self/ns/{name}"), name
    assert stdin == "/dev/null"
    root, _, rest = rest.partition("\n\n")
    system = {path.lstrip("/") for path in SYSTEM_PATHS if os.path.lexists(path)}
    assert set(root.split()) == {".", "..", "dev", "etc", "proc", "tmp"} | system
    cwd, *environment = rest.splitlines()
    assert cwd == str(folders.writable.resolve())
    assert set(environment) >= {f"{key}={value}" for key, value in ENVIRONMENT.items()}
    assert not {line.split("=", 1)[0] for line in environment} & {"HOME", "USER", "VIRTUAL_ENV"}


def test_a_command_runs_as_nobody_when_metasrv_runs_as_root(folders: Folders) -> None:
    outcome = sandboxed(folders, "id -u; id -un; id -g; id -G; grep CapEff /proc/self/status")
    assert outcome.ok, outcome.log_tail
    uid, name, gid, groups, capabilities = outcome.log_tail.splitlines()
    nobody = pwd.getpwnam("nobody")
    expected = nobody.pw_uid if os.geteuid() == 0 else os.geteuid()
    # A build that asks who it runs as (getpass, whoami) gets an answer.
    assert (uid, name) == (str(expected), pwd.getpwuid(expected).pw_name)
    if os.geteuid() == 0:
        assert (gid, groups) == (str(nobody.pw_gid), str(nobody.pw_gid))
    assert capabilities.split() == ["CapEff:", "0000000000000000"]


def test_a_command_writes_its_folder_and_reads_only_what_it_was_given(folders: Folders) -> None:
    script = (
        "echo made > made.txt; echo more >> deep/er/kept.txt; mkdir deep/new\n"
        f"echo no > {folders.readable}/made.txt; cat {folders.readable}/input.txt\n"
        f"cat {folders.secret}; echo no > /usr/made-by-sandbox\n"
        "echo scratch > /tmp/made-by-sandbox-4545; cat /tmp/made-by-sandbox-4545\n"
    )
    outcome = sandboxed(folders, script)
    assert (folders.writable / "made.txt").read_text() == "made\n"
    assert (folders.writable / "deep" / "er" / "kept.txt").read_text() == "kept\nmore\n"
    assert (folders.writable / "deep" / "new").is_dir()
    assert not (folders.readable / "made.txt").exists()
    assert "given to read" in outcome.log_tail
    assert "scratch" in outcome.log_tail
    assert "not for the sandbox" not in outcome.log_tail
    assert not Path("/usr/made-by-sandbox").exists()
    assert not Path("/tmp/made-by-sandbox-4545").exists()


def test_a_command_reads_nothing_of_what_metasrv_s_standard_input_holds(folders: Folders) -> None:
    typed, typing = os.pipe()
    os.write(typing, b"typed at metasrv's terminal\n")
    os.close(typing)
    standard_input = os.dup(0)
    os.dup2(typed, 0)
    try:
        outcome = sandboxed(folders, "cat; echo read")
    finally:
        os.dup2(standard_input, 0)
        os.close(standard_input)
        os.close(typed)
    assert outcome.log_tail == "read\n"


@pytest.mark.parametrize(("status", "ok"), [(0, True), (3, False)])
def test_a_command_s_exit_status_is_its_outcome(folders: Folders, status: int, ok: bool) -> None:
    outcome = sandboxed(folders, f"echo done; exit {status}")
    assert (outcome.returncode, outcome.stopped, outcome.ok) == (status, None, ok)
    assert outcome.log_tail == "done\n"


def test_a_command_runs_under_exactly_the_limits_it_was_given(folders: Folders) -> None:
    outcome = sandboxed(folders, "cat /proc/self/limits")
    assert outcome.ok, outcome.log_tail
    limits = {
        line[:26].strip(): line[26:].split()[:2] for line in outcome.log_tail.splitlines()[1:]
    }
    assert limits["Max cpu time"] == ["5", "6"]
    assert limits["Max address space"] == [str(512 * 1024**2)] * 2
    assert limits["Max file size"] == [str(1024**2)] * 2
    assert limits["Max core file size"] == ["0", "0"]
    if os.geteuid() == 0:
        assert limits["Max processes"] == ["24", "24"]
    else:
        assert int(limits["Max processes"][0]) > 24


def test_only_the_end_of_a_long_log_is_kept(folders: Folders) -> None:
    outcome = sandboxed(folders, "head -c 40000 /dev/zero | tr '\\0' a; echo; echo END")
    assert outcome.ok
    assert len(outcome.log_tail) == 16 * 1024
    assert outcome.log_tail.endswith("aaa\nEND\n")
    assert folders.log.stat().st_size == 40000 + 5


def test_a_command_that_writes_a_file_past_the_limit_is_stopped_for_it(folders: Folders) -> None:
    outcome = sandboxed(folders, "exec head -c 3000000 /dev/zero > big.bin")
    assert not outcome.ok
    assert outcome.stopped == "wrote a file larger than 1 MB"
    assert (folders.writable / "big.bin").stat().st_size == 1024**2


def _processes(marker: str) -> list[int]:
    """Return the processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command_line = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in command_line:
            found.append(int(entry.name))
    return found


def test_a_command_past_its_wall_time_is_stopped_with_everything_it_started(
    folders: Folders,
) -> None:
    limits = Limits(wall_seconds=0.5)
    outcome = sandboxed(folders, "sleep 4646.5 & sleep 4646.25 & exec sleep 4646.75", limits)
    assert outcome.stopped == "timed out after 0.5 s"
    assert not outcome.ok
    assert _processes("4646.") == []


def test_what_a_finished_command_left_running_ends_with_its_sandbox(folders: Folders) -> None:
    outcome = sandboxed(folders, "sleep 4747.5 & sleep 4747.25 & echo started")
    assert outcome.ok
    assert outcome.log_tail == "started\n"
    assert _processes("4747.") == []


def test_what_is_left_of_a_sandbox_is_killed_and_waited_for(folders: Folders) -> None:
    # What bwrap leaves when it is killed itself: a pid namespace whose processes live on
    # until the kernel or metasrv ends them.
    script = "sleep 4949.5 & exec sleep 4949.25"
    # --kill-child: should the test fail, the namespace still ends with unshare.
    left = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "/bin/sh", "-c", script])
    try:
        poll_until(lambda: len(_processes("4949.")) == 3, "the sandbox's two processes")
        inside = [pid for pid in _processes("4949.") if pid != left.pid]
        namespace = os.readlink(f"/proc/{inside[0]}/ns/pid")
        assert namespace != os.readlink("/proc/self/ns/pid")
        sandbox._end_namespace(namespace)
        # Only unshare itself is left, outside the namespace.
        assert set(_processes("4949.")) <= {left.pid}
        assert left.wait(SUBPROCESS_DEADLINE_SECONDS) != 0
    finally:
        left.kill()
        left.wait(SUBPROCESS_DEADLINE_SECONDS)


# A bwrap that isolates nothing: it reports itself as the sandbox and runs what follows setpriv.
_SHARING_BWRAP = """#!{python}
import json, os, sys
arguments = sys.argv[1:]
info = int(arguments[arguments.index("--info-fd") + 1])
os.write(info, json.dumps({{"child-pid": os.getpid()}}).encode())
os.close(info)
command = arguments[arguments.index("setpriv"):]
os.execvp(command[0], command)
"""
_RUN_WITH_IT = """
import sys
from pathlib import Path
from metasrv.index.sandbox import Limits, SandboxUnavailable, run_sandboxed
work = Path(sys.argv[1])
try:
    run_sandboxed(["/bin/true"], cwd=work, writable=[work], readable=[], environment={}, \
        limits=Limits(wall_seconds=30), log_path=work.parent / "log")
except SandboxUnavailable as exc:
    print(exc.message)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a pid namespace of its own needs root")
def test_a_bwrap_that_shares_metasrv_s_pid_namespace_is_refused_and_kills_nothing(
    tmp_path: Path,
) -> None:
    # Run in a pid namespace of its own: should the guard fail, the kill stays inside it.
    (tmp_path / "bin").mkdir()
    (tmp_path / "work").mkdir()
    fake = tmp_path / "bin" / "bwrap"
    fake.write_text(_SHARING_BWRAP.format(python=sys.executable))
    fake.chmod(0o755)
    completed = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _RUN_WITH_IT,
         str(tmp_path / "work")],
        env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=SUBPROCESS_DEADLINE_SECONDS, check=False,
    )  # fmt: skip
    assert (completed.returncode, completed.stderr) == (0, "")
    assert completed.stdout == (
        "bwrap ran a build in metasrv's own pid namespace: no build can run safely with it\n"
    )


@pytest.mark.parametrize(
    ("line", "stopped"),
    [
        ("MemoryError", "needed more than 512 MB of memory"),
        ("cc1: out of memory: Cannot allocate memory", "needed more than 512 MB of memory"),
        (
            "BlockingIOError: [Errno 11] Resource temporarily unavailable",
            "started more than 24 processes",
        ),
        ("make: vfork: Resource temporarily unavailable", "started more than 24 processes"),
        ("error: something else", None),
    ],
)
def test_a_failed_command_s_last_words_say_which_limit_stopped_it(
    folders: Folders, line: str, stopped: str | None
) -> None:
    outcome = sandboxed(folders, f"echo '{line}'; exit 1")
    assert (outcome.returncode, outcome.stopped) == (1, stopped)


def test_a_command_that_ignores_the_file_size_signal_is_still_stopped_for_its_output(
    folders: Folders,
) -> None:
    outcome = sandboxed(folders, "trap '' XFSZ; head -c 3000000 /dev/zero; exit 1")
    assert outcome.stopped == "printed more than 1 MB"
    assert folders.log.stat().st_size == 1024**2


def test_a_log_that_is_not_utf_8_is_read_with_replacements(folders: Folders) -> None:
    outcome = sandboxed(folders, "printf 'caf\\351 ok\\n'")
    assert outcome.log_tail == "caf\ufffd ok\n"


def test_the_sandbox_changes_no_mode_of_the_host_folders_it_binds(folders: Folders) -> None:
    inner = folders.writable / "private"
    (inner / "shared").mkdir(parents=True)
    (inner / "shared" / "note.txt").write_text("nested\n")
    folders.writable.chmod(0o700)
    inner.chmod(0o700)
    outcome = run_sandboxed(
        ["/bin/sh", "-c", f"cat {inner / 'shared' / 'note.txt'}"],
        cwd=folders.writable,
        writable=[folders.writable],
        readable=[inner / "shared"],
        environment=ENVIRONMENT,
        limits=LIMITS,
        log_path=folders.log,
    )
    assert outcome.log_tail == "nested\n"
    assert folders.writable.stat().st_mode & 0o777 == 0o700
    assert inner.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root metasrv hands folders to nobody")
def test_a_link_a_command_left_in_its_folder_does_not_hand_its_target_to_nobody(
    folders: Folders,
) -> None:
    first = sandboxed(folders, f"ln -s {folders.secret} link.txt")
    assert first.ok, first.log_tail
    second = sandboxed(folders, "cat link.txt")
    assert "not for the sandbox" not in second.log_tail
    assert (folders.secret.stat().st_uid, folders.secret.stat().st_gid) == (0, 0)
    assert (folders.writable / "link.txt").lstat().st_uid == NOBODY


# Linux keeps credentials per thread; glibc's setresuid changes those of every thread of the
# process, the raw system calls only the caller's. Their numbers per architecture:
_SETGROUPS = {"x86_64": 116, "aarch64": 159}
_SETRESGID = {"x86_64": 119, "aarch64": 149}
_SETRESUID = {"x86_64": 117, "aarch64": 147}
# A user no other process of the machine runs as.
ORDINARY_USER = 54321


def as_ordinary_user(work: Callable[[], Outcome]) -> Outcome:
    """Run ``work`` in a thread that is ORDINARY_USER for good, as a metasrv a user started."""
    outcomes: list[Outcome] = []

    def become_user_and_work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        machine = platform.machine()
        for number, arguments in [
            (_SETGROUPS[machine], (0, None)),
            (_SETRESGID[machine], (ORDINARY_USER,) * 3),
            (_SETRESUID[machine], (ORDINARY_USER,) * 3),
        ]:
            if libc.syscall(number, *arguments) != 0:
                raise OSError(ctypes.get_errno(), f"system call {number} failed")
        outcomes.append(work())

    thread = BoundedThread(become_user_and_work, "metasrv as an ordinary user")
    thread.start()
    thread.join()
    return outcomes[0]


@pytest.mark.skipif(
    os.geteuid() != 0 or platform.machine() not in _SETRESUID,
    reason="becoming an ordinary user in one thread needs root and a known architecture",
)
def test_a_metasrv_run_by_a_user_gives_a_command_its_processes_on_top_of_the_user_s() -> None:
    # RLIMIT_NPROC counts every process of the user: a build may start limits.processes more.
    home = Path(tempfile.mkdtemp(prefix="metasrv-user-"))
    try:
        (home / "work").mkdir()
        (home / "given").mkdir()
        for path in (home, home / "work", home / "given"):
            os.chown(path, ORDINARY_USER, ORDINARY_USER)

        def sandbox_beside_two_processes() -> Outcome:
            running = [subprocess.Popen(["sleep", f"4848.{number}"]) for number in (1, 2)]
            try:
                return run_sandboxed(
                    ["/bin/sh", "-c", "echo made > made.txt; id -u; cat /proc/self/limits"],
                    cwd=home / "work",
                    writable=[home / "work"],
                    readable=[home / "given"],
                    environment=ENVIRONMENT,
                    limits=LIMITS,
                    log_path=home / "command.log",
                )
            finally:
                for process in running:
                    process.kill()
                    process.wait(SUBPROCESS_DEADLINE_SECONDS)

        outcome = as_ordinary_user(sandbox_beside_two_processes)
        assert outcome.ok, outcome.log_tail
        # The command runs as the user, and what it writes stays the user's.
        uid, *limits = outcome.log_tail.splitlines()
        assert uid == str(ORDINARY_USER)
        assert (home / "work" / "made.txt").stat().st_uid == ORDINARY_USER
        processes = next(line for line in limits if line.startswith("Max processes"))
        assert processes.split()[2:4] == [str(2 + LIMITS.processes)] * 2
    finally:
        shutil.rmtree(home)
