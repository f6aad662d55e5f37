"""The emulator target's interactive qemu-io session runs in-process (a thread over pipes); it must
say exactly what the same session says as a child process (`python -m emulator.tools.io`)."""

from __future__ import annotations

from pathlib import Path

import pexpect
import pytest

from conformance.imagetools import EmulatorImageTools, InProcessIoSession, QemuIoSession

COMMANDS = ["read -P 0 0 4k", "write -P 0x5a 0 512", "read -P 0x5b 0 512", "bogus",
            "alloc 0 64k", "map"]


def _transcript(session: QemuIoSession | InProcessIoSession) -> tuple[list[str], int]:
    outputs = [session.run(command) for command in COMMANDS]
    return outputs, session.close()


def _masked(outputs: list[str]) -> list[str]:
    """Without qemu-io's timing line (it varies run to run)."""
    return ["\n".join(line for line in text.splitlines() if "ops/sec" not in line) for text in outputs]


def test_in_process_session_says_what_the_child_process_says(tmp_path: Path) -> None:
    tools = EmulatorImageTools(cwd=tmp_path)
    first, second = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    for path in (first, second):
        tools.create(path, "qcow2", "1M").check()
    child_outputs, child_code = _transcript(
        QemuIoSession(tools.io_session_argv(["-f", "qcow2", str(first)]), cwd=tmp_path,
                      env=tools.io_session_env()))
    outputs, code = _transcript(tools.io_session(second, "qcow2"))
    with tools.io_session(second, "qcow2", read_only=True) as session:
        assert isinstance(session, InProcessIoSession)
    assert (_masked(outputs), code) == (_masked(child_outputs), child_code)
    assert code == 1  # the verification and the unknown command failed
    assert "wrote 512/512 bytes at offset 0" in outputs[1]


def test_in_process_session_reports_an_open_failure_and_is_bounded(tmp_path: Path) -> None:
    tools = EmulatorImageTools(cwd=tmp_path)
    with pytest.raises(pexpect.EOF, match="can't open device"):
        tools.io_session(tmp_path / "missing.qcow2", "qcow2", timeout=5)
    tools.create(tmp_path / "c.qcow2", "qcow2", "1M").check()
    session = tools.io_session(tmp_path / "c.qcow2", "qcow2", timeout=5)
    session.kill()  # stdin closed: the loop ends and the image is closed
    assert isinstance(session, InProcessIoSession) and session.status == 0
