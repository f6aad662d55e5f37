"""``blocktxn fuzz`` keeps its word: the deadline within seconds, a progress line at least every
10 s, the summary as the last line, exit 0 unless something diverged; against QEMU 7.2 and
(when unpacked) QEMU 10.0 with the matching emulator profile.  Needs real QEMU (skipped, with
the reason, otherwise)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from conformance.differential import fuzz as differential

SUMMARY = re.compile(r"^(\d+) scenarios, (\d+) divergences, (\d+) reference failures$")
QEMU_10 = Path("/root/.cache/blocktxn/qemu-10.0.2/usr/bin/qemu-system-x86_64")


def _fuzz(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], float]:
    started = time.monotonic()
    status = differential.main(list(args))
    elapsed = time.monotonic() - started
    return status, capsys.readouterr().out.splitlines(), elapsed


@pytest.mark.timeout(120)
def test_fuzz_keeps_the_deadline_reports_progress_and_ends_with_the_summary(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not found")
    status, lines, elapsed = _fuzz(capsys, "--minutes", "0.25", "--seed", "7", "--out", str(tmp_path),
                                   "--include-known-crashes", "--replays", "0")
    assert elapsed < 15 + 10, f"took {elapsed:.1f} s for a 15 s run"
    summary = SUMMARY.match(lines[-1])
    assert summary, lines[-5:]
    scenarios, divergences, _ = map(int, summary.groups())
    assert scenarios > 0
    assert any(line.startswith("blocktxn fuzz:   10 s: ") for line in lines), lines
    # Known crashes only count as reference failures: the exit status follows divergences.
    assert status == (1 if divergences else 0)


@pytest.mark.timeout(120)
def test_fuzz_runs_against_qemu_10(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if not QEMU_10.exists():
        pytest.skip(f"QEMU 10.0 not unpacked at {QEMU_10} (scripts/setup-qemu-10.sh)")
    status, lines, elapsed = _fuzz(capsys, "--minutes", "0.1", "--seed", "7", "--out", str(tmp_path),
                                   "--qemu", str(QEMU_10))
    assert elapsed < 6 + 10
    assert "QEMU emulator version 10.0" in lines[0] and "in its QEMU 10.0 profile" in lines[0]
    assert "QEMU_MODULE_DIR=" in lines[0]
    summary = SUMMARY.match(lines[-1])
    assert summary, lines[-5:]
    assert int(summary.group(1)) > 0 and int(summary.group(3)) == 0
    assert status == (1 if int(summary.group(2)) else 0)
