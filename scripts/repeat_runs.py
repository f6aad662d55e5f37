#!/usr/bin/env python3
"""Run the conformance suite many times and report flakes: failed runs, outcomes that change
from run to run, and normalized logs that are not identical across runs.

Each run is a fresh ``pytest`` child (the same command line as ``blocktxn conform``) with
``--blocktxn-dump-logs`` and ``--junitxml`` into a private directory; by default every run is
done twice over, serially and with ``-n auto``, and all runs' logs are compared with each other
(a normalized log must not depend on scheduling either).

    scripts/repeat_runs.py                            # 20 runs x (serial, -n auto), emulator
    scripts/repeat_runs.py --target qemu --runs 5
    scripts/repeat_runs.py --target qemu --qemu /usr/bin/qemu-system-x86_64 --qemu Q10 --runs 5
    scripts/repeat_runs.py --runs 50 --xdist-only     # the 50-run flake check
    scripts/repeat_runs.py --runs 3 -- -k transaction # extra pytest arguments after --

Exit status: 0 when every run passed with identical logs; 1 when something is flaky (an outcome
or a normalized log differs between runs, or a run failed as a whole); 2 when runs failed the
same way every time (a stable failure, not a flake).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blocktxn_cli.main import CASES_DIR, pytest_argv

#: A run's wall-clock bound; a hung run is a failure, not a hang of this script.
RUN_TIMEOUT = 1800.0
MAX_DIFF_LINES = 40


@dataclass
class Run:
    """One pytest child: its exit status, per-test outcomes and dumped logs (by content hash)."""

    number: int
    mode: str
    directory: Path
    returncode: int = 0
    seconds: float = 0.0
    outcomes: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    hidden: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.mode}#{self.number}"

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.outcomes.values())

    @property
    def failed(self) -> bool:
        return self.returncode not in (0, 5) or bool(self.counts["failed"] + self.counts["error"])


def junit_outcomes(path: Path) -> dict[str, str]:
    """test id -> passed / failed / error / skipped, from pytest's JUnit XML."""
    if not path.is_file():
        return {}
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        classname = case.get("classname")  # empty for a file outside the rootdir
        test = f"{classname}::{case.get('name')}" if classname else str(case.get("name"))
        outcome = "passed"
        for tag, name in (("skipped", "skipped"), ("error", "error"), ("failure", "failed")):
            if case.find(tag) is not None:
                outcome = name
        outcomes[test] = outcome
    return outcomes


def dumped_hidden(directory: Path) -> dict[str, dict[str, dict[str, object]]]:
    """log path -> job -> rule -> what the rule took out (the plugin's <case>.hidden.json)."""
    return {str(path.relative_to(directory)).removesuffix(".hidden.json") + ".log": json.loads(path.read_text())
            for path in sorted(directory.rglob("*.hidden.json"))}


def rule_evidence(runs: Sequence[Run]) -> dict[tuple[str, str], Counter[str]]:
    """(target, rule) -> how many (case, job) places the rule changed something in, split into
    "varied" (what it took out differed between runs: the variation it exists to hide) and
    "constant" (the same in every run: a deterministic difference the rule hides)."""
    places = {(log.split("/", 1)[0], rule, log, job)
              for run in runs for log, jobs in run.hidden.items() for job, rules in jobs.items()
              for rule in rules}
    evidence: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for target, rule, log, job in places:
        # every run that has the log counts, with what the rule took out there (or nothing)
        seen = {json.dumps(run.hidden.get(log, {}).get(job, {}).get(rule), sort_keys=True)
                for run in runs if log in run.logs}
        evidence[(target, rule)]["varied" if len(seen) > 1 else "constant"] += 1
    return dict(evidence)


