"""Run untrusted build code with bubblewrap: no network, few paths, hard resource limits."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from metasrv.errors import InvalidInput

# The uid and gid a sandbox runs as when metasrv runs as root: RLIMIT_NPROC counts processes per
# user, and root's count (every daemon) is large and, for root, not enforced at all.
NOBODY = 65534
# System folders a Python needs to start; everything else is absent unless bound.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime", "/etc/passwd")
MEGABYTE = 1024 * 1024
NAMESPACE_END_SECONDS = 30.0


class SandboxUnavailable(InvalidInput):
    """bubblewrap is not installed, or does not isolate, so no build can run safely."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one sandboxed command may use before it is stopped."""

    wall_seconds: float = 120.0
    cpu_seconds: int = 120
    memory_bytes: int = 4096 * MEGABYTE
    processes: int = 64
    # The most a build may print, and the largest file it may write (RLIMIT_FSIZE covers both).
    output_bytes: int = 256 * MEGABYTE


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a sandboxed command ended: its exit status, why it was stopped, the end of its log."""

    returncode: int
    stopped: str | None
    log_tail: str

    @property
    def ok(self) -> bool:
        """Return whether the command exited 0 without being stopped."""
        return self.returncode == 0 and self.stopped is None


def find_bubblewrap() -> str:
    """Return the path of ``bwrap``, or raise SandboxUnavailable."""
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is needed to build sdists safely: apt-get install bubblewrap"
        )
    return path


def run_sandboxed(
    command: Sequence[str],
    *,
    cwd: Path,
    writable: Sequence[Path],
    readable: Sequence[Path],
    environment: Mapping[str, str],
    limits: Limits,
    log_path: Path,
) -> Outcome:
    """Run ``command`` in a fresh sandbox; only ``writable`` and ``readable`` paths are visible."""
    as_root = os.geteuid() == 0
    if as_root:
        for path in writable:
            _give_to_nobody(path)
    info_read, info_write = os.pipe()
    arguments = _bubblewrap_arguments(find_bubblewrap(), cwd, writable, readable)
    arguments[1:1] = ["--info-fd", str(info_write)]
    if as_root:
        # bwrap keeps root's capabilities to build the sandbox; the command itself runs as nobody.
        arguments += ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        arguments += ["--inh-caps=-all", "--no-new-privs", "--"]
    arguments += list(command)
    processes = limits.processes if as_root else _own_process_count() + limits.processes
    rlimits = _rlimits(limits, processes)

    def set_limits() -> None:
        # In the child between fork and exec: system calls only, their values made beforehand.
        for which, pair in rlimits:
            resource.setrlimit(which, pair)

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(environment),
            start_new_session=True,
            pass_fds=(info_write,),
            preexec_fn=set_limits,  # noqa: PLW1509
        )
        os.close(info_write)
        namespace = _pid_namespace(info_read)
        try:
            returncode = process.wait(timeout=limits.wall_seconds)
            stopped = None
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait()
            stopped = f"timed out after {limits.wall_seconds:g} s"
        finally:
            # The sandbox's pid 1 dies with bwrap, and the kernel then kills every process of
            # its pid namespace, however many it forked; that happens after bwrap is reaped.
            if namespace is not None:
                _end_namespace(namespace)
    stopped = stopped or _stopped_by_limit(returncode, limits, log_path)
    return Outcome(returncode, stopped, _tail(log_path))


def _pid_namespace(info_fd: int) -> str | None:
    """Return the pid namespace of the sandbox from bwrap's --info-fd JSON ({"child-pid": N})."""
    data = b""
    with os.fdopen(info_fd, "rb") as info:
        while chunk := info.read1(4096):
            data += chunk
            try:
                child_pid = json.loads(data)["child-pid"]
            except ValueError:
                continue
            try:
                return os.readlink(f"/proc/{child_pid}/ns/pid")
            except OSError:
                return None
    return None


def _namespace_members(namespace: str) -> list[int]:
    """Return the live processes of a pid namespace (a zombie waits for init, harmlessly)."""
    # Never mutated, and never metasrv's own namespace: a sandbox that shared it (bwrap given
    # no --unshare-pid) would have _end_namespace kill every process of the host.
    if namespace == os.readlink("/proc/self/ns/pid"):  # pragma: no mutate
        raise SandboxUnavailable(  # pragma: no mutate
            "bwrap ran a build in metasrv's own pid namespace: no build can run safely with it"
        )
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # Never mutated: a mutant that counts other processes in would have
                # _end_namespace kill every process of the host.
                inside = os.readlink(entry / "ns" / "pid") == namespace  # pragma: no mutate
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if inside and state != "Z":  # pragma: no mutate
                members.append(int(entry.name))
    return members


