"""The conformance suite's speed on the emulator vs real QEMU, measured side by side in one run.

Runs `pytest conformance/cases --target T` serially for each target and prints the wall time of the
run and the summed per-case time (from JUnit XML), with the emulator/QEMU ratios.  The emulator
target runs in-process by default; pass --emulator-process to measure the separate-process mode.
Usage: python bench/bench_suite.py [--runs 1] [--emulator-process] [-- extra pytest args]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_suite(target: str, extra: list[str]) -> tuple[float, float, int]:
    """(wall seconds, summed case seconds, cases) of one serial run."""
    with tempfile.TemporaryDirectory(prefix="btxsuite") as tmp:
        junit = Path(tmp) / "junit.xml"
        argv = [sys.executable, "-m", "pytest", "conformance/cases", "--target", target, "-q",
                "-p", "no:randomly", f"--junitxml={junit}", *extra]
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode not in (0, 5):
            print(done.stdout[-3000:], done.stderr[-2000:])
            raise SystemExit(f"the suite failed on {target} (exit {done.returncode})")
        cases = ET.parse(junit).getroot().iter("testcase")
        times = [float(case.get("time", 0)) for case in cases if case.find("skipped") is None]
        return wall, sum(times), len(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--emulator-process", action="store_true")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    emulator_extra = (["--emulator-process"] if args.emulator_process else []) + args.extra
    results: dict[str, list[tuple[float, float, int]]] = {"emulator": [], "qemu": []}
    have_qemu = shutil.which("qemu-system-x86_64") is not None
    for _ in range(args.runs):
        results["emulator"].append(run_suite("emulator", emulator_extra))
        if have_qemu:
            results["qemu"].append(run_suite("qemu", args.extra))
    print(f"conformance suite, serial, best of {args.runs}")
    best = {name: min(runs) for name, runs in results.items() if runs}
    for name, (wall, cases_time, count) in best.items():
        print(f"  {name:9s} wall {wall:7.2f} s   cases {cases_time:7.2f} s   "
              f"({count} cases, {cases_time / max(count, 1) * 1000:6.1f} ms/case)")
    if "qemu" in best:
        (ew, ec, _), (qw, qc, _) = best["emulator"], best["qemu"]
        print(f"  speed-up emulator vs qemu: wall {qw / ew:.1f}x, per-case time {qc / ec:.1f}x")
    else:
        print("  qemu: not found (apt-get install qemu-system-x86 qemu-utils)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