def dumped_logs(directory: Path) -> dict[str, str]:
    """relative path -> sha256 of every normalized log a run dumped."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*.log"))}


def run_once(number: int, mode: str, workdir: Path, paths: Sequence[Path], targets: Sequence[str],
             workers: str, extra: Sequence[str], qemus: Sequence[str] = ()) -> Run:
    directory = workdir / f"{mode}-{number:03d}"
    directory.mkdir(parents=True)
    args = [arg for target in targets for arg in ("--target", target)]
    args += [arg for qemu in qemus for arg in ("--qemu", qemu)]
    args += ["--blocktxn-dump-logs", str(directory / "logs"), "--junitxml", str(directory / "junit.xml"),
             "-q", "-p", "no:cacheprovider"]
    if mode == "xdist":
        args += ["-n", workers]
    run = Run(number, mode, directory)
    started = time.monotonic()
    with open(directory / "output.txt", "wb") as output:
        try:
            done = subprocess.run(pytest_argv(paths, [*args, *extra]), cwd=ROOT, stdout=output,
                                  stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT, check=False)
            run.returncode = done.returncode
        except subprocess.TimeoutExpired:
            run.returncode, run.note = -1, f"timed out after {RUN_TIMEOUT:.0f}s"
    run.seconds = time.monotonic() - started
    run.outcomes = junit_outcomes(directory / "junit.xml")
    run.logs = dumped_logs(directory / "logs") if (directory / "logs").is_dir() else {}
    run.hidden = dumped_hidden(directory / "logs") if (directory / "logs").is_dir() else {}
    if run.returncode not in (0, 1, 5) and not run.note:
        run.note = f"pytest exit status {run.returncode} (see {directory / 'output.txt'})"
    return run


@dataclass
class Findings:
    failed_runs: list[Run]
    flaky_outcomes: dict[str, Counter[str]]
    differing_logs: dict[str, dict[str, list[str]]]  # log -> hash -> run labels ("missing" too)
    stable_failures: list[str]

    @property
    def flaky(self) -> bool:
        broken = any(run.note for run in self.failed_runs)
        return bool(self.flaky_outcomes or self.differing_logs or broken)


def analyse(runs: Sequence[Run]) -> Findings:
    tests = sorted({test for run in runs for test in run.outcomes})
    flaky: dict[str, Counter[str]] = {}
    stable: list[str] = []
    for test in tests:
        seen = Counter(run.outcomes.get(test, "missing") for run in runs)
        if len(seen) > 1:
            flaky[test] = seen
        elif set(seen) & {"failed", "error"}:
            stable.append(test)
    differing: dict[str, dict[str, list[str]]] = {}
    for log in sorted({log for run in runs for log in run.logs}):
        variants: dict[str, list[str]] = defaultdict(list)
        for run in runs:
            variants[run.logs.get(log, "missing")].append(run.label)
        if len(variants) > 1:
            differing[log] = dict(variants)
    return Findings([run for run in runs if run.failed], flaky, differing, stable)


def _first_diff(runs: Sequence[Run], log: str, variants: dict[str, list[str]]) -> list[str]:
    """A unified diff between the first two variants of a log that both exist."""
    by_label = {run.label: run for run in runs}
    present = [labels[0] for digest, labels in variants.items() if digest != "missing"]
    if len(present) < 2:
        return []
    first, second = (by_label[label].directory / "logs" / log for label in present[:2])
    diff = list(difflib.unified_diff(first.read_text().splitlines(), second.read_text().splitlines(),
                                     f"{present[0]}/{log}", f"{present[1]}/{log}", lineterm=""))
    return diff[:MAX_DIFF_LINES] + ([f"... ({len(diff) - MAX_DIFF_LINES} more lines)"]
                                    if len(diff) > MAX_DIFF_LINES else [])


def print_report(runs: Sequence[Run], findings: Findings) -> None:
    header = f"{'run':<12}{'exit':>5}{'passed':>8}{'failed':>8}{'error':>7}{'skipped':>9}{'logs':>6}" \
             f"{'seconds':>9}  note"
    print(header)
    print("-" * len(header))
    for run in runs:
        counts = run.counts
        print(f"{run.label:<12}{run.returncode:>5}{counts['passed']:>8}{counts['failed']:>8}"
              f"{counts['error']:>7}{counts['skipped']:>9}{len(run.logs):>6}{run.seconds:>9.1f}  {run.note}")
    print()
    modes = Counter(run.mode for run in runs)
    print(f"{len(runs)} runs ({', '.join(f'{count} {mode}' for mode, count in modes.items())}); "
          f"{len(findings.failed_runs)} failed")
    for run in findings.failed_runs:
        failing = sorted(test for test, outcome in run.outcomes.items() if outcome in ("failed", "error"))
        print(f"  failed run {run.label}: {run.note or ', '.join(failing) or 'see ' + str(run.directory)}")
    if findings.flaky_outcomes:
        print(f"FLAKY outcomes ({len(findings.flaky_outcomes)} tests):")
        for test, seen in findings.flaky_outcomes.items():
            print(f"  {test}: " + ", ".join(f"{count} {outcome}" for outcome, count in sorted(seen.items())))
    if findings.stable_failures:
        print(f"failing in every run ({len(findings.stable_failures)} tests):")
        for test in findings.stable_failures:
            print(f"  {test}")
    logs = len({log for run in runs for log in run.logs})
    if findings.differing_logs:
        print(f"NOT identical: {len(findings.differing_logs)} of {logs} normalized logs differ between runs:")
        for log, variants in findings.differing_logs.items():
            groups = "; ".join(f"{'missing' if digest == 'missing' else digest[:10]}: "
                               f"{len(labels)} runs (first {labels[0]})" for digest, labels in variants.items())
            print(f"  {log}: {len(variants)} variants ({groups})")
            for line in _first_diff(runs, log, variants):
                print(f"      {line}")
    else:
        print(f"identical: all {logs} normalized logs are the same in every run")
    evidence = rule_evidence(runs)
    if evidence:
        print(f"rule evidence over {len(runs)} runs (places where the rule took something out; "
              "varied: it differed between runs, constant: the same in every run):")
        for (target, rule), counts in sorted(evidence.items()):
            print(f"  {target} {rule}: {counts['varied']} varied, {counts['constant']} constant")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs per mode (default 20)")
    parser.add_argument("--target", action="append", dest="targets", metavar="KIND[@VERSION]",
                        help="target to run against, as blocktxn conform's --target (repeatable; "
                             "default emulator: every profile)")
    parser.add_argument("--qemu", action="append", default=[], metavar="BIN",
                        help="a real qemu-system-x86_64 for the qemu targets (repeatable)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--xdist-only", action="store_true", help="only runs with -n WORKERS")
    modes.add_argument("--serial-only", action="store_true", help="only runs without -n")
    parser.add_argument("--workers", default="auto", help="the -n value of xdist runs (default auto)")
    parser.add_argument("--cases", action="append", type=Path,
                        help=f"case files or directories (default {CASES_DIR.relative_to(ROOT)})")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep every run's logs, junit.xml and output in this directory")
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, extra = argv[:index], argv[index + 1:]
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args, extra


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    modes = ["xdist"] if args.xdist_only else ["serial"] if args.serial_only else ["serial", "xdist"]
    targets = args.targets or ["emulator"]
    paths = [path.resolve() for path in (args.cases or [CASES_DIR])]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:  # pytest would silently fall back to the configured testpaths
        print(f"repeat_runs: no such case file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="repeat-", dir=args.keep))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="btx-repeat-"))
    print(f"repeat_runs: {args.runs} runs x {'/'.join(modes)} on {', '.join(targets)} "
          f"({', '.join(str(path) for path in paths)}{' ' + ' '.join(extra) if extra else ''})", flush=True)
    runs: list[Run] = []
    try:
        for mode in modes:
            for number in range(1, args.runs + 1):
                run = run_once(number, mode, workdir, paths, targets, args.workers, extra, args.qemu)
                runs.append(run)
                counts = run.counts
                print(f"  {run.label}: exit {run.returncode}, {counts['passed']} passed, "
                      f"{counts['failed'] + counts['error']} failed, {run.seconds:.1f}s", flush=True)
        print()
        findings = analyse(runs)
        print_report(runs, findings)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"runs kept in {workdir}")
    if findings.flaky:
        return 1
    return 2 if findings.failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
