"""Differential fuzzing throughput: scenarios per minute, the pair and each side apart.

Runs `blocktxn fuzz`'s own machinery (conformance.differential.fuzz: hypothesis draws scenarios from
the seed, real QEMU and the emulator run them in lockstep, and are compared) for a fixed time,
without shrinking, and reports:

- the pair: scenarios per minute of wall time (set-up, both sides, images compared with real
  qemu-img, hypothesis);
- each side: scenarios per minute of that side's own time (conformance.differential.runner.s
  Side.seconds: its set-up, steps, settling and quit), so QEMU's start-up is QEMU's cost.  The
  two sides share the harness's event loop, so each side's time includes some of the other's
  client work: an upper bound of its cost;
- with ``--pair emulator``, the emulator against itself (the same scenarios, both sides the
  emulator, still judged with real qemu-img): the pair's rate is a lower bound of the emulator
  side's, since one side costs less than both plus the comparisons.

Usage: python bench/bench_differential.py [--seconds 60] [--seed 1] [--qemu BIN]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance.differential.fuzz import configure, run_scenarios, side_rates
from conformance.differential.runner import Divergence, ReferenceFailure
from conformance.differential.targets import FuzzProfile
from conformance.targets import EmulatorTarget, Target


@dataclass(frozen=True)
class _EmulatorPair(FuzzProfile):
    """The emulator as the reference too (real QEMU's qemu-img still compares the images)."""

    def reference(self) -> Target:
        return EmulatorTarget(self.emulator_version)


def measure(seconds: float, *, qemu: str | None = None, seed: int = 1, steps: int = 25,
            examples: int = 20, pair: str = "qemu") -> dict[str, Any] | None:
    """Fuzz for `seconds` (`pair` "emulator": the emulator against itself); the rates (None
    when real QEMU is missing)."""
    profile = FuzzProfile.find(qemu)
    if not profile.binaries.complete:
        return None
    if pair == "emulator":
        profile = _EmulatorPair(profile.binaries, profile.version)
    workroot = Path(tempfile.mkdtemp(prefix="btxbenchfuzz"))
    started = time.monotonic()
    config = configure(profile, workroot, deadline=started + seconds, raise_reference_failures=False)
    seeds = random.Random(seed)
    try:
        while not config.out_of_time():
            try:
                run_scenarios(examples, steps, seed=seeds.randrange(2**32), shrink=False)
            except (Divergence, ReferenceFailure):
                pass  # counted in the config; the bench measures speed, `blocktxn fuzz` findings
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    wall = time.monotonic() - started
    reference, candidate = side_rates(config)
    return {
        "scenarios": config.scenarios, "abandoned": config.abandoned, "steps": config.steps,
        "wall_s": wall, "pair_per_min": config.scenarios / wall * 60,
        "emulator_per_min": candidate, "qemu_per_min": reference,
        "emulator_s": config.candidate_seconds, "qemu_s": config.reference_seconds,
        "diverging_scenarios": config.diverging_scenarios, "qemu": profile.binaries.version,
        "pair": pair,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--qemu", default=None)
    parser.add_argument("--pair", choices=["qemu", "emulator"], default="qemu",
                        help="the reference: real QEMU (default), or the emulator itself")
    args = parser.parse_args()
    result = measure(args.seconds, qemu=args.qemu, seed=args.seed, pair=args.pair)
    if result is None:
        print("differential: real QEMU not found (apt-get install qemu-system-x86 qemu-utils)")
        return 0
    against = result["qemu"] if args.pair == "qemu" else "the emulator itself"
    print(f"differential fuzzing against {against}, {result['wall_s']:.0f} s: "
          f"{result['scenarios']} scenarios ({result['steps']} steps)")
    print(f"  pair      {result['pair_per_min']:8.0f} scenarios/min of wall time")
    print(f"  emulator  {result['emulator_per_min']:8.0f} scenarios/min of its own time "
          f"({result['emulator_s']:.1f} s)")
    print(f"  qemu      {result['qemu_per_min']:8.0f} scenarios/min of its own time "
          f"({result['qemu_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
