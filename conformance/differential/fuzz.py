"""Differential testing: hypothesis drives real QEMU and the emulator through the same scenarios.

A scenario is drawn whole from the seed (conformance.differential.plan.scenarios), then runs:
both targets start on identical images (conformance.differential.steps.launch_scenario), every
applicable step (differential_plan.skip_reason, from what the reference replied) runs on both in
lockstep, and they are compared after every step and at the end
(conformance.differential.runner).  A divergence fails the example; hypothesis shrinks the drawn
list, and its final replay renders the steps as a ready-to-commit conformance case
(conformance.differential.case) with the command recording its golden.

Known crashes of real QEMU (conformance.differential.crashes) are skipped unless asked for.
``blocktxn fuzz`` keeps its deadline to seconds: no step starts after it, a running one is
abandoned shortly after it, and every step is bounded (STEP_TIMEOUT).  It prints a progress line
every 10 s and ends with ``N scenarios, M divergences, K reference failures``.

Entry points: tests/test_differential.py (a bounded, derandomized run) and `main`, the
``blocktxn fuzz --minutes M [--seed S] [--out DIR] [--qemu BIN]`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.control import current_build_context
from hypothesis.errors import InvalidArgument

from conformance.differential.case import RECORD_COMMAND, render_case
from conformance.differential.crashes import KNOWN_CRASHES
from conformance.differential.gen import AVOIDABLE
from conformance.differential.plan import scenarios, skip_reason
from conformance.differential.runner import DifferentialRun, Divergence, ReferenceFailure
from conformance.differential.steps import Step
from conformance.differential.targets import FuzzProfile, parse_version
from conformance.targets import INSTALL_HINT, QemuBinaries, Target


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
    """What the scenarios run against, and what they have seen (module state set by
    `configure`, read by the progress reporter thread)."""

    profile: FuzzProfile | None = None
    workroot: Path | None = None
    candidate: str = "emulator"
    avoid: frozenset[str] = frozenset()
    include_known_crashes: bool = False
    #: time.monotonic() after which no step starts and a running one is abandoned.
    deadline: float | None = None
    #: Raise reference failures (the test), or record them and go on (``blocktxn fuzz``).
    raise_reference_failures: bool = True
    scenarios: int = 0
    steps: int = 0
    #: Seconds each side took for its own part of the scenarios (DifferentialRun's Side.seconds).
    reference_seconds: float = 0.0
    candidate_seconds: float = 0.0
    skipped: int = 0
    abandoned: int = 0
    diverging_scenarios: int = 0
    findings: list[Finding] = field(default_factory=list)
    reference_failures: list[Finding] = field(default_factory=list)
    #: The latest failing example (hypothesis runs the smallest one last), rendered.
    last_failure: Finding | None = None
    #: Every failing example, shrinking included (for diagnosing the fuzzer itself).
    failures: list[tuple[str, list[Step]]] = field(default_factory=list)

    @property
    def binaries(self) -> QemuBinaries:
        if self.profile is None:
            raise RuntimeError("conformance.differential.fuzz.configure() was not called")
        return self.profile.binaries

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


CONFIG = FuzzConfig()


def configure(binaries: QemuBinaries | FuzzProfile, workroot: Path, candidate: str = "emulator",
              avoid: frozenset[str] = frozenset(), *, include_known_crashes: bool = False,
              deadline: float | None = None, raise_reference_failures: bool = True) -> FuzzConfig:
    """Point the scenarios at real QEMU and a scratch directory; resets the counters."""
    global CONFIG
    profile = binaries if isinstance(binaries, FuzzProfile) else FuzzProfile(
        binaries, parse_version(binaries.version))
    CONFIG = FuzzConfig(profile=profile, workroot=workroot, candidate=candidate, avoid=avoid,
                        include_known_crashes=include_known_crashes, deadline=deadline,
                        raise_reference_failures=raise_reference_failures)
    return CONFIG


def _signature(kind: str, detail: str) -> str:
    """What identifies a divergence across scenarios: its kind and first differing lines, with
    numbers and names of jobs, targets and bitmaps masked."""
    lines = [line for line in detail.splitlines()
             if line.startswith(("-", "+", "job ", "t", "drive")) and not line.startswith(("---", "+++"))]
    text = " | ".join(lines[:2]) or (detail.splitlines() or [""])[0]
    return f"{kind}: " + re.sub(r"\b(j|t|b)\d+\b|\d+", "N", text)[:300]


def _step_log(run: DifferentialRun, failure: BaseException) -> str:
    labels = "\n".join(f"{index:3d}. {step.label}" for index, step in enumerate(run.steps))
    return f"{failure}\n\n== steps\n{labels}\n\n== raw logs\n{run.raw_logs()}"


def _render(failure: Divergence | ReferenceFailure, run: DifferentialRun) -> Finding:
    if isinstance(failure, ReferenceFailure):
        return Finding("reference-failure", str(failure), None, None, _step_log(run, failure),
                       _signature("reference-failure", str(failure)), list(run.steps))
    name, source = render_case(failure, run, str(CONFIG.binaries.img))
    return Finding(failure.kind, failure.detail, name, source, _step_log(run, failure),
                   _signature(failure.kind, failure.detail), list(run.steps))


# ---- one scenario -------------------------------------------------------------------------------

#: Bound of one step (or the set-up, or the end checks) when no deadline is nearer.
STEP_TIMEOUT = 60.0
#: How long a step may run past the deadline before it is abandoned.
DEADLINE_GRACE = 2.0


class _Abandoned(Exception):
    """The deadline passed: the scenario stops without a verdict."""


async def _bounded(coroutine: Coroutine[Any, Any, Any], what: str) -> None:
    """Await `coroutine` within STEP_TIMEOUT and the deadline (plus a grace)."""
    timeout = STEP_TIMEOUT
    if CONFIG.deadline is not None:
        remaining = CONFIG.deadline - time.monotonic()
        if remaining <= 0:
            coroutine.close()
            raise _Abandoned(what)
        timeout = min(timeout, remaining + DEADLINE_GRACE)
    try:
        await asyncio.wait_for(coroutine, timeout)
    except TimeoutError:
        if CONFIG.out_of_time():
            raise _Abandoned(what) from None
        raise ReferenceFailure(f"{what} took more than {timeout:.0f} s") from None


async def _drive(run: DifferentialRun, plan: Sequence[Step]) -> None:
    """Set up, apply every applicable step of `plan`, then the end checks."""
    version = CONFIG.profile.version if CONFIG.profile else None
    await _bounded(run.start(), "the set-up")
    for step in plan:
        reason = skip_reason(step, run.model, version,
                             include_known_crashes=CONFIG.include_known_crashes)
        if reason is not None:
            CONFIG.skipped += 1
            continue
        CONFIG.steps += 1
        await _bounded(run.apply(step), step.label)
    await _bounded(run.finish(), "the end checks")


def _is_final() -> bool:
    try:
        return bool(current_build_context().is_final)
    except InvalidArgument:  # not under hypothesis (a plain replay)
        return True


def run_scenario(plan: Sequence[Step]) -> None:
    """Run one drawn scenario on a fresh (reference, candidate) pair.  Raises Divergence (and
    ReferenceFailure when configured to); returns quietly when the deadline cut it short."""
    if CONFIG.out_of_time():
        return
    profile, workroot = CONFIG.profile, CONFIG.workroot
    if profile is None or workroot is None:
        raise RuntimeError("conformance.differential.fuzz.configure() was not called")
    CONFIG.scenarios += 1
    loop = asyncio.new_event_loop()
    workdir = Path(tempfile.mkdtemp(prefix="scenario", dir=workroot))
    run = DifferentialRun(profile.reference(), profile.candidate(CONFIG.candidate), workdir,
                          profile.binaries, CONFIG.avoid)
    try:
        loop.run_until_complete(_drive(run, plan))
    except _Abandoned:
        CONFIG.abandoned += 1
    except Divergence as failure:
        CONFIG.diverging_scenarios += 1
        CONFIG.failures.append((f"Divergence after {len(run.steps)} steps: {str(failure)[:2000]}",
                                list(run.steps)))
        CONFIG.last_failure = _render(failure, run)
        if _is_final() and CONFIG.last_failure.case_name:
            note(f"ready-to-commit case conformance/cases/{CONFIG.last_failure.case_name}.py:\n"
                 f"{CONFIG.last_failure.case_source}\nrecord its golden with: "
                 f"{RECORD_COMMAND.format(name=CONFIG.last_failure.case_name)}")
        raise
    except ReferenceFailure as failure:
        CONFIG.reference_failures.append(_render(failure, run))
        if CONFIG.raise_reference_failures:
            raise
    finally:
        CONFIG.reference_seconds += run.reference.seconds
        CONFIG.candidate_seconds += run.candidate.seconds
        loop.run_until_complete(run.aclose())
        loop.close()
        shutil.rmtree(workdir, ignore_errors=True)


def scenario_settings(examples: int, *, derandomize: bool = False, shrink: bool = True) -> settings:
    phases = [phase for phase in Phase if shrink or phase not in (Phase.shrink, Phase.explain)]
    return settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
                    print_blob=False, phases=phases, suppress_health_check=list(HealthCheck))


def run_scenarios(examples: int, steps: int, *, seed: int | None = None,
                  derandomize: bool = False, shrink: bool = True) -> None:
    """Run `examples` drawn scenarios (raises on the minimal divergence; findings go to CONFIG).
    Without `shrink`, the first failing example is reported as found (fast, for CI)."""

    @scenario_settings(examples, derandomize=derandomize, shrink=shrink)
    @given(scenarios(steps, CONFIG.avoid))
    def check(plan: list[Step]) -> None:
        run_scenario(plan)

    if seed is not None and not derandomize:
        check = hypothesis_seed(seed)(check)
    check()


# ---- replays: minimizing, rendering, and checking QEMU's own determinism ----------------------

async def _replay(steps: Sequence[Step], reference: Target, candidate: Target, workdir: Path,
                  binaries: QemuBinaries) -> tuple[DifferentialRun, Divergence | ReferenceFailure | None]:
    """Run `steps` (then the end-of-scenario checks) on a fresh pair; the run and its failure."""
    run = DifferentialRun(reference, candidate, workdir, binaries)
    failure: Divergence | ReferenceFailure | None = None
    try:
        await asyncio.wait_for(_replay_steps(run, steps), STEP_TIMEOUT * (len(steps) + 2))
    except (Divergence, ReferenceFailure) as caught:
        failure = caught
    except TimeoutError:
        failure = ReferenceFailure(f"the replay of {len(steps)} steps took too long")
    finally:
        await run.aclose()
    return run, failure


async def _replay_steps(run: DifferentialRun, steps: Sequence[Step]) -> None:
    await run.start()
    for step in steps:
        await run.apply(step)
    await run.finish()


def _profile() -> FuzzProfile:
    if CONFIG.profile is None:
        raise RuntimeError("conformance.differential.fuzz.configure() was not called")
    return CONFIG.profile


def replay(steps: Sequence[Step], binaries: QemuBinaries, workroot: Path, candidate: str = "emulator",
           keep: bool = False) -> tuple[DifferentialRun, Divergence | ReferenceFailure | None]:
    """Synchronous `_replay` in a scratch directory (removed unless `keep`)."""
    profile = _profile()
    workdir = Path(tempfile.mkdtemp(prefix="replay", dir=workroot))
    try:
        return asyncio.run(_replay(steps, profile.reference(), profile.candidate(candidate),
                                   workdir, binaries))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _same_failure(failure: BaseException | None, signature: str) -> bool:
    return isinstance(failure, Divergence) and _signature(failure.kind, failure.detail) == signature


def _time_left() -> float:
    return float("inf") if CONFIG.deadline is None else CONFIG.deadline - time.monotonic()


#: A replay needs this much time before the deadline to be started.
REPLAY_RESERVE = 15.0


def minimize(steps: Sequence[Step], signature: str, binaries: QemuBinaries, workroot: Path,
             budget: int = 80) -> list[Step]:
    """Greedily drop steps (last first) while the same divergence still shows; hypothesis's
    shrinking cannot always drop a step whose draws feed later steps.  Stops at the deadline."""
    current = list(steps)
    index = len(current) - 2  # the last step is where it diverged (or the end checks)
    while index >= 0 and budget > 0 and _time_left() > REPLAY_RESERVE:
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
        if _time_left() < REPLAY_RESERVE:
            break
        _, failure = replay(steps, binaries, workroot, candidate="qemu")
        if failure is not None:
            seen.append(f"replay {attempt}: {failure}")
    return seen


def finding_from(steps: Sequence[Step], binaries: QemuBinaries, workroot: Path) -> Finding | None:
    """Replay `steps` once more and render the divergence (None if it did not show)."""
    profile = _profile()
    workdir = Path(tempfile.mkdtemp(prefix="render", dir=workroot))
    try:
        run, failure = asyncio.run(_replay(steps, profile.reference(), profile.candidate(),
                                           workdir, binaries))
        return None if failure is None else _render(failure, run)
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


def summary_line(scenarios: int, divergences: int, reference_failures: int) -> str:
    """The last line ``blocktxn fuzz`` prints (scripts parse it)."""
    return f"{scenarios} scenarios, {divergences} divergences, {reference_failures} reference failures"


class Progress:
    """Prints a progress line every `interval` seconds from a daemon thread."""

    def __init__(self, started: float, divergences: Callable[[], int], interval: float = 10.0) -> None:
        self.started = started
        self.divergences = divergences
        self.interval = interval
        #: The stream at start: the in-process emulator redirects sys.stdout while it runs (its
        #: HMP output), and a line printed there would land in a target's compared output.
        self.stream = sys.stdout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fuzz-progress", daemon=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = CONFIG.scenarios / elapsed * 60 if elapsed > 0 else 0.0
        return (f"blocktxn fuzz: {elapsed:4.0f} s: {CONFIG.scenarios} scenarios ({rate:.1f}/min), "
                f"{self.divergences()} divergences ({CONFIG.diverging_scenarios} diverging scenarios), "
                f"{len(CONFIG.reference_failures)} reference failures, {CONFIG.steps} steps run, "
                f"{CONFIG.skipped} skipped")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def side_rates(config: FuzzConfig) -> tuple[float, float]:
    """Scenarios per minute of each side's own time: (reference, candidate)."""
    def rate(seconds: float) -> float:
        return config.scenarios / seconds * 60 if seconds > 0 else 0.0

    return rate(config.reference_seconds), rate(config.candidate_seconds)


