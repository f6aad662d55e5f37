"""What a case can run against: a real QEMU binary of some version, or the blocktxn emulator in
one of its version profiles.

A target is named ``KIND@MAJOR.MINOR`` (``emulator@7.2``, ``qemu@10.0``); the version picks the
golden set it is compared with (``golden/qemu-MAJOR.MINOR``).  A Target knows how to start one
instance with a QEMU-like command line (``-M none -nodefaults -display none -qmp
unix:SOCK,server=on,wait=off [-drive ...]``) and which image tools go with it.  A started instance
(Instance) exposes the QMP socket path, the text it printed on stdout (HMP qemu-io output goes
there) and on stderr, and a way to stop it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from conformance.imagetools import EmulatorImageTools, ImageTools, QemuImageTools

INSTALL_HINT = "apt-get update && apt-get install qemu-system-x86 qemu-utils"
TARGET_KINDS = ("emulator", "qemu")
#: The QEMU versions the emulator has a profile for (its ``-blocktxn-version``), oldest first.
EMULATOR_VERSIONS = ("7.2", "10.0")
#: Where Debian's packages put QEMU's loadable modules, relative to the folder holding usr/.
MODULE_SUBDIR = Path("usr/lib/x86_64-linux-gnu/qemu")
_VERSION_LINE = re.compile(r"version (\d+)\.(\d+)(?:\.(\d+))?")


def parse_target(spec: str) -> tuple[str, str | None]:
    """``emulator``, ``emulator@7.2``, ``qemu``, ``qemu@10.0`` -> (kind, version or None)."""
    kind, _, version = spec.partition("@")
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target {spec!r}: use emulator[@VERSION] or qemu[@VERSION]")
    if _ and not re.fullmatch(r"\d+\.\d+", version):
        raise ValueError(f"target {spec!r}: the version is MAJOR.MINOR, e.g. {kind}@10.0")
    return kind, version or None


def major_minor(version_line: str | None) -> str | None:
    """"QEMU emulator version 10.0.2 (Debian ...)" -> "10.0" (None when it is no QEMU version)."""
    match = _VERSION_LINE.search(version_line or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


class MonitorSocket:
    """The QMP monitor's socket, made by the harness before the target starts, as QEMU's own
    QEMUMachine does: the target inherits it (``-chardev socket,id=mon,fd=N``), so a client
    never polls for a socket file or retries a connection made while the target starts up.

    ``MonitorSocket.pair()``: a connected socket pair; the harness talks on `client`.
    ``MonitorSocket.listen(path)``: a listening socket at `path` the target accepts on
    (``server=on``), for clients that open many connections; they may connect at once, and
    their greeting comes when the target is ready."""

    def __init__(self, target_end: socket.socket, listening: bool,
                 client: socket.socket | None = None) -> None:
        self.target_end = target_end
        self.listening = listening
        self.client = client

    @classmethod
    def pair(cls) -> MonitorSocket:
        client, target_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(target_end, listening=False, client=client)

    @classmethod
    def listen(cls, path: Path) -> MonitorSocket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(16)
        return cls(listener, listening=True)

    def argv(self) -> list[str]:
        server = ",server=on,wait=off" if self.listening else ""
        return ["-chardev", f"socket,id=mon,fd={self.target_end.fileno()}{server}",
                "-mon", "chardev=mon,mode=control"]

    def close(self) -> None:
        """Close the harness's copies (the target keeps what it inherited)."""
        for sock in (self.target_end, self.client):
            if sock is not None:
                sock.close()


def machine_argv(monitor: MonitorSocket, extra: list[str]) -> list[str]:
    """The QEMU-like arguments (without the binary) every case starts its target with."""
    return ["-M", "none", "-nodefaults", "-display", "none", *monitor.argv(), *extra]


class QemuNotUsable(Exception):
    """A binary the user named does not start as QEMU (message: what it printed)."""


