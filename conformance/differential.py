"""Differential testing: hypothesis drives real QEMU 7.2 and the emulator through the same steps.

`DifferentialMachine` is a hypothesis RuleBasedStateMachine.  Each example starts both targets
on identical images (conformance.differential_steps.launch_scenario), applies generated steps
(conformance.differential_gen) to both in lockstep and compares them after every step and at
the end (conformance.differential_runner).  A divergence fails the example; hypothesis shrinks
it to a minimal step sequence, and its final replay renders that sequence as a ready-to-commit
conformance case (conformance.differential_case) with the command recording its golden.

Entry points: tests/test_differential.py (a bounded, derandomized run) and `main`, the
``blocktxn fuzz --minutes M [--seed S] [--out DIR]`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from conformance.differential_case import RECORD_COMMAND, render_case
from conformance.differential_gen import (
    AVOIDABLE,
    backup_step,
    bitmap_step,
    hmp_io_step,
    job_step,
    query_step,
    transaction_step,
)
from conformance.differential_runner import DifferentialRun, Divergence, ReferenceFailure
from conformance.differential_steps import Step
from conformance.targets import INSTALL_HINT, EmulatorTarget, QemuBinaries, QemuTarget, Target


@dataclass
class Finding:
    """A divergence (or a reference failure) in its minimal, final form."""

    kind: str
    detail: str
    case_name: str | None
    case_source: str | None
    step_log: str
    signature: str
    steps: list[Step] = field(default_factory=list)
    classification: str = "not checked"


@dataclass
class FuzzConfig:
    """What the machine runs against, and what it has seen (hypothesis instantiates the machine
    without arguments, so this is module state set by `configure`)."""

    binaries: QemuBinaries | None = None
    workroot: Path | None = None
    candidate: str = "emulator"
    avoid: frozenset[str] = frozenset()
    scenarios: int = 0
    steps: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: Every failing example, shrinking included (for diagnosing the fuzzer itself).
    failures: list[tuple[str, list[Step]]] = field(default_factory=list)


CONFIG = FuzzConfig()


def configure(binaries: QemuBinaries, workroot: Path, candidate: str = "emulator",
              avoid: frozenset[str] = frozenset()) -> FuzzConfig:
    """Point the machine at real QEMU and a scratch directory; resets the counters."""
    global CONFIG
    CONFIG = FuzzConfig(binaries=binaries, workroot=workroot, candidate=candidate, avoid=avoid)
    return CONFIG


def make_target(kind: str, binaries: QemuBinaries) -> Target:
    return QemuTarget(binaries) if kind == "qemu" else EmulatorTarget()


def _signature(kind: str, detail: str) -> str:
    """What identifies a divergence across scenarios: its kind and first differing lines, with
    numbers and names of jobs, targets and bitmaps masked."""
    lines = [line for line in detail.splitlines()
             if line.startswith(("-", "+", "job ", "t", "drive")) and not line.startswith(("---", "+++"))]
    text = " | ".join(lines[:2]) or detail.splitlines()[0]
    return f"{kind}: " + re.sub(r"\b(j|t|b)\d+\b|\d+", "N", text)[:300]


def _step_log(run: DifferentialRun, failure: BaseException) -> str:
    labels = "\n".join(f"{index:3d}. {step.label}" for index, step in enumerate(run.steps))
    return f"{failure}\n\n== steps\n{labels}\n\n== raw logs\n{run.raw_logs()}"


class DifferentialMachine(RuleBasedStateMachine):
    """Real QEMU (reference) and the emulator (candidate) driven through the same steps."""

    def __init__(self) -> None:
        super().__init__()
        if CONFIG.binaries is None or CONFIG.workroot is None:
            raise RuntimeError("conformance.differential.configure() was not called")
        self.loop = asyncio.new_event_loop()
        self.workdir = Path(tempfile.mkdtemp(prefix="scenario", dir=CONFIG.workroot))
        self.run = DifferentialRun(QemuTarget(CONFIG.binaries),
                                   make_target(CONFIG.candidate, CONFIG.binaries),
                                   self.workdir, CONFIG.binaries, CONFIG.avoid)
        self.failed = False
        CONFIG.scenarios += 1
        try:
            self._call(self.run.start())
        except BaseException:  # hypothesis does not call teardown when __init__ fails
            self.loop.run_until_complete(self.run.aclose())
            self.loop.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise

    # ---- plumbing -----------------------------------------------------------------------------
    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        try:
            return self.loop.run_until_complete(coroutine)
        except (Divergence, ReferenceFailure) as failure:
            self.failed = True
            self._report(failure)
            raise

    def _report(self, failure: Divergence | ReferenceFailure) -> None:
        """On hypothesis's final replay of the minimal example: render and keep the finding."""
        try:
            final = current_build_context().is_final
        except InvalidArgument:  # not under hypothesis (a plain replay)
            final = True
        summary = f"{type(failure).__name__} after {len(self.run.steps)} steps: {str(failure)[:2000]}"
        CONFIG.failures.append((summary, list(self.run.steps)))
        if not final:
            return
        assert CONFIG.binaries is not None
        kind = failure.kind if isinstance(failure, Divergence) else "reference-failure"
        name = source = None
        if isinstance(failure, Divergence):
            name, source = render_case(failure, self.run, str(CONFIG.binaries.img))
            note(f"ready-to-commit case conformance/cases/{name}.py:\n{source}\n"
                 f"record its golden with: {RECORD_COMMAND.format(name=name)}")
        detail = failure.detail if isinstance(failure, Divergence) else str(failure)
        CONFIG.findings.append(Finding(kind, detail, name, source, _step_log(self.run, failure),
                                       _signature(kind, detail), list(self.run.steps)))

    def _apply(self, step: Step) -> None:
        CONFIG.steps += 1
        self._call(self.run.apply(step))

    # ---- rules --------------------------------------------------------------------------------
    @rule(data=st.data())
    def guest_io(self, data: st.DataObject) -> None:
        self._apply(hmp_io_step(data, self.run.model))

    @rule(data=st.data())
    def bitmap_command(self, data: st.DataObject) -> None:
        self._apply(bitmap_step(data, self.run.model))

    @rule(data=st.data())
    def backup(self, data: st.DataObject) -> None:
        self._apply(backup_step(data, self.run.model))

    @rule(data=st.data())
    def transaction(self, data: st.DataObject) -> None:
        self._apply(transaction_step(data, self.run.model))

    @precondition(lambda self: bool(self.run.model.live_jobs()))
    @rule(data=st.data())
    def job_command(self, data: st.DataObject) -> None:
        self._apply(job_step(data, self.run.model))

    @precondition(lambda self: self.run.model.progress_is_timing_free())
    @rule(data=st.data())
    def query(self, data: st.DataObject) -> None:
        self._apply(query_step(data, self.run.model))

    def teardown(self) -> None:
        try:
            if not self.failed:
                self._call(self.run.finish())
        finally:
            self.loop.run_until_complete(self.run.aclose())
            self.loop.close()
            shutil.rmtree(self.workdir, ignore_errors=True)


