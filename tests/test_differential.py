"""Differential testing of the emulator against real QEMU 7.2 (conformance.differential.fuzz).

A bounded, derandomized run of hypothesis-drawn scenarios: every example drives real QEMU and
the in-process emulator through the same generated steps and compares them after every step
and at the end.  A divergence fails the test; hypothesis shrinks it and prints (as a note) a
ready-to-commit conformance case.  Skipped, with the reason printed, when QEMU is not installed;
``--require-qemu`` (conformance plugin option) turns the skip into a failure.

Longer runs: ``blocktxn fuzz --minutes M``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conformance.differential import fuzz as differential
from conformance.targets import INSTALL_HINT, QemuBinaries

#: Bounded for CI: about 20 s on 2 cores when nothing diverges (shrinking a divergence takes longer).
EXAMPLES = int(os.environ.get("BLOCKTXN_DIFFERENTIAL_EXAMPLES", "60"))
STEPS = int(os.environ.get("BLOCKTXN_DIFFERENTIAL_STEPS", "15"))
#: Known divergences not to generate (comma-separated names of differential_gen.AVOIDABLE);
#: empty by default, so that the test fails while the emulator still diverges.
#: Shrinking a divergence can take minutes; CI reports the example as found (set to 1 to
#: shrink here, or run ``blocktxn fuzz``, which shrinks and minimizes).
SHRINK = os.environ.get("BLOCKTXN_DIFFERENTIAL_SHRINK", "0") == "1"
AVOID = frozenset(filter(None, os.environ.get("BLOCKTXN_DIFFERENTIAL_AVOID", "").split(",")))


def _require_qemu(config: pytest.Config) -> bool:
    try:
        return bool(config.getoption("blocktxn_require_qemu"))
    except ValueError:  # the conformance plugin is not loaded
        return False


@pytest.fixture
def qemu(request: pytest.FixtureRequest) -> QemuBinaries:
    binaries = QemuBinaries.find()
    if not binaries.complete:
        message = f"QEMU not found ({', '.join(binaries.missing())}): {INSTALL_HINT}"
        print(f"test_differential: {message}")
        if _require_qemu(request.config):
            pytest.fail(f"--require-qemu: {message}", pytrace=False)
        pytest.skip(message)
    return binaries


@pytest.mark.timeout(900)
def test_emulator_matches_qemu(qemu: QemuBinaries, tmp_path: Path) -> None:
    """Real QEMU and the emulator agree on every generated scenario (fixed examples)."""
    config = differential.configure(qemu, tmp_path, avoid=AVOID)
    differential.run_scenarios(EXAMPLES, STEPS, derandomize=True, shrink=SHRINK)
    assert config.scenarios >= EXAMPLES
    assert config.reference_failures == []
