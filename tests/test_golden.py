"""conformance.compare.golden: header handling, missing goldens, and mismatch diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.compare.golden import Golden, GoldenMismatch, GoldenMissing

BODY = "case: test_mod/test_case\n\n== conversation\n-> {\"execute\": \"quit\"}\n"


def test_write_then_check_ignores_the_header(tmp_path: Path) -> None:
    golden = Golden.for_case(tmp_path, "test_mod", "test_case")
    assert golden.write(BODY, "QEMU emulator version 7.2.22 (Debian)") is True
    text = golden.path.read_text()
    assert golden.path == tmp_path / "test_mod" / "test_case.log"
    assert text.startswith("# blocktxn golden log for test_mod/test_case\n")
    assert "# recorded from: QEMU emulator version 7.2.22 (Debian)\n" in text
    assert golden.body() == BODY
    golden.check(BODY)
    assert golden.write(BODY, "QEMU emulator version 7.2.23") is False  # body unchanged


def test_missing_golden_fails_with_a_recording_hint(tmp_path: Path) -> None:
    golden = Golden.for_case(tmp_path, "test_mod", "test_case")
    with pytest.raises(GoldenMissing, match="blocktxn record-golden --qemu BIN -k test_case"):
        golden.check(BODY)


def test_mismatch_shows_a_unified_diff_and_the_recording_version(tmp_path: Path) -> None:
    golden = Golden.for_case(tmp_path, "test_mod", "test_case")
    golden.write(BODY, "QEMU emulator version 7.2.22")
    with pytest.raises(GoldenMismatch) as info:
        golden.check(BODY.replace("quit", "stop"))
    message = str(info.value)
    assert "--- golden/test_mod/test_case.log" in message and "+++ actual" in message
    assert '--> {"execute": "quit"}' in message and '+-> {"execute": "stop"}' in message
    assert "QEMU emulator version 7.2.22" in message