def _end_namespace(namespace: str) -> None:
    """Kill what is left of a sandbox's pid namespace and wait until nothing is."""
    deadline = time.monotonic() + NAMESPACE_END_SECONDS
    while members := _namespace_members(namespace):
        if time.monotonic() > deadline:
            raise SandboxUnavailable(f"sandbox processes {members} outlived their sandbox")
        for pid in members:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _bubblewrap_arguments(
    bwrap: str, cwd: Path, writable: Sequence[Path], readable: Sequence[Path]
) -> list[str]:
    arguments = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    arguments += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    for system_path in SYSTEM_PATHS:
        if os.path.islink(system_path):
            arguments += ["--symlink", os.readlink(system_path), system_path]
        elif os.path.isdir(system_path):
            arguments += ["--ro-bind", system_path, system_path]
    for system_file in SYSTEM_FILES:
        arguments += ["--ro-bind-try", system_file, system_file]
    # Sticky and world-writable, as on the host: the command may run as nobody (TMPDIR=/tmp).
    arguments += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    mounts = [str(path.resolve()) for path in readable] + [str(p.resolve()) for p in writable]
    for path in readable:
        arguments += ["--ro-bind", str(path.resolve()), str(path.resolve())]
    for path in writable:
        arguments += ["--bind", str(path.resolve()), str(path.resolve())]
    # bwrap creates the folders above a mount point with the modes of the originals (/root is
    # 0700) or 0700 (/etc); a sandbox that runs as nobody must be able to walk down to what it
    # was given, /etc/passwd among it.
    system_files = [path for path in SYSTEM_FILES if os.path.exists(path)]
    for ancestor in sorted(_ancestors([*mounts, *system_files])):
        arguments += ["--chmod", "0755", ancestor]
    arguments += ["--chdir", str(cwd.resolve())]
    return arguments


def _ancestors(mounts: Sequence[str]) -> set[str]:
    """Return the folders above mount points that bwrap creates (not under a system path)."""
    ancestors: set[str] = set()
    for mount in mounts:
        for parent in Path(mount).parents:
            text = str(parent)
            if text in ("/", "/tmp") or text.startswith(SYSTEM_PATHS):
                continue
            if not any(text == m or text.startswith(m + "/") for m in mounts):
                ancestors.add(text)
    return ancestors


def _give_to_nobody(path: Path) -> None:
    for folder, _folders, files in os.walk(path):
        os.chown(folder, NOBODY, NOBODY)
        for name in files:
            os.chown(os.path.join(folder, name), NOBODY, NOBODY, follow_symlinks=False)


def _own_process_count() -> int:
    """Return how many processes this user runs: RLIMIT_NPROC counts them all."""
    uid = str(os.getuid())
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
            count += uid_line.split()[1:2] == [uid]
    return count


def _rlimits(limits: Limits, processes: int) -> list[tuple[int, tuple[int, int]]]:
    """Return the resource limits bwrap starts under; the sandbox inherits them."""
    cpu = limits.cpu_seconds
    return [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),
        (resource.RLIMIT_NPROC, (processes, processes)),
        (resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]


def _stopped_by_limit(returncode: int, limits: Limits, log_path: Path) -> str | None:
    """Return which limit stopped a command, from its exit status and its log."""
    # bwrap's pid 1 exits 128 + N when the command died of signal N.
    signal_number = -returncode if returncode < 0 else returncode - 128
    if signal_number == signal.SIGXCPU:
        return f"used more than {limits.cpu_seconds} s of CPU"
    if signal_number == signal.SIGXFSZ or log_path.stat().st_size >= limits.output_bytes:
        if log_path.stat().st_size >= limits.output_bytes:
            return f"printed more than {limits.output_bytes // MEGABYTE} MB"
        return f"wrote a file larger than {limits.output_bytes // MEGABYTE} MB"
    tail = _tail(log_path)
    if "MemoryError" in tail or "Cannot allocate memory" in tail:
        return f"needed more than {limits.memory_bytes // MEGABYTE} MB of memory"
    if "BlockingIOError: [Errno 11]" in tail or "Resource temporarily unavailable" in tail:
        return f"started more than {limits.processes} processes"
    return None


def _tail(log_path: Path, size: int = 16 * 1024) -> str:
    with log_path.open("rb") as log:
        log.seek(max(0, log_path.stat().st_size - size))
        return log.read().decode("utf-8", "replace")
