"""The conformance suite's speed on the emulator vs real QEMU, measured side by side in one run.

Runs the suite the way ``blocktxn conform`` does (blocktxn_cli.main.pytest_argv: the same pytest
child, plugins and options) once per side and mode, and reports two things, kept apart:

- *wall*: the whole pytest process, start-up, collection and summary included;
- *cases*: the sum of the cases' own times (set-up + call + teardown, from JUnit XML);
- *cpu*: the CPU time (user + system) of the pytest process and everything it started and
  waited for (QEMU, qemu-img), less sensitive than wall time to other load on a shared machine.

The emulator side is ``--target emulator`` (its 7.2 and 10.0 profiles); the QEMU side is
``--target qemu`` with every real QEMU found (7.2 on PATH, 10.0 from scripts/setup-qemu-10.sh)
or given with --qemu, so both sides run the same cases against the same goldens.
Usage: python bench/bench_suite.py [--runs 3] [-n auto] [--qemu BIN]... [-- extra pytest args]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blocktxn_cli.main import CASES_DIR, discover_qemus, pytest_argv

#: Bound of one suite run (a hung run fails the bench, it does not hang it).
RUN_TIMEOUT = 1800.0


@dataclass(frozen=True)
class SuiteRun:
    """One pytest process: its wall time, the sum of its cases' times, how many ran, and the
    CPU time of the process and its children."""

    wall: float
    cases: float
    count: int
    cpu: float = 0.0

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def side_args(side: str, qemus: list[str]) -> list[str]:
    """The pytest arguments of one side: ``emulator`` or ``qemu`` (with its binaries)."""
    if side == "emulator":
        return ["--target", "emulator"]
    return ["--target", "qemu", *[arg for qemu in qemus for arg in ("--qemu", qemu)]]


def run_suite(side: str, qemus: list[str], extra: list[str], *, workers: str | None = None,
              paths: list[Path] | None = None) -> SuiteRun:
    """Run the suite once (serially, or with ``-n workers``) and time it."""
    with tempfile.TemporaryDirectory(prefix="btxsuite") as tmp:
        junit = Path(tmp) / "junit.xml"
        args = [*side_args(side, qemus), "-q", f"--junitxml={junit}", "-o", "junit_family=xunit1",
                *(["-n", workers] if workers else []), *extra]
        argv = pytest_argv(paths or [CASES_DIR], args, "bench_suite")
        before = children_cpu()
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False,
                              timeout=RUN_TIMEOUT)
        wall = time.perf_counter() - start
        cpu = children_cpu() - before
        if done.returncode not in (0, 5) or not junit.exists():
            print(done.stdout[-3000:], done.stderr[-2000:], file=sys.stderr)
            raise RuntimeError(f"the suite failed on the {side} side (exit {done.returncode})")
        cases = [case for case in ET.parse(junit).getroot().iter("testcase")
                 if case.find("skipped") is None]
        return SuiteRun(wall, sum(float(case.get("time", 0)) for case in cases), len(cases), cpu)


def children_cpu() -> float:
    """User + system seconds of every child process waited for so far (and of theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_run(runs: list[SuiteRun]) -> SuiteRun:
    """Medians of wall and case times (the count is the same every run)."""
    return SuiteRun(statistics.median(r.wall for r in runs), statistics.median(r.cases for r in runs),
                    runs[0].count, statistics.median(r.cpu for r in runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("-n", dest="workers", default=None, help="pytest-xdist workers (e.g. auto)")
    parser.add_argument("--qemu", action="append", default=None, metavar="BIN")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    qemus = args.qemu if args.qemu is not None else [str(b.system) for b in discover_qemus()]
    sides = ["emulator", "qemu"] if qemus else ["emulator"]
    results: dict[str, list[SuiteRun]] = {side: [] for side in sides}
    for _ in range(args.runs):
        for side in sides:  # interleaved, so that a load change hits both sides alike
            results[side].append(run_suite(side, qemus, args.extra, workers=args.workers))
    mode = f"-n {args.workers}" if args.workers else "serial"
    print(f"conformance suite, {mode}, median of {args.runs}")
    medians = {side: median_run(runs) for side, runs in results.items()}
    for side, run in medians.items():
        print(f"  {side:9s} wall {run.wall:7.2f} s   cases {run.cases:7.2f} s   cpu {run.cpu:7.2f} s   "
              f"({run.count} cases, {run.cases / max(run.count, 1) * 1000:6.1f} ms/case)")
    if "qemu" in medians:
        emu, qemu = medians["emulator"], medians["qemu"]
        print(f"  speed-up emulator vs qemu: wall {qemu.wall / emu.wall:.1f}x, "
              f"sum of case times {qemu.cases / emu.cases:.1f}x, cpu {qemu.cpu / emu.cpu:.1f}x")
    else:
        print("  qemu: not found (apt-get install qemu-system-x86 qemu-utils)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
