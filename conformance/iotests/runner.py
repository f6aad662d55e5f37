"""``blocktxn iotests``: run QEMU's own iotests, unmodified, against the emulator (or any QEMU).

    blocktxn iotests --qemu-src DIR [--qemu BIN] [--tools-dir DIR] [--timeout S] [--keep]
                     [check options and tests ...]

DIR is a QEMU source tree (or the part of one that holds ``VERSION``, ``python/`` and
``tests/qemu-iotests/``).  Its ``check`` runs from a scratch build folder in which
``build/tests/qemu-iotests/check`` is a symlink to DIR's ``check``: ``testenv.py`` then treats DIR
as the source tree and the scratch folder as the build root, so nothing is written into DIR.

QEMU_PROG is the emulator, in the profile of DIR's ``VERSION`` (``BLOCKTXN_QEMU_VERSION``), unless
``--qemu`` names another binary.  QEMU_IMG_PROG, QEMU_IO_PROG, QEMU_NBD_PROG and QSD_PROG must be
the real tools of that same version: the emulator stands in for qemu-system only.  check runs in
its own session; whatever is left of that session afterwards (a VM whose test's setUp failed
after launch) is killed, and the whole run is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT = 1800.0
FORMATS = {"-raw", "-bochs", "-cloop", "-parallels", "-qcow", "-qcow2", "-qed", "-vdi", "-vpc",
           "-vhdx", "-vmdk", "-luks", "-dmg", "-file", "-blkdebug", "-nbd", "-fuse", "-ssh", "-nfs"}
#: Environment variable -> (tool file name, what --version prints before the version number).
TOOLS = {
    "QEMU_IMG_PROG": "qemu-img",
    "QEMU_IO_PROG": "qemu-io",
    "QEMU_NBD_PROG": "qemu-nbd",
    "QSD_PROG": "qemu-storage-daemon",
}
SETUP_HINT_10 = "run scripts/setup-qemu-10.sh (it unpacks Debian's QEMU 10.0 packages)"
SETUP_HINT_7 = "install them with `apt-get install qemu-utils qemu-system-x86` (Debian 12 ships 7.2)"


class RunnerError(Exception):
    """A problem found before check starts; the message says what and how to fix it."""


@dataclass
class Source:
    """The QEMU tree whose iotests run."""

    root: Path
    version: str  # "7.2.22"

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def check(self) -> Path:
        return self.root / "tests" / "qemu-iotests" / "check"

    @classmethod
    def load(cls, directory: str) -> Source:
        root = Path(directory).resolve()
        version_file = root / "VERSION"
        if not version_file.is_file():
            raise RunnerError(f"{root}: no VERSION file: --qemu-src must be a QEMU source tree")
        version = version_file.read_text().strip()
        if not re.fullmatch(r"\d+\.\d+\.\d+", version):
            raise RunnerError(f"{version_file}: unexpected version {version!r}")
        source = cls(root, version)
        if not source.check.is_file():
            raise RunnerError(f"{source.check}: missing: --qemu-src has no tests/qemu-iotests/check")
        return source


def default_tools_dir(major_minor: str) -> Path | None:
    """Where this version's real tools live: PATH for 7.2, setup-qemu-10.sh's folder for 10.0."""
    if major_minor == "10.0":
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return Path(cache) / "blocktxn" / "qemu-10.0.2" / "bin"
    return None


def tool_version(path: str) -> str | None:
    """The x.y.z version a QEMU tool prints for --version, or None."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\b(\d+\.\d+\.\d+)\b", out.splitlines()[0] if out else "")
    return match.group(1) if match else None


def find_tools(source: Source, tools_dir: str | None) -> dict[str, str]:
    """Env var -> path of each real tool of the tree's version; RunnerError says what is wrong."""
    directory = Path(tools_dir) if tools_dir else default_tools_dir(source.major_minor)
    hint = ("pass --tools-dir DIR" if tools_dir else
            SETUP_HINT_10 if source.major_minor == "10.0" else SETUP_HINT_7)
    found: dict[str, str] = {}
    problems: list[str] = []
    for var, name in TOOLS.items():
        path = str(directory / name) if directory else shutil.which(name)
        if not path or not os.access(path, os.X_OK):
            problems.append(f"{name} ({var}) not found" + (f" in {directory}" if directory else " on PATH"))
            continue
        version = tool_version(path)
        if version is None or ".".join(version.split(".")[:2]) != source.major_minor:
            problems.append(f"{path} ({var}) is version {version or 'unknown'}, "
                            f"but the iotests are {source.version}")
            continue
        found[var] = path
    if problems:
        raise RunnerError("; ".join(problems) + f": {hint}")
    return found


LAUNCHER = """\
#!{python} -S
# QEMU_PROG for `blocktxn iotests`: hands this process's argv, environment, working directory and
# open file descriptors to the fork server named by $BLOCKTXN_FORKSERVER, which forks a warm
# emulator that takes them over; relays signals to it and exits as it exits.  Without a fork
# server it runs the emulator itself.
import posix, sys
sys.path[1:1] = {paths!r}
server = posix.environ.get(b"BLOCKTXN_FORKSERVER")
if server:
    from conformance.iotests.forkclient import run_via
    run_via(server.decode())
from emulator.__main__ import main
sys.exit(main())
"""


