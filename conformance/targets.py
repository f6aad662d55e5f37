"""The two things a case can run against: real QEMU 7.2 and the blocktxn emulator.

A Target knows how to start one instance with a QEMU-like command line (``-M none -nodefaults
-display none -qmp unix:SOCK,server=on,wait=off [-drive ...]``) and which image tools go with
it.  A started instance (Instance) exposes the QMP socket path, the text it printed on stdout
(HMP qemu-io output goes there) and on stderr, and a way to stop it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from conformance.imagetools import EmulatorImageTools, ImageTools, QemuImageTools

INSTALL_HINT = "apt-get install qemu-system-x86 qemu-utils"
TARGET_NAMES = ("emulator", "qemu")


def machine_argv(socket_path: Path, extra: list[str]) -> list[str]:
    """The QEMU-like arguments (without the binary) every case starts its target with."""
    return ["-M", "none", "-nodefaults", "-display", "none",
            "-qmp", f"unix:{socket_path},server=on,wait=off", *extra]


@dataclass(frozen=True)
class QemuBinaries:
    """Paths of the real QEMU programs, and the version line of qemu-system-x86_64."""

    system: str | None
    img: str | None
    io: str | None
    version: str | None

    @property
    def complete(self) -> bool:
        return bool(self.system and self.img and self.io and self.version)

    def missing(self) -> list[str]:
        names = {"qemu-system-x86_64": self.system, "qemu-img": self.img, "qemu-io": self.io}
        return [name for name, path in names.items() if not path]

    @classmethod
    def find(cls, system: str | None = None, img: str | None = None,
             io: str | None = None) -> QemuBinaries:
        """Locate the binaries (explicit paths first, then PATH) and read the version."""
        found_system = shutil.which(system or "qemu-system-x86_64")
        found_img = shutil.which(img or "qemu-img")
        found_io = shutil.which(io or "qemu-io")
        version = None
        if found_system:
            try:
                done = subprocess.run([found_system, "--version"], capture_output=True, text=True,
                                      timeout=30, check=False)
                version = done.stdout.splitlines()[0].strip() if done.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired, IndexError):
                version = None
        return cls(found_system, found_img, found_io, version)


class Instance(ABC):
    """One running target."""

    def __init__(self, socket_path: Path, stdout_path: Path, stderr_path: Path) -> None:
        self.socket_path = socket_path
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

    def __init__(self, argv: list[str], socket_path: Path, workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(socket_path, workdir / "target.stdout", workdir / "target.stderr")
        self.argv = argv
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, env=env)

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

    def __init__(self, argv: list[str], socket_path: Path, workdir: Path) -> None:
        super().__init__(socket_path, workdir / "target.stdout", workdir / "target.stderr")
        from emulator.launcher import EmbeddedEmulator

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
    """A kind of target: how to start it and which image tools go with it."""

    name: str

    @abstractmethod
    def start(self, socket_path: Path, workdir: Path, extra_argv: list[str]) -> Instance: ...

    @abstractmethod
    def tools(self, workdir: Path) -> ImageTools: ...

    @abstractmethod
    def describe(self) -> str:
        """The version text recorded in golden headers and the terminal summary."""


class QemuTarget(Target):
    """Real qemu-system-x86_64 under ``stdbuf -o0 -e0`` so that HMP qemu-io output is unbuffered."""

    name = "qemu"

    def __init__(self, binaries: QemuBinaries) -> None:
        if not binaries.complete:
            raise ValueError(f"QEMU not found ({', '.join(binaries.missing())}): {INSTALL_HINT}")
        self.binaries = binaries

    def start(self, socket_path: Path, workdir: Path, extra_argv: list[str]) -> Instance:
        prefix = ["stdbuf", "-o0", "-e0"] if shutil.which("stdbuf") else []
        argv = [*prefix, str(self.binaries.system), *machine_argv(socket_path, extra_argv)]
        return ProcessInstance(argv, socket_path, workdir)

    def tools(self, workdir: Path) -> ImageTools:
        return QemuImageTools(str(self.binaries.img), str(self.binaries.io), cwd=workdir)

    def describe(self) -> str:
        return str(self.binaries.version)


class EmulatorTarget(Target):
    """The blocktxn emulator, in-process by default or as ``python -m emulator``."""

    name = "emulator"

    def __init__(self, *, separate_process: bool = False) -> None:
        self.separate_process = separate_process

    def start(self, socket_path: Path, workdir: Path, extra_argv: list[str]) -> Instance:
        argv = machine_argv(socket_path, extra_argv)
        if not self.separate_process:
            return EmbeddedInstance(argv, socket_path, workdir)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return ProcessInstance([sys.executable, "-m", "emulator", *argv], socket_path, workdir, env)

    def tools(self, workdir: Path) -> ImageTools:
        return EmulatorImageTools(cwd=workdir)

    def describe(self) -> str:
        mode = "separate process" if self.separate_process else "in-process"
        try:
            from emulator import QEMU_VERSION

            triple: Any = QEMU_VERSION["qemu"]
            return (f"blocktxn emulator ({mode}) reporting QEMU "
                    f"{triple['major']}.{triple['minor']}.{triple['micro']}")
        except (ImportError, KeyError, TypeError):
            return f"blocktxn emulator ({mode})"
