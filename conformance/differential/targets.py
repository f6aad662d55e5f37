"""Which real QEMU the differential fuzzer compares against, and the emulator profile that matches it.

`FuzzProfile.find` locates qemu-system-x86_64 (``--qemu BIN``) and its qemu-img and qemu-io as
conformance.targets.QemuBinaries does (explicit paths, else beside BIN, else PATH; QEMU_MODULE_DIR
for a QEMU unpacked beside the system's), and reads ``MAJOR.MINOR`` from ``BIN --version``.  The
emulator is started in the profile of that version (``-blocktxn-version MAJOR.MINOR``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conformance.targets import EMULATOR_VERSIONS, EmulatorTarget, QemuBinaries, QemuTarget, Target

Version = tuple[int, int]


def parse_version(text: str | None) -> Version | None:
    """(MAJOR, MINOR) of a ``QEMU emulator version 10.0.2 (...)`` line."""
    found = re.search(r"version (\d+)\.(\d+)", text or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


@dataclass(frozen=True)
class FuzzProfile:
    """Real QEMU's programs and version, and the emulator profile that matches it."""

    binaries: QemuBinaries
    version: Version | None

    @classmethod
    def find(cls, qemu: str | None = None, qemu_img: str | None = None,
             qemu_io: str | None = None) -> FuzzProfile:
        binaries = QemuBinaries.find(qemu, qemu_img, qemu_io)
        return cls(binaries, parse_version(binaries.version))

    @property
    def version_text(self) -> str | None:
        return f"{self.version[0]}.{self.version[1]}" if self.version else None

    @property
    def emulator_version(self) -> str:
        """The emulator profile to compare with: the reference's version (newest when it has none)."""
        text = self.version_text
        return text if text in EMULATOR_VERSIONS else EMULATOR_VERSIONS[-1]

    def reference(self) -> Target:
        return QemuTarget(self.binaries)

    def candidate(self, kind: str = "emulator") -> Target:
        if kind == "qemu":
            return self.reference()
        return EmulatorTarget(self.emulator_version)
