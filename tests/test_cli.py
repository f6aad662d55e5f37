"""The `blocktxn` command line: README's command lines turn into the pytest runs they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from blocktxn_cli.main import CASES_DIR, ROOT, UNIT_DIR, plan
from conformance.targets import QemuBinaries

QEMU = QemuBinaries.find()
needs_qemu = pytest.mark.skipif(not QEMU.complete, reason="QEMU not found: apt-get install qemu-system-x86 qemu-utils")


@pytest.fixture(autouse=True)
def _in_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """README's commands run from the repository root, where emulator/ and conformance/ exist."""
    monkeypatch.chdir(ROOT)


def test_targets_named_like_folders_are_not_case_paths() -> None:
    chosen = plan(["conform", "--target", "emulator", "--target", "qemu"])
    assert chosen.paths == [CASES_DIR]
    assert chosen.args == ["--target", "emulator", "--target", "qemu"]


@needs_qemu
def test_qemu_binaries_are_options_not_case_paths() -> None:
    chosen = plan(["conform", "--target", "qemu", "--qemu", str(QEMU.system), "--qemu-img", str(QEMU.img),
                   "--qemu-io", str(QEMU.io)])
    assert chosen.paths == [CASES_DIR]
    assert chosen.args == ["--target", "qemu", "--qemu", str(QEMU.system), "--qemu-img", str(QEMU.img),
                           "--qemu-io", str(QEMU.io)]


@needs_qemu
def test_qemu_alone_means_the_qemu_target() -> None:
    chosen = plan(["conform", "--qemu", str(QEMU.system)])
    assert chosen.args[:2] == ["--target", "qemu"]


def test_a_binary_that_is_not_qemu_is_an_error_with_what_it_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        plan(["conform", "--qemu", "/bin/false"])
    message = str(stop.value.code)
    assert "--qemu /bin/false" in message and "does not print a QEMU version" in message
    assert "exit status 1" in message


def test_pytest_options_and_case_files_pass_through() -> None:
    chosen = plan(["conform", "-k", "backup", "-x", "-n", "auto", "conformance/cases/test_backup_full.py"])
    assert chosen.paths == []  # a named case file runs alone
    assert chosen.args == ["--target", "emulator", "-k", "backup", "-x", "-n", "auto",
                           str(CASES_DIR / "test_backup_full.py")]


def test_report_and_golden_dir_become_absolute(tmp_path: Path) -> None:
    chosen = plan(["conform", "--report", "out", "--golden-dir", "base-goldens", "--dump-logs", "logs"])
    assert chosen.args == ["--target", "emulator", "--golden-dir", str(ROOT / "base-goldens"),
                           "--blocktxn-report", str(ROOT / "out"), "--blocktxn-dump-logs", str(ROOT / "logs")]


@needs_qemu
def test_record_golden_records_from_the_named_qemu() -> None:
    chosen = plan(["record-golden", "--qemu", str(QEMU.system), "--golden-dir", "/tmp/base-goldens", "-k", "bitmaps"])
    assert chosen.paths == [CASES_DIR]
    assert chosen.args == ["--target", "qemu", "--update-golden", "--require-qemu", "--qemu", str(QEMU.system),
                           "--golden-dir", "/tmp/base-goldens", "-k", "bitmaps"]


def test_test_runs_unit_tests_and_cases() -> None:
    chosen = plan(["test", "-n", "auto"])
    assert chosen.paths == [UNIT_DIR, CASES_DIR]
    assert chosen.args[-2:] == ["-n", "auto"]


def _blocktxn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blocktxn_cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("command", ["conform", "test", "record-golden"])
def test_help_shows_blocktxn_options_first(command: str) -> None:
    done = _blocktxn(command, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: blocktxn {command} ")
    assert "--qemu BIN" in done.stdout and "--golden-dir DIR" in done.stdout
    assert "Any other option goes to pytest" in done.stdout
    assert len(done.stdout.splitlines()) < 60  # not pytest's 500-line help


def test_pytest_usage_errors_name_the_blocktxn_command() -> None:
    done = _blocktxn("conform", "--no-such-option")
    assert done.returncode == 4
    assert "blocktxn conform: error: unrecognized arguments: --no-such-option" in done.stderr
    assert "__main__" not in done.stderr and "python -m pytest" not in done.stderr
