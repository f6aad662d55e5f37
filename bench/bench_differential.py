"""Differential fuzzing throughput: scenarios per minute, the pair and each side apart.

Runs `blocktxn fuzz`'s own machinery (conformance.differential: hypothesis draws scenarios from
the seed, real QEMU and the emulator run them in lockstep, and are compared) for a fixed time,
without shrinking, and reports:

- the pair: scenarios per minute of wall time (set-up, both sides, images compared with real
  qemu-img, hypothesis);
- each side: scenarios per minute of that side's own time (conformance.differential_runner's
  Side.seconds: its set-up, steps, settling and quit), so QEMU's start-up is QEMU's cost.

Usage: python bench/bench_differential.py [--seconds 60] [--seed 1] [--qemu BIN]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance.differential import configure, run_scenarios, side_rates
from conformance.differential_runner import Divergence, ReferenceFailure
from conformance.differential_targets import FuzzProfile


def measure(seconds: float, *, qemu: str | None = None, seed: int = 1, steps: int = 25,
            examples: int = 20) -> dict[str, Any] | None:
    """Fuzz for `seconds`; the rates (None when real QEMU is missing)."""
    profile = FuzzProfile.find(qemu)
    if not profile.binaries.complete:
        return None
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
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--qemu", default=None)
    args = parser.parse_args()
    result = measure(args.seconds, qemu=args.qemu, seed=args.seed)
    if result is None:
        print("differential: real QEMU not found (apt-get install qemu-system-x86 qemu-utils)")
        return 0
    print(f"differential fuzzing against {result['qemu']}, {result['wall_s']:.0f} s: "
          f"{result['scenarios']} scenarios ({result['steps']} steps)")
    print(f"  pair      {result['pair_per_min']:8.0f} scenarios/min of wall time")
    print(f"  emulator  {result['emulator_per_min']:8.0f} scenarios/min of its own time "
          f"({result['emulator_s']:.1f} s)")
    print(f"  qemu      {result['qemu_per_min']:8.0f} scenarios/min of its own time "
          f"({result['qemu_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