@dataclass(frozen=True)
class QemuBinaries:
    """Paths of one real QEMU's programs, and the version line of its qemu-system-x86_64.

    ``module_dir`` is set for a QEMU unpacked beside the system's (``X/usr/bin/qemu-system-x86_64``
    with its modules in ``X/usr/lib/x86_64-linux-gnu/qemu``, as scripts/setup-qemu-10.sh leaves it):
    such a binary must run with QEMU_MODULE_DIR, or it loads the system QEMU's modules."""

    system: str | None
    img: str | None
    io: str | None
    version: str | None
    module_dir: str | None = None

    @property
    def complete(self) -> bool:
        return bool(self.system and self.img and self.io and self.version)

    @property
    def major_minor(self) -> str | None:
        return major_minor(self.version)

    def missing(self) -> list[str]:
        names = {"qemu-system-x86_64": self.system, "qemu-img": self.img, "qemu-io": self.io}
        return [name for name, path in names.items() if not path]

    def env(self) -> dict[str, str] | None:
        """The environment to run these programs with (None: inherit this process's)."""
        if not self.module_dir:
            return None
        return {**os.environ, "QEMU_MODULE_DIR": self.module_dir}

    @staticmethod
    def _beside(system: str, name: str) -> str | None:
        candidate = Path(system).parent / name
        return str(candidate) if os.access(candidate, os.X_OK) else None

    @classmethod
    def find(cls, system: str | None = None, img: str | None = None,
             io: str | None = None) -> QemuBinaries:
        """Locate the binaries and read the version: explicit paths first, then the tools beside
        an explicit qemu-system-x86_64, then PATH."""
        found_system = shutil.which(system or "qemu-system-x86_64")
        found_img = shutil.which(img) if img else None
        found_io = shutil.which(io) if io else None
        module_dir = None
        if found_system:
            if system:  # the image tools of the same build sit beside the binary
                found_img = found_img or cls._beside(found_system, "qemu-img")
                found_io = found_io or cls._beside(found_system, "qemu-io")
            bindir = Path(found_system).resolve().parent  # X/usr/bin, with X other than /
            if bindir.name == "bin" and bindir.parent.name == "usr" and bindir.parent.parent != Path("/") \
                    and (bindir.parent.parent / MODULE_SUBDIR).is_dir():
                module_dir = str(bindir.parent.parent / MODULE_SUBDIR)
        found_img = found_img or (None if img else shutil.which("qemu-img"))
        found_io = found_io or (None if io else shutil.which("qemu-io"))
        version = None
        if found_system:
            env = {**os.environ, "QEMU_MODULE_DIR": module_dir} if module_dir else None
            try:
                done = subprocess.run([found_system, "--version"], capture_output=True, text=True,
                                      timeout=30, check=False, env=env)
                first = done.stdout.splitlines()[0].strip() if done.stdout else ""
                version = first if done.returncode == 0 and major_minor(first) else None
            except (OSError, subprocess.TimeoutExpired):
                version = None
        return cls(found_system, found_img, found_io, version, module_dir)

    @classmethod
    def named(cls, system: str, img: str | None = None, io: str | None = None) -> QemuBinaries:
        """The QEMU at a path the user named: raise QemuNotUsable unless it starts as QEMU."""
        binaries = cls.find(system, img, io)
        if not binaries.system:
            raise QemuNotUsable(f"--qemu {system}: no such executable")
        if not binaries.version:
            try:
                done = subprocess.run([binaries.system, "--version"], capture_output=True, text=True,
                                      timeout=30, check=False, env=binaries.env())
                said = (done.stdout + done.stderr).strip() or "(nothing)"
                status = f"exit status {done.returncode}"
            except (OSError, subprocess.TimeoutExpired) as exc:
                said, status = str(exc), "did not run"
            raise QemuNotUsable(f"--qemu {system}: `{binaries.system} --version` does not print a "
                                f"QEMU version ({status}); it printed: {said}")
        if not binaries.complete:
            raise QemuNotUsable(f"--qemu {system} ({binaries.version}): "
                                f"{', '.join(binaries.missing())} not found beside it or on PATH; "
                                "name them with --qemu-img and --qemu-io")
        return binaries


class Instance(ABC):
    """One running target."""

    def __init__(self, stdout_path: Path, stderr_path: Path) -> None:
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self._stdout_offset = 0

    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    def exit_status(self) -> int | None:
        """The exit status once stopped (None while running or when there is none)."""

    @abstractmethod
    def wait(self, timeout: float) -> bool:
        """Wait for the instance to exit by itself; True if it did within `timeout`."""

    @abstractmethod
    def kill(self) -> None:
        """Stop the instance now (teardown, or after a failed wait)."""

    def _flush_stdout(self) -> None:
        """Make everything printed so far visible in stdout_path."""

    def read_new_stdout(self) -> str:
        """Text printed on stdout since the previous call."""
        self._flush_stdout()
        try:
            # Asked after every command, and there is seldom anything new: the size says so
            # without opening the file.
            if os.stat(self.stdout_path).st_size <= self._stdout_offset:
                return ""
            with open(self.stdout_path, "rb") as stream:
                stream.seek(self._stdout_offset)
                data = stream.read()
        except FileNotFoundError:
            return ""
        self._stdout_offset += len(data)
        return data.decode("utf-8", errors="replace")

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


class ProcessInstance(Instance):
    """A target running as a child process (real QEMU, or ``python -m emulator``)."""

    def __init__(self, argv: list[str], monitor: MonitorSocket, workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(workdir / "target.stdout", workdir / "target.stderr")
        self.argv = argv
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, env=env,
                                            pass_fds=(monitor.target_end.fileno(),))
        monitor.target_end.close()  # the child has its own copy

    def alive(self) -> bool:
        return self.process.poll() is None

    def exit_status(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float) -> bool:
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:  # qsd-style hangs ignore SIGTERM
                self.process.kill()
                self.process.wait(5)