def machine_settings(examples: int, steps: int, *, derandomize: bool = False,
                     shrink: bool = True) -> settings:
    phases = [phase for phase in Phase if shrink or phase not in (Phase.shrink, Phase.explain)]
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    derandomize=derandomize, database=None, print_blob=False, phases=phases,
                    suppress_health_check=list(HealthCheck))


def run_machine(examples: int, steps: int, *, seed: int | None = None,
                derandomize: bool = False, shrink: bool = True) -> None:
    """Run the state machine (raises on the minimal divergence; findings go to CONFIG).
    Without `shrink`, the first failing example is reported as found (fast, for CI)."""
    DifferentialMachine._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
    run_state_machine_as_test(DifferentialMachine, settings=machine_settings(
        examples, steps, derandomize=derandomize, shrink=shrink))


# ---- replays: minimizing, rendering, and checking QEMU's own determinism ----------------------

async def _replay(steps: Sequence[Step], reference: Target, candidate: Target, workdir: Path,
                  binaries: QemuBinaries) -> tuple[DifferentialRun, Divergence | ReferenceFailure | None]:
    """Run `steps` (then the end-of-scenario checks) on a fresh pair; the run and its failure."""
    run = DifferentialRun(reference, candidate, workdir, binaries)
    failure: Divergence | ReferenceFailure | None = None
    try:
        await run.start()
        for step in steps:
            await run.apply(step)
        await run.finish()
    except (Divergence, ReferenceFailure) as caught:
        failure = caught
    finally:
        await run.aclose()
    return run, failure


