"""Per-target outcome counts and the terminal summary of a conformance run.

Outcomes are collected from test reports (on the xdist controller too: the target travels in
``report.user_properties``), so the numbers are the same with and without ``-n``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

TARGET_PROPERTY = "blocktxn-target"
UNIT = "unit tests"


class _Writer(Protocol):
    def write_sep(self, sep: str, title: str | None = None, **markup: bool) -> None: ...

    def write_line(self, line: str, **markup: bool) -> None: ...


def target_of(report: Any) -> str:
    for key, value in getattr(report, "user_properties", ()):
        if key == TARGET_PROPERTY:
            return str(value)
    return UNIT


@dataclass
class Tally:
    """Outcome of every test, per target; skip reasons kept for the summary."""

    outcomes: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    skip_reasons: dict[str, str] = field(default_factory=dict)

    def record(self, report: Any) -> None:
        """Fold one phase report into the test's outcome (failed > error > skipped > passed)."""
        target = target_of(report)
        current = self.outcomes[target].get(report.nodeid)
        if report.failed:
            outcome = "failed" if report.when == "call" else "error"
        elif report.skipped:
            outcome = "skipped"
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skip_reasons[report.nodeid] = str(reason).removeprefix("Skipped: ")
        elif report.when == "call":
            outcome = "passed"
        else:
            return
        rank = {"passed": 0, "skipped": 1, "error": 2, "failed": 3}
        if current is None or rank[outcome] > rank[current]:
            self.outcomes[target][report.nodeid] = outcome

    def counts(self, target: str) -> Counter[str]:
        return Counter(self.outcomes.get(target, {}).values())

    def write(self, writer: _Writer, targets: list[str], qemu_version: str | None,
              qemu_hint: str) -> None:
        writer.write_sep("=", "blocktxn conformance summary")
        writer.write_line(f"targets: {', '.join(targets)}")
        if qemu_version:
            writer.write_line(f"QEMU: {qemu_version}")
        else:
            writer.write_line(f"QEMU: not found: {qemu_hint}", yellow=True)
        for target in [*targets, UNIT]:
            counts = self.counts(target)
            if target == UNIT and not counts:
                continue
            parts = ", ".join(f"{counts[key]} {key}" for key in ("passed", "failed", "error", "skipped")
                              if counts[key]) or "no tests"
            writer.write_line(f"  {target}: {parts}")
        skipped = sorted(nodeid for outcomes in self.outcomes.values()
                         for nodeid, outcome in outcomes.items() if outcome == "skipped")
        if skipped:
            writer.write_line("skipped:")
            for nodeid in skipped:
                writer.write_line(f"  {nodeid}: {self.skip_reasons.get(nodeid, '')}")