def emulator_launcher(scratch: Path) -> Path:
    """An executable QEMU_PROG that runs the emulator with this interpreter, started fast.

    `python -S` skips `site` (and the .pth files of every installed package, a third of the
    start-up): the launcher puts the repository and the venv's site-packages on sys.path itself.
    Bytecode must already exist, since iotests set PYTHONDONTWRITEBYTECODE: see compile_emulator().
    With BLOCKTXN_FORKSERVER set (see forkserver.py) it only asks a warm process to fork.
    """
    import sysconfig

    compile_emulator()
    paths = [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    launcher = scratch / "qemu-system-x86_64"
    launcher.write_text(LAUNCHER.format(python=sys.executable, paths=sorted(set(paths), key=paths.index)))
    launcher.chmod(0o755)
    return launcher


def compile_emulator() -> None:
    """Write the emulator's bytecode now (quietly; only stale files are rewritten), so that each
    emulator process started under PYTHONDONTWRITEBYTECODE=1 does not compile it again."""
    import compileall

    compileall.compile_dir(str(ROOT / "emulator"), quiet=2)
    for module in ("__init__.py", "iotests/__init__.py", "iotests/forkclient.py"):  # forkclient's imports
        compileall.compile_file(str(ROOT / "conformance" / module), quiet=2)


def has_format(args: Sequence[str]) -> bool:
    return any(arg in FORMATS for arg in args)


@dataclass
class Options:
    source: Source
    qemu: str | None
    tools_dir: str | None
    timeout: float
    keep: bool
    check_args: list[str]
    forkserver: bool = True


def parse(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="blocktxn iotests",
        description="Run QEMU's iotests (unmodified) against the emulator or a given QEMU binary. "
                    "Other arguments go to check (default format -qcow2).")
    parser.add_argument("--qemu-src", required=True, help="QEMU source tree (VERSION, python/, tests/)")
    parser.add_argument("--qemu", help="binary under test instead of the emulator")
    parser.add_argument("--tools-dir", help="folder with qemu-img, qemu-io, qemu-nbd, "
                        "qemu-storage-daemon of the tree's version")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds before the run is killed (default {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--no-forkserver", action="store_true",
                        help="start every emulator from scratch instead of forking a warm one")
    args, rest = parser.parse_known_args(list(argv))
    try:
        source = Source.load(args.qemu_src)
    except RunnerError as exc:
        parser.error(str(exc))
    # check runs in the scratch folder: relative paths given here must not change meaning there
    qemu = os.path.abspath(args.qemu) if args.qemu else None
    tools_dir = os.path.abspath(args.tools_dir) if args.tools_dir else None
    return Options(source, qemu, tools_dir, args.timeout, args.keep, rest,
                   forkserver=not args.no_forkserver)


def build_env(options: Options, scratch: Path, tools: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # testenv.py sets its own
    qemu = options.qemu or str(emulator_launcher(scratch))
    env.update(tools)
    env.update(QEMU_PROG=qemu, PYTHONDONTWRITEBYTECODE="1",
               BLOCKTXN_QEMU_VERSION=options.source.major_minor)
    return env


class ForkServer:
    """conformance/iotests/forkserver.py as a child of the runner, for the runner's lifetime."""

    def __init__(self, scratch: Path) -> None:
        self.path = str(scratch / "forkserver.sock")
        self.proc = subprocess.Popen([sys.executable, "-m", "conformance.iotests.forkserver", self.path],
                                     cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        import select

        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], 30.0)
        ready = self.proc.stdout.readline() if readable else ""
        if ready.strip() != "ready":
            self.stop()
            raise RunnerError("the emulator fork server did not start (see its messages above)")

    def stop(self) -> None:
        """Stop it; it kills any emulator it forked that is still running."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def kill_session(pgid: int, grace: float = 2.0) -> None:
    """SIGTERM what is left of check's session, then SIGKILL after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def run(options: Options) -> int:
    """Run check; return its exit status (124 if the timeout killed it)."""
    tools = find_tools(options.source, options.tools_dir)
    if options.qemu and not os.access(options.qemu, os.X_OK):
        raise RunnerError(f"--qemu {options.qemu}: not an executable file")
    scratch = Path(tempfile.mkdtemp(prefix="blocktxn-iotests-"))
    forkserver: ForkServer | None = None
    try:
        build = scratch / "build" / "tests" / "qemu-iotests"
        build.mkdir(parents=True)
        (build / "check").symlink_to(options.source.check)
        args = list(options.check_args)
        if not has_format(args):
            args.insert(0, "-qcow2")
        env = build_env(options, scratch, tools)
        if options.forkserver and not options.qemu:
            forkserver = ForkServer(scratch)
        if forkserver is not None:
            env["BLOCKTXN_FORKSERVER"] = forkserver.path
        print(f"blocktxn iotests: QEMU {options.source.version} tests in {options.source.root}; "
              f"QEMU_PROG={env['QEMU_PROG']}; scratch {scratch}", flush=True)
        proc = subprocess.Popen([sys.executable, "./check", *args], cwd=build, env=env,
                                start_new_session=True)
        try:
            status = proc.wait(options.timeout)
        except subprocess.TimeoutExpired:
            print(f"blocktxn iotests: check did not finish within {options.timeout:.0f} s; killed",
                  file=sys.stderr, flush=True)
            kill_session(proc.pid)
            proc.wait()
            status = 124
        except KeyboardInterrupt:
            kill_session(proc.pid)
            proc.wait()
            raise
        kill_session(proc.pid)
        return status
    finally:
        if forkserver is not None:
            forkserver.stop()
        if options.keep:
            print(f"blocktxn iotests: scratch folder kept: {scratch}", flush=True)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    """Entry point of ``blocktxn iotests``."""
    options = parse(argv)
    try:
        return run(options)
    except RunnerError as exc:
        print(f"blocktxn iotests: {exc}", file=sys.stderr)
        return 2
