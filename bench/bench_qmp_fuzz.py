"""The QMP input fuzzer at volume: N generated inputs against the emulator (a separate
process, as QEMU would be), a sample of the small ones also against real QEMU 7.2.

Reports crashes (the process died, logged an error, or a handler raised), hangs (no answer
within the input's time bound), unexpected closes, malformed replies, oracle failures
(pipelined ids out of order), and differences from QEMU: error class (or reply count), and
text.  Failing inputs are written to --out as reproducers.  The goal is zero of everything.

Usage: python bench/bench_qmp_fuzz.py [--inputs 100000] [--seed 1] [--compare-every 20]
                                      [--max-size 1048576] [--batch 100] [--out DIR] [--no-qemu]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conformance.qmpfuzz.campaign import (
    COMPARE_LIMIT,
    Campaign,
    Finding,
    LiveTarget,
    fuzz_targets,
    qemu_available,
)
from conformance.qmpfuzz.inputs import InputGenerator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", default="1")
    parser.add_argument("--compare-every", type=int, default=20,
                        help="also run every Nth input small enough against QEMU (0: never)")
    parser.add_argument("--compare-limit", type=int, default=COMPARE_LIMIT,
                        help="largest input sent to QEMU, in bytes (QEMU reads slowly)")
    parser.add_argument("--max-size", type=int, default=1 << 20, help="largest generated input")
    parser.add_argument("--batch", type=int, default=100, help="inputs between server health checks")
    parser.add_argument("--out", type=Path, default=None, help="write failing inputs here")
    parser.add_argument("--no-qemu", action="store_true")
    parser.add_argument("--qemu", default=None,
                        help="qemu-system-x86_64 to compare with (default: PATH); the emulator is "
                             "told to behave like its version")
    parser.add_argument("--qemu-img", default=None, help="qemu-img (default: beside --qemu, then PATH)")
    parser.add_argument("--qemu-io", default=None, help="qemu-io (default: beside --qemu, then PATH)")
    args = parser.parse_args()

    emulator_target, qemu_target, profile = fuzz_targets(args.qemu, args.qemu_img, args.qemu_io)
    use_qemu = (not args.no_qemu and args.compare_every > 0 and qemu_target is not None
                and qemu_available(args.qemu))
    generator = InputGenerator(args.seed, max_size=args.max_size, drive="drive0")
    shown: Counter[str] = Counter()

    def on_finding(finding: Finding) -> None:
        shown[finding.category] += 1
        if shown[finding.category] <= 5:
            print(finding.describe()[:1500], flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            stem = args.out / f"{finding.category}-{shown[finding.category]:04d}"
            stem.with_suffix(".bin").write_bytes(finding.item.data)
            stem.with_suffix(".txt").write_text(finding.describe() + "\n")

    print(f"bench_qmp_fuzz: {args.inputs} inputs, seed {args.seed}, max size {args.max_size}, "
          f"{'every ' + str(args.compare_every) + 'th input up to ' + str(args.compare_limit) + ' bytes against QEMU' if use_qemu else 'no QEMU'}",
          flush=True)
    print(f"bench_qmp_fuzz: real QEMU {profile.binaries.version}; emulator profile "
          f"{profile.version_text}", flush=True)
    emulator = LiveTarget(emulator_target, name="emulator")
    qemu = LiveTarget(qemu_target, name="qemu") if use_qemu and qemu_target is not None else None
    try:
        campaign = Campaign(emulator, qemu, batch_size=args.batch, compare_limit=args.compare_limit,
                            compare_every=args.compare_every, on_finding=on_finding)
        started = time.monotonic()
        step = max(1, args.inputs // 20)
        done = 0
        while done < args.inputs:
            count = min(step, args.inputs - done)
            campaign.run(generator.inputs(count))
            done += count
            report = campaign.report
            print(f"  {done:>7} inputs, {time.monotonic() - started:7.1f}s, "
                  f"{len(report.findings)} findings, {report.compared} compared", flush=True)
        report = campaign.report
        print()
        print(report.summary())
        for problem in report.server_problems:
            print(f"  server problem: {problem}")
        if qemu is not None:
            print(f"QEMU side problems: {qemu.problems() or 'none'}")
    finally:
        emulator.stop()
        if qemu is not None:
            qemu.stop()
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