def side_rates_line(config: FuzzConfig) -> str:
    """What each side's own part cost, as scenarios per minute of its time."""
    reference, candidate = side_rates(config)
    return (f"blocktxn fuzz: per side, in scenarios per minute of its own time: {config.candidate} "
            f"{candidate:.0f}/min ({config.candidate_seconds:.1f} s), real QEMU {reference:.0f}/min "
            f"({config.reference_seconds:.1f} s)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blocktxn fuzz", description=(
        "Differential testing of the emulator against real QEMU: hypothesis draws whole scenarios "
        "from the seed, both targets run them in lockstep.  Exit 0 when nothing diverged, 1 when "
        "something did, 2 when real QEMU is missing.  The last line is "
        "'N scenarios, M divergences, K reference failures'."))
    parser.add_argument("--minutes", type=float, required=True, help="how long to fuzz (kept to seconds)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first round")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"),
                        help="where each divergence's case and step log go (default fuzz-out)")
    parser.add_argument("--examples", type=int, default=20, help="scenarios per hypothesis round")
    parser.add_argument("--steps", type=int, default=25, help="maximum steps per scenario")
    parser.add_argument("--avoid", action="append", default=[], choices=sorted(AVOIDABLE),
                        help="do not generate a known divergence (repeatable): "
                             + "; ".join(f"{name}: {text}" for name, text in AVOIDABLE.items()))
    parser.add_argument("--include-known-crashes", action="store_true",
                        help="also run steps that crash or hang real QEMU (skipped by default): "
                             + "; ".join(f"{crash.name} ({', '.join(f'{a}.{b}' for a, b in sorted(crash.versions))})"
                                         f": {crash.description}" for crash in KNOWN_CRASHES))
    parser.add_argument("--replays", type=int, default=3,
                        help="QEMU-against-QEMU replays of each divergence (0: none)")
    parser.add_argument("--qemu", default=None, help="qemu-system-x86_64 to compare with (default: PATH)")
    parser.add_argument("--qemu-img", default=None, help="qemu-img (default: beside --qemu, then PATH)")
    parser.add_argument("--qemu-io", default=None, help="qemu-io (default: beside --qemu, then PATH)")
    return parser