class _LogCapture(logging.Handler):
    """Copies the emulator's log records into the instance's stderr file."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write(self.format(record) + "\n")
        self.stream.flush()


class EmbeddedInstance(Instance):
    """The emulator running inside this Python process (emulator.launcher.EmbeddedEmulator)."""

    def __init__(self, argv: list[str], monitor: MonitorSocket, workdir: Path) -> None:
        super().__init__(workdir / "target.stdout", workdir / "target.stderr")
        from emulator.launcher import EmbeddedEmulator

        fd = monitor.target_end.detach()  # the emulator owns the descriptor from here on

        self._stdout = open(self.stdout_path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._stderr = open(self.stderr_path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._log = _LogCapture(self._stderr)
        logging.getLogger("emulator").addHandler(self._log)
        self._lock = threading.Lock()
        self._stopped = False
        self.emulator: Any = EmbeddedEmulator(argv, stdout=self._stdout)
        try:
            self.emulator.start()
        except BaseException:
            self._close_files()
            with contextlib.suppress(OSError):
                os.close(fd)  # it never got as far as taking the monitor
            raise

    def _flush_stdout(self) -> None:
        if not self._stdout.closed:
            self._stdout.flush()

    def alive(self) -> bool:
        if self._stopped:
            return False
        probe = getattr(self.emulator, "is_running", None)
        if callable(probe):
            return bool(probe())
        return True

    def exit_status(self) -> int | None:
        return 0 if self._stopped else None

    def wait(self, timeout: float) -> bool:
        """The embedded emulator ends when quit: stop() joins its thread."""
        with self._lock:
            if not self._stopped:
                self.emulator.stop(timeout=timeout)
                self._stopped = True
        self._close_files()
        return True

    def kill(self) -> None:
        try:
            self.wait(10.0)
        finally:
            self._close_files()

    def _close_files(self) -> None:
        logging.getLogger("emulator").removeHandler(self._log)
        for stream in (self._stdout, self._stderr):
            if not stream.closed:
                stream.close()


class Target(ABC):
    """A kind of target at one QEMU version: how to start it and which image tools go with it."""

    kind: str
    #: MAJOR.MINOR of the QEMU it is (or emulates); picks the golden set.
    version: str

    @property
    def name(self) -> str:
        """The target's id in test ids, reports and dumps: ``KIND@MAJOR.MINOR``."""
        return f"{self.kind}@{self.version}"

    @abstractmethod
    def start(self, monitor: MonitorSocket, workdir: Path, extra_argv: list[str]) -> Instance:
        """Start with `monitor` as its QMP monitor (the instance takes the target's end)."""

    @abstractmethod
    def tools(self, workdir: Path) -> ImageTools: ...

    @abstractmethod
    def describe(self) -> str:
        """The version text recorded in golden headers and the terminal summary."""


class QemuTarget(Target):
    """Real qemu-system-x86_64 under ``stdbuf -o0 -e0`` so that HMP qemu-io output is unbuffered."""

    kind = "qemu"

    def __init__(self, binaries: QemuBinaries) -> None:
        if not binaries.complete or not binaries.major_minor:
            raise ValueError(f"QEMU not found ({', '.join(binaries.missing())}): {INSTALL_HINT}")
        self.binaries = binaries
        self.version = binaries.major_minor

    def start(self, monitor: MonitorSocket, workdir: Path, extra_argv: list[str]) -> Instance:
        prefix = ["stdbuf", "-o0", "-e0"] if shutil.which("stdbuf") else []
        argv = [*prefix, str(self.binaries.system), *machine_argv(monitor, extra_argv)]
        return ProcessInstance(argv, monitor, workdir, self.binaries.env())

    def tools(self, workdir: Path) -> ImageTools:
        return QemuImageTools(str(self.binaries.img), str(self.binaries.io), cwd=workdir,
                              env=self.binaries.env())

    def describe(self) -> str:
        return f"{self.binaries.version}, binary {self.binaries.system}"


class EmulatorTarget(Target):
    """The blocktxn emulator in one version profile, in-process by default or as
    ``python -m emulator``; the profile is chosen with ``-blocktxn-version``."""

    kind = "emulator"

    def __init__(self, version: str = EMULATOR_VERSIONS[-1], *, separate_process: bool = False) -> None:
        if version not in EMULATOR_VERSIONS:
            raise ValueError(f"the emulator has no QEMU {version} profile; it has "
                             f"{', '.join(EMULATOR_VERSIONS)}")
        self.version = version
        self.separate_process = separate_process

    def start(self, monitor: MonitorSocket, workdir: Path, extra_argv: list[str]) -> Instance:
        argv = ["-blocktxn-version", self.version, *machine_argv(monitor, extra_argv)]
        if not self.separate_process:
            return EmbeddedInstance(argv, monitor, workdir)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return ProcessInstance([sys.executable, "-m", "emulator", *argv], monitor, workdir, env)

    def tools(self, workdir: Path) -> ImageTools:
        return EmulatorImageTools(cwd=workdir, version=self.version)

    def describe(self) -> str:
        mode = "separate process" if self.separate_process else "in-process"
        return f"blocktxn emulator ({mode}) in its QEMU {self.version} profile"