def replay(steps: Sequence[Step], binaries: QemuBinaries, workroot: Path, candidate: str = "emulator",
           keep: bool = False) -> tuple[DifferentialRun, Divergence | ReferenceFailure | None]:
    """Synchronous `_replay` in a scratch directory (removed unless `keep`)."""
    workdir = Path(tempfile.mkdtemp(prefix="replay", dir=workroot))
    try:
        return asyncio.run(_replay(steps, QemuTarget(binaries), make_target(candidate, binaries),
                                   workdir, binaries))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _same_failure(failure: BaseException | None, signature: str) -> bool:
    return isinstance(failure, Divergence) and _signature(failure.kind, failure.detail) == signature


def minimize(steps: Sequence[Step], signature: str, binaries: QemuBinaries, workroot: Path,
             budget: int = 80) -> list[Step]:
    """Greedily drop steps (last first) while the same divergence still shows; hypothesis's
    shrinking cannot always drop a step whose draws feed later steps."""
    current = list(steps)
    index = len(current) - 2  # the last step is where it diverged (or the end checks)
    while index >= 0 and budget > 0:
        candidate = current[:index] + current[index + 1:]
        budget -= 1
        if _same_failure(replay(candidate, binaries, workroot)[1], signature):
            current = candidate
        index -= 1
    return current


def qemu_against_qemu(steps: Sequence[Step], binaries: QemuBinaries, workroot: Path,
                      times: int) -> list[str]:
    """Replay `steps` with real QEMU on both sides `times` times; the divergences seen."""
    seen = []
    for attempt in range(times):
        _, failure = replay(steps, binaries, workroot, candidate="qemu")
        if failure is not None:
            seen.append(f"replay {attempt}: {failure}")
    return seen


def finding_from(steps: Sequence[Step], binaries: QemuBinaries, workroot: Path) -> Finding | None:
    """Replay `steps` once more and render the divergence (None if it did not show)."""
    workdir = Path(tempfile.mkdtemp(prefix="render", dir=workroot))
    try:
        run, failure = asyncio.run(_replay(steps, QemuTarget(binaries), EmulatorTarget(), workdir,
                                           binaries))
        if failure is None:
            return None
        if isinstance(failure, ReferenceFailure):
            return Finding("reference-failure", str(failure), None, None, _step_log(run, failure),
                           _signature("reference-failure", str(failure)), list(steps))
        name, source = render_case(failure, run, str(binaries.img))
        return Finding(failure.kind, failure.detail, name, source, _step_log(run, failure),
                       _signature(failure.kind, failure.detail), list(steps))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---- blocktxn fuzz ----------------------------------------------------------------------------