def _process(config: FuzzConfig, args: argparse.Namespace, workroot: Path,
             signatures: dict[str, Path], label: str) -> None:
    """Confirm, minimize, classify and write the round's minimal divergence (as time allows)."""
    recorded = config.last_failure
    if recorded is None:
        return
    binaries = config.binaries
    first: Finding | None = recorded
    if _time_left() > REPLAY_RESERVE:
        first = finding_from(recorded.steps, binaries, workroot)
        if first is None:
            print(f"{label}: a {recorded.kind} divergence did not reproduce on replay "
                  f"(timing-dependent?): {recorded.signature[:160]}", flush=True)
            return
        if first.kind == "reference-failure":
            config.reference_failures.append(first)
            return
    else:
        recorded.classification = "not replayed (the deadline came first)"
    assert first is not None
    if first.signature in signatures:
        print(f"{label}: again {first.signature[:160]}", flush=True)
        return
    finding = first
    if _time_left() > REPLAY_RESERVE:
        smaller = minimize(first.steps, first.signature, binaries, workroot)
        if len(smaller) < len(first.steps) and _time_left() > REPLAY_RESERVE:
            finding = finding_from(smaller, binaries, workroot) or first
    if args.replays and finding.case_source is not None and _time_left() > REPLAY_RESERVE:
        racy = qemu_against_qemu(finding.steps, binaries, workroot, args.replays)
        finding.classification = (
            "QEMU is racy here: QEMU-against-QEMU replays diverged too:\n" + "\n".join(racy)
            if racy else f"emulator: {args.replays} QEMU-against-QEMU replays agreed")
    config.findings.append(finding)
    directory = _write_finding(args.out, finding)
    signatures[finding.signature] = directory
    print(f"{label}: {finding.kind} divergence in {len(finding.steps)} steps -> {directory} "
          f"[{finding.classification.splitlines()[0]}]", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``blocktxn fuzz --minutes M [--seed S] [--out DIR] [--qemu BIN]``: exit 0 when nothing
    diverged, 1 when something did, 2 when real QEMU is missing."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    profile = FuzzProfile.find(args.qemu, args.qemu_img, args.qemu_io)
    if not profile.binaries.complete:
        print(f"blocktxn fuzz: QEMU not found ({', '.join(profile.binaries.missing())}): {INSTALL_HINT}")
        print(summary_line(0, 0, 0))
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    workroot = Path(tempfile.mkdtemp(prefix="btxfuzz"))
    config = configure(profile, workroot, avoid=frozenset(args.avoid),
                       include_known_crashes=args.include_known_crashes,
                       deadline=started + args.minutes * 60, raise_reference_failures=False)
    print(f"blocktxn fuzz: {profile.binaries.version} ({profile.binaries.system}) against the emulator "
          f"in its QEMU {profile.emulator_version} profile"
          + (f"; QEMU_MODULE_DIR={profile.binaries.module_dir}" if profile.binaries.module_dir else "")
          + ("; known crashes included" if args.include_known_crashes else ""), flush=True)
    seeds = random.Random(args.seed if args.seed is not None else time.time_ns())
    rounds = 0
    signatures: dict[str, Path] = {}
    written_references: set[str] = set()
    try:
        with Progress(started, lambda: len(signatures)):
            while not config.out_of_time():
                rounds += 1
                seed = seeds.randrange(2**32)
                config.last_failure = None
                try:
                    run_scenarios(args.examples, args.steps, seed=seed)
                except Divergence:
                    pass
                except Exception as error:  # noqa: BLE001 - e.g. Flaky: keep the smallest failure
                    if not config.out_of_time():
                        print(f"round {rounds} (seed {seed}): {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}", flush=True)
                _process(config, args, workroot, signatures, f"round {rounds} (seed {seed})")
                for failure in config.reference_failures:
                    if failure.signature not in written_references:
                        written_references.add(failure.signature)
                        directory = _write_finding(args.out, failure)
                        print(f"round {rounds} (seed {seed}): reference failure -> {directory}: "
                              f"{failure.signature[:160]}", flush=True)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"blocktxn fuzz: {rounds} rounds, {config.steps} steps run, {config.skipped} skipped, "
          f"{config.abandoned} scenarios cut short by the deadline, {elapsed / 60:.1f} min")
    for signature, directory in signatures.items():
        print(f"  {directory}: {signature}")
    print(side_rates_line(config))
    print(summary_line(config.scenarios, len(signatures), len(config.reference_failures)), flush=True)
    return 1 if signatures else 0


if __name__ == "__main__":
    sys.exit(main())
