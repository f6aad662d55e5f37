"""Golden logs: normalized sessions recorded from real QEMU, one file per case.

Layout: ``golden/qemu-MAJOR.MINOR/<test module>/<test function>.log``, one golden set per QEMU
version; a target (real QEMU, or an emulator profile) is compared with the set of its version.  A
golden starts with ``#`` comment lines (the exact QEMU version and binary that recorded it)
followed by the normalized log; only the normalized log is compared.  Goldens are written only by
``--update-golden`` against real QEMU.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

#: The repository's golden directory (next to the conformance package).
DEFAULT_GOLDEN_DIR = Path(__file__).resolve().parents[2] / "golden"

RECORD_HINT = "record it from real QEMU with: ./blocktxn record-golden --qemu BIN -k {case}"


def golden_set(root: Path, version: str) -> Path:
    """The folder of the goldens recorded from QEMU `version` (MAJOR.MINOR) under `root`."""
    return root / f"qemu-{version}"


def golden_versions(root: Path) -> list[str]:
    """The versions that have a golden set under `root`, oldest first."""
    found = [path.name.removeprefix("qemu-") for path in root.glob("qemu-*") if path.is_dir()]
    return sorted(found, key=lambda version: tuple(int(part) for part in version.split(".")
                                                   if part.isdigit()))


class GoldenMismatch(AssertionError):
    """The normalized log differs from the golden (message: a unified diff)."""


class GoldenMissing(AssertionError):
    """No golden exists for a case run against a target other than the recording one."""


@dataclass(frozen=True)
class Golden:
    """The golden file of one case."""

    path: Path
    case: str

    @classmethod
    def for_case(cls, root: Path, module: str, function: str) -> Golden:
        return cls(root / module / f"{function}.log", f"{module}/{function}")

    def exists(self) -> bool:
        return self.path.is_file()

    def body(self) -> str:
        """The compared part: the file without its leading comment lines."""
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        index = 0
        while index < len(lines) and lines[index].startswith("#"):
            index += 1
        return "".join(lines[index:])

    def header(self) -> list[str]:
        if not self.exists():
            return []
        return [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.startswith("#")]

    def write(self, normalized: str, recorded_with: str) -> bool:
        """Store a new recording; returns True when the compared body changed."""
        changed = not self.exists() or self.body() != normalized
        header = (
            f"# blocktxn golden log for {self.case}\n"
            f"# recorded from: {recorded_with}\n"
            "# written by `blocktxn record-golden`; do not edit by hand\n"
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(header + normalized, encoding="utf-8")
        return changed

    def check(self, normalized: str) -> None:
        """Raise GoldenMissing or GoldenMismatch unless `normalized` equals the golden body."""
        if not self.exists():
            raise GoldenMissing(
                f"no golden log {self.path}; " + RECORD_HINT.format(case=self.case.split("/")[-1])
            )
        expected = self.body()
        if expected == normalized:
            return
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            normalized.splitlines(keepends=True),
            fromfile=f"golden/{self.case}.log",
            tofile="actual",
        )
        recorded = " ".join(line.lstrip("# ") for line in self.header() if "recorded from" in line)
        raise GoldenMismatch(
            f"normalized log differs from {self.path} ({recorded}):\n" + "".join(diff)
        )
