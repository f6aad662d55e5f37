"""Fuzzing campaigns: inputs run against one or two live targets (the emulator as a process, real
QEMU), every answer checked, the server probed with a fresh connection after each batch.

Findings: crashes, hangs, unexpected closes, malformed replies, and replies that differ from
QEMU's (in error class, or only in text).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from conformance.differential.targets import FuzzProfile
from conformance.qmpfuzz.client import FuzzClient, Outcome
from conformance.qmpfuzz.inputs import FuzzInput
from conformance.targets import EmulatorTarget, Instance, MonitorSocket, QemuBinaries, Target

INTERNAL_ERROR = "Internal error in the blocktxn emulator"
#: Inputs up to this size also go to QEMU, which reads its monitor slowly.
COMPARE_LIMIT = 4096


# ---- checking outcomes ---------------------------------------------------------------------------

@dataclass
class Finding:
    """Something wrong with one input: category is crash, hang, closed, refused, invalid-reply,
    oracle, class-mismatch or text-mismatch (against QEMU)."""

    category: str
    item: FuzzInput
    detail: str

    def describe(self) -> str:
        return f"[{self.category}] {self.detail}\n    input: {self.item.describe()}"


def check_outcome(item: FuzzInput, outcome: Outcome) -> list[Finding]:
    """The checks that need no second target."""
    findings: list[Finding] = []
    if item.disconnect:
        if outcome.status not in ("disconnected",):
            findings.append(Finding(outcome.status, item, outcome.note))
        return findings
    if outcome.status != "answered":
        findings.append(Finding(outcome.status, item, outcome.note))
    for reply in outcome.replies:
        if reply.kind == "invalid":
            findings.append(Finding("invalid-reply", item, f"not a QMP reply: {reply.raw[:200]!r}"))
        elif reply.kind == "error" and (reply.desc or "").startswith(INTERNAL_ERROR):
            findings.append(Finding("crash", item, f"handler exception: {reply.desc}"))
    if item.expected_ids is not None and outcome.status == "answered":
        got = tuple(reply.message.get("id") for reply in outcome.answers
                    if reply.kind == "return" and reply.message is not None)
        if got != item.expected_ids:
            findings.append(Finding("oracle", item, f"expected {len(item.expected_ids)} replies with "
                                    f"ids in order, got {len(got)}: first difference at "
                                    f"{_first_difference(got, item.expected_ids)}"))
    return findings


def _first_difference(got: Sequence[Any], expected: Sequence[Any]) -> str:
    for index, (left, right) in enumerate(zip(got, expected, strict=False)):
        if left != right:
            return f"#{index}: {left!r} != {right!r}"
    return f"#{min(len(got), len(expected))} (lengths {len(got)} and {len(expected)})"


def compare_outcomes(item: FuzzInput, emulator: Outcome, qemu: Outcome) -> list[Finding]:
    """Differences from QEMU: the status, the classes of the answers, then their text and ids."""
    if item.disconnect:
        return []
    if emulator.status != qemu.status:
        return [Finding("class-mismatch", item, f"emulator {emulator.status}, QEMU {qemu.status}")]
    ours = [reply.class_key() for reply in emulator.answers]
    theirs = [reply.class_key() for reply in qemu.answers]
    if ours != theirs:
        return [Finding("class-mismatch", item, f"emulator {_summary(ours)} | QEMU {_summary(theirs)}")]
    for index, (mine, real) in enumerate(zip(emulator.answers, qemu.answers, strict=True)):
        if mine.key() != real.key():
            return [Finding("text-mismatch", item, f"answer #{index}: emulator {mine.raw[:300]!r} | "
                            f"QEMU {real.raw[:300]!r}")]
    return []


def _summary(keys: Sequence[tuple[str, str | None]]) -> str:
    counts = Counter(f"{kind}:{cls}" if cls else kind for kind, cls in keys)
    shown = ", ".join(f"{name}" if n == 1 else f"{n}x {name}" for name, n in counts.items())
    order = " ".join(cls or kind for kind, cls in keys[:8])
    return f"{len(keys)} answers ({shown}) [{order}{' ...' if len(keys) > 8 else ''}]"


# ---- live targets ---------------------------------------------------------------------------------

class LiveTarget:
    """A started target (emulator process or real QEMU) with a scratch qcow2 drive."""

    def __init__(self, target: Target, *, drive: bool = True, name: str | None = None) -> None:
        self.name = name or target.name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"btx-fz-{self.name[:4]}-"))
        self.socket_path = self.workdir / "q.sock"
        extra: list[str] = []
        if drive:
            image = self.workdir / "scratch.qcow2"
            target.tools(self.workdir).create(image, "qcow2", "64M")
            extra = ["-drive", f"if=none,id=drive0,file={image},format=qcow2"]
        # The target accepts on a socket made here before it starts (MonitorSocket.listen): a
        # connection is queued until it is ready, so there is nothing to poll for.
        monitor = MonitorSocket.listen(self.socket_path)
        try:
            self.instance: Instance = target.start(monitor, self.workdir, extra)
        finally:
            monitor.close()
        self.client = FuzzClient(self.socket_path)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """One health check, bounded: its greeting arrives once the target serves QMP."""
        problem = self.client.health_check(timeout=timeout)
        if problem is not None:
            state = "exited" if not self.instance.alive() else "is running"
            raise RuntimeError(f"{self.name} did not serve QMP within {timeout}s ({state}): {problem}; "
                               f"stderr: {self.instance.stderr_text()}")

    def problems(self) -> list[str]:
        """Signs of a crash: the process died, or it logged an error or a traceback."""
        found: list[str] = []
        if not self.instance.alive():
            found.append(f"{self.name} is not running (exit status {self.instance.exit_status()})")
        stderr = self.instance.stderr_text()
        for line in stderr.splitlines():
            if "Traceback" in line or " ERROR " in line or "CRITICAL" in line or "Exception" in line:
                found.append(f"{self.name} stderr: {line.strip()[:300]}")
        return found

    def stop(self) -> None:
        self.instance.kill()
        for child in sorted(self.workdir.rglob("*"), reverse=True):
            if child.is_dir():
                child.rmdir()
            else:
                child.unlink()
        self.workdir.rmdir()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def qemu_available(binary: str | None = None) -> bool:
    """`binary` (default: qemu-system-x86_64 on PATH) runs ``--version`` (with its modules'
    QEMU_MODULE_DIR when it is an unpacked package's binary)."""
    return QemuBinaries.find(binary).version is not None


def fuzz_targets(qemu: str | None = None, qemu_img: str | None = None,
                 qemu_io: str | None = None) -> tuple[Target, Target | None, FuzzProfile]:
    """The emulator (a separate process, told to behave like the QEMU found) and real QEMU
    (None when not found): `qemu` names qemu-system-x86_64, default PATH; the tools default to
    the ones beside it (see conformance.differential.targets)."""
    profile = FuzzProfile.find(qemu, qemu_img, qemu_io)
    emulator = EmulatorTarget(profile.emulator_version, separate_process=True)
    return emulator, (profile.reference() if profile.binaries.complete else None), profile


@dataclass
class CampaignReport:
    inputs: int = 0
    compared: int = 0
    batches: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    families: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    server_problems: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")

    def count(self, category: str) -> int:
        return sum(1 for finding in self.findings if finding.category == category)

    @property
    def clean(self) -> bool:
        return not self.findings and not self.server_problems

    def summary(self) -> str:
        categories = ("crash", "hang", "closed", "refused", "invalid-reply", "oracle",
                      "class-mismatch", "text-mismatch")
        rate = self.inputs / max(self.seconds, 1e-9)
        lines = [(f"{self.inputs} inputs in {self.batches} batches, {self.bytes_sent / 1e6:.1f} MB, "
                  f"{self.seconds:.1f}s ({rate:.0f} inputs/s); {self.compared} compared with QEMU"),
                 "families: " + ", ".join(f"{name} {n}" for name, n in sorted(self.families.items())),
                 "statuses: " + ", ".join(f"{name} {n}" for name, n in sorted(self.statuses.items())),
                 "findings: " + ", ".join(f"{name} {self.count(name)}" for name in categories),
                 f"server problems: {len(self.server_problems)}",
                 f"slowest input: {self.slowest[0]:.2f}s ({self.slowest[1][:100]})"]
        return "\n".join(lines)


class Campaign:
    """Runs inputs in batches against the emulator (and, for small inputs, QEMU too)."""

    def __init__(self, emulator: LiveTarget, qemu: LiveTarget | None = None, *,
                 batch_size: int = 100, compare_limit: int = COMPARE_LIMIT, compare_every: int = 1,
                 on_finding: Callable[[Finding], None] | None = None) -> None:
        self.emulator = emulator
        self.qemu = qemu
        self.batch_size = batch_size
        self.compare_limit = compare_limit
        self.compare_every = compare_every
        self._eligible = 0  # inputs small enough to compare, seen so far
        self.on_finding = on_finding
        self.report = CampaignReport()
        if qemu is not None:  # QEMU reads its monitor at about 65 KB/s at best
            qemu.client.bytes_per_second = 4 * 1024

    def _record(self, findings: list[Finding]) -> None:
        for finding in findings:
            self.report.findings.append(finding)
            if self.on_finding is not None:
                self.on_finding(finding)

    def should_compare(self, item: FuzzInput) -> bool:
        """Every compare_every-th input that QEMU can read quickly."""
        if self.qemu is None or item.disconnect or len(item.data) > self.compare_limit:
            return False
        self._eligible += 1
        return self.compare_every > 0 and self._eligible % self.compare_every == 0

    def run(self, inputs: Iterator[FuzzInput] | Sequence[FuzzInput]) -> CampaignReport:
        started = time.monotonic()
        batch = 0
        for item in inputs:
            self.run_one(item)
            batch += 1
            if batch == self.batch_size:
                self.end_batch()
                batch = 0
        if batch:
            self.end_batch()
        self.report.seconds += time.monotonic() - started
        return self.report

    def run_one(self, item: FuzzInput) -> Outcome:
        report = self.report
        outcome = self.emulator.client.run(item)
        report.inputs += 1
        report.bytes_sent += len(item.data)
        report.families[item.family] += 1
        report.statuses[outcome.status] += 1
        if outcome.seconds > report.slowest[0]:
            report.slowest = (outcome.seconds, item.describe())
        self._record(check_outcome(item, outcome))
        if outcome.status in ("hang", "refused", "closed"):
            self.end_batch()  # is the server still there?
        if self.should_compare(item):
            assert self.qemu is not None
            real = self.qemu.client.run(item)
            report.compared += 1
            self._record(compare_outcomes(item, outcome, real))
        return outcome

    def end_batch(self) -> None:
        """The server must serve a fresh client after every batch, and show no crash."""
        self.report.batches += 1
        problem = self.emulator.client.health_check()
        problems = self.emulator.problems() + ([f"health check: {problem}"] if problem else [])
        new = [p for p in problems if p not in self.report.server_problems]
        self.report.server_problems.extend(new)
        if new and not self.emulator.instance.alive():
            raise RuntimeError("the emulator died: " + "; ".join(new))
