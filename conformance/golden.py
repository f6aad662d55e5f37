"""Golden logs: normalized sessions recorded from real QEMU, one file per case.

Layout: ``golden/<test module>/<test function>.log``.  A golden starts with ``#`` comment lines
(what recorded it, with the exact QEMU version) followed by the normalized log; only the
normalized log is compared.  Goldens are written only by ``--update-golden`` against real QEMU.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

#: The repository's golden directory (next to the conformance package).
DEFAULT_GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"

RECORD_HINT = "record it from real QEMU with: blocktxn record-golden -k {case}"


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