def _write_finding(out: Path, finding: Finding) -> Path:
    name = finding.case_name or f"reference_failure_{len(list(out.glob('*')))}"
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    if finding.case_source:
        (directory / f"{name}.py").write_text(finding.case_source, encoding="utf-8")
    (directory / "steps.log").write_text(
        f"signature: {finding.signature}\nclassification: {finding.classification}\n"
        + (f"record the golden with: {RECORD_COMMAND.format(name=name)}\n" if finding.case_name else "")
        + f"\n{finding.step_log}", encoding="utf-8")
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    """``blocktxn fuzz --minutes M [--seed S] [--out DIR]``: exit 0 when nothing diverged, 1 when
    something did, 2 when real QEMU is missing."""
    parser = argparse.ArgumentParser(prog="blocktxn fuzz", description=(
        "Differential testing of the emulator against real QEMU 7.2 (hypothesis state machine)."))
    parser.add_argument("--minutes", type=float, required=True, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first round")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"),
                        help="where each divergence's case and step log go (default fuzz-out)")
    parser.add_argument("--examples", type=int, default=20, help="scenarios per hypothesis round")
    parser.add_argument("--steps", type=int, default=25, help="maximum steps per scenario")
    parser.add_argument("--avoid", action="append", default=[], choices=sorted(AVOIDABLE),
                        help="do not generate a known divergence (repeatable): "
                             + "; ".join(f"{name}: {text}" for name, text in AVOIDABLE.items()))
    parser.add_argument("--replays", type=int, default=3,
                        help="QEMU-against-QEMU replays of each divergence (0: none)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    binaries = QemuBinaries.find()
    if not binaries.complete:
        print(f"blocktxn fuzz: QEMU not found ({', '.join(binaries.missing())}): {INSTALL_HINT}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    workroot = Path(tempfile.mkdtemp(prefix="btxfuzz"))
    config = configure(binaries, workroot, avoid=frozenset(args.avoid))
    seeds = random.Random(args.seed if args.seed is not None else time.time_ns())
    started = time.monotonic()
    deadline = started + args.minutes * 60
    rounds = 0
    signatures: dict[str, Path] = {}
    try:
        while time.monotonic() < deadline:
            rounds += 1
            seed = seeds.randrange(2**32)
            known = len(config.failures)
            try:
                run_machine(args.examples, args.steps, seed=seed)
            except (Divergence, ReferenceFailure):
                pass
            except Exception:  # noqa: BLE001 - e.g. hypothesis's Flaky: keep the smallest failure
                traceback.print_exc()
            if len(config.failures) == known:
                continue
            # The last failing example of the round is hypothesis's minimal one.
            text, steps = config.failures[-1]
            failure_kind = text.split(" ", 1)[0]
            first = finding_from(steps, binaries, workroot)
            if first is None:
                print(f"round {rounds} (seed {seed}): a {failure_kind} did not reproduce on replay "
                      f"(timing-dependent?): {text.splitlines()[0]}", flush=True)
                continue
            if first.signature in signatures:
                print(f"round {rounds} (seed {seed}): again {first.signature[:160]}", flush=True)
                continue
            smaller = minimize(steps, first.signature, binaries, workroot)
            finding = finding_from(smaller, binaries, workroot) or first
            if args.replays and finding.case_source is not None:
                racy = qemu_against_qemu(finding.steps, binaries, workroot, args.replays)
                finding.classification = (
                    "QEMU is racy here: QEMU-against-QEMU replays diverged too:\n" + "\n".join(racy)
                    if racy else f"emulator: {args.replays} QEMU-against-QEMU replays agreed")
            config.findings.append(finding)
            directory = _write_finding(args.out, finding)
            signatures[finding.signature] = directory
            print(f"round {rounds} (seed {seed}): {finding.kind} divergence in "
                  f"{len(finding.steps)} steps -> {directory} "
                  f"[{finding.classification.splitlines()[0]}]", flush=True)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"blocktxn fuzz: {rounds} rounds, {config.scenarios} scenarios, {config.steps} steps, "
          f"{elapsed / 60:.1f} min, {len(signatures)} distinct divergences")
    for signature, directory in signatures.items():
        print(f"  {directory}: {signature}")
    return 1 if signatures else 0


if __name__ == "__main__":
    sys.exit(main())
