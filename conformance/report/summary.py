"""Per-target outcome counts and the terminal summary of a conformance run.

Outcomes are collected from test reports (on the xdist controller too: the target and the
emulator-only reason travel in ``report.user_properties``), so the numbers are the same with
and without ``-n``.  A case marked ``emulator_only`` is skipped on the qemu target; it is
counted as ``emulator-only`` there, not as an ordinary skip.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

#: user_properties keys the plugin attaches to every phase report of a conformance case.
TARGET_PROPERTY = "blocktxn-target"
CASE_PROPERTY = "blocktxn-case"
EMULATOR_ONLY_PROPERTY = "blocktxn-emulator-only"
UPSTREAM_PROPERTY = "blocktxn-upstream"
#: The per-case record for the HTML report (conformance.report.html.CaseRecord as JSON); attached to
#: the call report (or the setup report when there is no call), never to teardown, so that it
#: stays out of JUnit XML (which takes properties from the teardown report).
RECORD_PROPERTY = "blocktxn-record"

UNIT = "unit tests"
EMULATOR_ONLY = "emulator-only"
#: Severity order when folding a test's phase reports into one outcome.
OUTCOME_RANK = {"passed": 0, EMULATOR_ONLY: 1, "skipped": 1, "error": 2, "failed": 3}
OUTCOME_ORDER = ("passed", "failed", "error", EMULATOR_ONLY, "skipped")


class _Writer(Protocol):
    def write_sep(self, sep: str, title: str | None = None, **_markup: bool) -> None: ...

    def write_line(self, line: str, **_markup: bool) -> None: ...


def property_of(report: Any, key: str) -> Any:
    """The value of user property `key` on a report (None when absent); survives xdist."""
    for name, value in getattr(report, "user_properties", ()):
        if name == key:
            return value
    return None


def target_of(report: Any) -> str:
    value = property_of(report, TARGET_PROPERTY)
    return UNIT if value is None else str(value)


def skip_reason(report: Any) -> str:
    """The text given to pytest.skip / the skip marker, without pytest's prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return str(reason).removeprefix("Skipped: ")


def phase_outcome(report: Any) -> str | None:
    """The outcome one phase report contributes, or None (a passing setup or teardown)."""
    if report.failed:
        return "failed" if report.when == "call" else "error"
    if report.skipped:
        emulator_only = property_of(report, EMULATOR_ONLY_PROPERTY) is not None
        return EMULATOR_ONLY if emulator_only and not target_of(report).startswith("emulator") \
            else "skipped"
    if report.when == "call":
        return "passed"
    return None


def fold_outcome(current: str | None, outcome: str | None) -> str | None:
    """Combine a test's outcome so far with one more phase (failed > error > skipped > passed)."""
    if outcome is None:
        return current
    if current is None or OUTCOME_RANK[outcome] > OUTCOME_RANK[current]:
        return outcome
    return current


@dataclass
class Tally:
    """Outcome of every test, per target; skip and emulator-only reasons kept for the summary."""

    outcomes: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    skip_reasons: dict[str, str] = field(default_factory=dict)
    emulator_only: dict[str, str] = field(default_factory=dict)

    def record(self, report: Any) -> None:
        """Fold one phase report into the test's outcome."""
        target = target_of(report)
        reason = property_of(report, EMULATOR_ONLY_PROPERTY)
        if reason is not None:
            self.emulator_only[str(property_of(report, CASE_PROPERTY) or report.nodeid)] = str(reason)
        outcome = phase_outcome(report)
        if outcome == "skipped":
            self.skip_reasons[report.nodeid] = skip_reason(report)
        folded = fold_outcome(self.outcomes[target].get(report.nodeid), outcome)
        if folded is not None:
            self.outcomes[target][report.nodeid] = folded

    def counts(self, target: str) -> Counter[str]:
        return Counter(self.outcomes.get(target, {}).values())

    def write(self, writer: _Writer, targets: dict[str, str]) -> None:
        """`targets`: each target id with its description (what it is, or why it is missing)."""
        writer.write_sep("=", "blocktxn conformance summary")
        writer.write_line("targets:")
        for name, description in targets.items():
            writer.write_line(f"  {name}: {description}", yellow=name == "qemu")
        writer.write_line("outcomes:")
        for target in [*targets, UNIT]:
            counts = self.counts(target)
            if target == UNIT and not counts:
                continue
            parts = ", ".join(f"{counts[key]} {key}" for key in OUTCOME_ORDER if counts[key]) or "no tests"
            writer.write_line(f"  {target}: {parts}")
        if self.emulator_only:
            writer.write_line("emulator-only (skipped on qemu, no golden; the case's assertions are "
                              "the check):")
            for case in sorted(self.emulator_only):
                writer.write_line(f"  {case}: {self.emulator_only[case]}")
        skipped = sorted(nodeid for outcomes in self.outcomes.values()
                         for nodeid, outcome in outcomes.items() if outcome == "skipped")
        if skipped:
            writer.write_line("skipped:")
            for nodeid in skipped:
                writer.write_line(f"  {nodeid}: {self.skip_reasons.get(nodeid, '')}")
