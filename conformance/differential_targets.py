"""Which real QEMU the fuzzers compare against, and the emulator profile that matches it.

`FuzzProfile.find` locates qemu-system-x86_64 (``--qemu BIN``), qemu-img and qemu-io (explicit
paths, else beside BIN, else PATH) and reads ``MAJOR.MINOR`` from ``BIN --version``.

* A QEMU unpacked from a distribution package (``X/usr/bin/qemu-system-x86_64`` with its modules
  in ``X/usr/lib/x86_64-linux-gnu/qemu``) only finds its modules through ``QEMU_MODULE_DIR``;
  the reference target gets it in its environment (qemu-img and qemu-io need no module for
  qcow2, raw, file and blkdebug).
* The emulator is told which QEMU to behave like through the environment variable
  ``BLOCKTXN_QEMU_VERSION=MAJOR.MINOR`` and, once the emulator accepts it, the command-line
  option ``-blocktxn-version MAJOR.MINOR`` (``use_option``: ``blocktxn fuzz
  --emulator-version-option`` or ``BLOCKTXN_FUZZ_VERSION_OPTION=1``; an emulator without the
  option refuses to start with it).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from conformance.targets import (
    EmulatorTarget,
    Instance,
    ProcessInstance,
    QemuBinaries,
    QemuTarget,
    Target,
    machine_argv,
)

VERSION_ENV = "BLOCKTXN_QEMU_VERSION"
VERSION_OPTION = "-blocktxn-version"
#: Switch the command-line option on without a flag (once the emulator has it).
OPTION_ENV = "BLOCKTXN_FUZZ_VERSION_OPTION"
MODULE_SUBDIR = Path("usr/lib/x86_64-linux-gnu/qemu")

Version = tuple[int, int]


def parse_version(text: str | None) -> Version | None:
    """(MAJOR, MINOR) of a ``QEMU emulator version 10.0.2 (...)`` line."""
    found = re.search(r"version (\d+)\.(\d+)", text or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def module_dir_for(binary: str | None) -> str | None:
    """The module directory of an unpacked package's binary (X/usr/bin/NAME), if it exists."""
    if not binary:
        return None
    path = Path(binary).resolve()
    if path.parent.name != "bin" or path.parent.parent.name != "usr":
        return None
    root = path.parent.parent.parent
    if root == Path("/"):
        return None  # an installed QEMU finds its own modules
    modules = root / MODULE_SUBDIR
    return str(modules) if modules.is_dir() else None


def _beside(system: str | None, name: str) -> str | None:
    if system is None:
        return None
    candidate = Path(system).parent / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def option_wanted() -> bool:
    return os.environ.get(OPTION_ENV, "") == "1"


@dataclass(frozen=True)
class FuzzProfile:
    """Real QEMU's programs and version, and how the emulator is told to match it."""

    binaries: QemuBinaries
    version: Version | None
    module_dir: str | None = None
    use_option: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def find(cls, qemu: str | None = None, qemu_img: str | None = None, qemu_io: str | None = None,
             *, use_option: bool | None = None) -> FuzzProfile:
        """Locate the programs (this process's environment is left alone: only the reference
        QEMU gets QEMU_MODULE_DIR; qemu-img, qemu-io and ``--version`` need no module)."""
        system = shutil.which(qemu or "qemu-system-x86_64")
        module_dir = module_dir_for(system)
        env = {"QEMU_MODULE_DIR": module_dir} if module_dir else {}
        binaries = QemuBinaries.find(system or qemu, qemu_img or _beside(system, "qemu-img"),
                                     qemu_io or _beside(system, "qemu-io"))
        return cls(binaries, parse_version(binaries.version), module_dir,
                   option_wanted() if use_option is None else use_option, env)

    @property
    def version_text(self) -> str | None:
        return f"{self.version[0]}.{self.version[1]}" if self.version else None

    def reference(self) -> Target:
        return ReferenceQemuTarget(self.binaries, self.env)

    def candidate(self, kind: str = "emulator") -> Target:
        if kind == "qemu":
            return self.reference()
        return ProfiledEmulatorTarget(self.version_text, use_option=self.use_option)

    def emulator_env(self) -> dict[str, str]:
        """The environment variable that tells the emulator which QEMU to be."""
        return {VERSION_ENV: self.version_text} if self.version_text else {}


class ReferenceQemuTarget(QemuTarget):
    """Real QEMU, with QEMU_MODULE_DIR when its modules are beside it."""

    def __init__(self, binaries: QemuBinaries, env: dict[str, str]) -> None:
        super().__init__(binaries)
        self.env = env

    def start(self, socket_path: Path, workdir: Path, extra_argv: list[str]) -> Instance:
        if not self.env:
            return super().start(socket_path, workdir, extra_argv)
        prefix = ["stdbuf", "-o0", "-e0"] if shutil.which("stdbuf") else []
        argv = [*prefix, str(self.binaries.system), *machine_argv(socket_path, extra_argv)]
        return ProcessInstance(argv, socket_path, workdir, env={**os.environ, **self.env})


class ProfiledEmulatorTarget(EmulatorTarget):
    """The emulator told to behave like QEMU `version` (env, and the option when `use_option`)."""

    def __init__(self, version: str | None, *, use_option: bool = False,
                 separate_process: bool = False) -> None:
        super().__init__(separate_process=separate_process)
        self.version = version
        self.use_option = use_option

    def start(self, socket_path: Path, workdir: Path, extra_argv: list[str]) -> Instance:
        if self.version is None:
            return super().start(socket_path, workdir, extra_argv)
        # The in-process emulator reads this process's environment as it starts, a separate one
        # inherits it; it is restored afterwards so that no other target sees it.
        previous = os.environ.get(VERSION_ENV)
        os.environ[VERSION_ENV] = self.version
        try:
            extra = [VERSION_OPTION, self.version, *extra_argv] if self.use_option else extra_argv
            return super().start(socket_path, workdir, extra)
        finally:
            if previous is None:
                del os.environ[VERSION_ENV]
            else:
                os.environ[VERSION_ENV] = previous
