"""blkdebug breakpoints (qemu-io break / remove_break / resume / wait_break) and how a backup job
stops at one: QEMU's texts, the one-shot rule, busy reporting, and no hang at exit."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from helpers import qmp_cmd as cmd

from emulator.block.image import create_image
from emulator.commands import new_machine
from emulator.machine import Machine

MiB = 1 << 20


def hmp(machine: Machine, line: str) -> str:
    cmd(machine, "human-monitor-command", command_line=line)
    out = machine.stdout.getvalue()  # type: ignore[attr-defined]
    machine.stdout = io.StringIO()
    return str(out)


async def pause_then_release(machine: Machine) -> dict[str, Any]:
    """block-job-pause while drive0's request is stopped at the breakpoint, then let the request
    go; returns the job's query-block-jobs entry once it is parked (paused and not busy)."""
    cmd(machine, "block-job-pause", device="drive0")
    hmp(machine, 'qemu-io drive0 "remove_break bp_drive0"')
    await machine.jobs.wait_until(
        lambda: any(info["paused"] and not info["busy"]
                    for info in cmd(machine, "query-block-jobs")) or not len(machine.jobs),
        timeout=5)
    (info,) = cmd(machine, "query-block-jobs")
    return dict(info)


def make(tmp_path: Path) -> Machine:
    src, tgt = tmp_path / "s.qcow2", tmp_path / "t.qcow2"
    create_image(str(src), "qcow2", 64 * MiB)
    create_image(str(tgt), "qcow2", 64 * MiB)
    machine = new_machine(stdout=io.StringIO())
    machine.block.drive_add({"if": "none", "id": "drive0", "file": f"blkdebug::{src}",
                             "format": "qcow2"})
    machine.block.drive_add({"if": "none", "id": "drive1", "file": str(tgt), "format": "qcow2"})
    hmp(machine, 'qemu-io drive0 "write -P 0xd5 1M 32k"')
    return machine


def test_breakpoint_commands_and_texts(tmp_path: Path) -> None:
    machine = make(tmp_path)
    assert hmp(machine, 'qemu-io drive0 "break read_aio bp0"') == ""
    assert hmp(machine, 'qemu-io drive0 "break nosuch bp0"') == \
        "Could not set breakpoint: No such file or directory\n"
    assert hmp(machine, 'qemu-io drive1 "break read_aio bp0"') == \
        "Could not set breakpoint: Operation not supported\n"
    assert hmp(machine, 'qemu-io drive0 "resume bp0"') == \
        "Could not resume request: No such file or directory\n"
    assert hmp(machine, 'qemu-io drive0 "remove_break bp0"') == ""
    assert hmp(machine, 'qemu-io drive0 "remove_break bp0"') == \
        "Could not remove breakpoint bp0: No such file or directory\n"
    machine.close()


def test_backup_stops_at_breakpoint_until_removed(tmp_path: Path) -> None:
    async def scenario() -> None:
        machine = make(tmp_path)
        machine.jobs.loop = asyncio.get_running_loop()
        hmp(machine, 'qemu-io drive0 "break read_aio bp_drive0"')
        cmd(machine, "blockdev-backup", device="drive0", target="drive1", sync="full")
        await asyncio.sleep(0.2)
        info = cmd(machine, "query-block-jobs")[0]
        assert info["status"] == "running" and info["busy"] is True  # inside the stopped read
        assert info["offset"] < info["len"]
        cmd(machine, "block-job-cancel", device="drive0")
        await asyncio.sleep(0.05)
        assert cmd(machine, "query-block-jobs") != []  # cancel waits for the request
        hmp(machine, 'qemu-io drive0 "remove_break bp_drive0"')
        await machine.jobs.wait_until(lambda: len(machine.jobs) == 0, timeout=5)
        machine.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_exit_with_a_stopped_request_does_not_hang(tmp_path: Path) -> None:
    async def scenario() -> None:
        machine = make(tmp_path)
        machine.jobs.loop = asyncio.get_running_loop()
        hmp(machine, 'qemu-io drive0 "break read_aio bp_drive0"')
        cmd(machine, "blockdev-backup", device="drive0", target="drive1", sync="full")
        await asyncio.sleep(0.1)
        machine.close()
        assert len(machine.jobs) == 0

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_pause_requested_at_a_breakpoint_stops_the_copy(tmp_path: Path) -> None:
    """iotest 055's do_test_pause: a backup stopped at a breakpoint is asked to pause, then the
    breakpoint goes.  The pause must take effect before the copy ends (backup_pause cancels the
    block-copy call: no new task starts), so the job is found paused and idle with data left."""
    async def scenario() -> None:
        machine = make(tmp_path)
        machine.jobs.loop = asyncio.get_running_loop()
        hmp(machine, 'qemu-io drive0 "write -P 0x5a 0 64M"')
        hmp(machine, 'qemu-io drive0 "break read_aio bp_drive0"')
        cmd(machine, "drive-backup", device="drive0", target=str(tmp_path / "t2.qcow2"),
            format="qcow2", sync="full")
        info = await pause_then_release(machine)
        assert info["paused"] and not info["busy"] and info["offset"] < info["len"]
        await asyncio.sleep(0.3)
        assert cmd(machine, "query-block-jobs")[0]["offset"] == info["offset"]  # stays paused
        cmd(machine, "block-job-resume", device="drive0")
        await machine.jobs.wait_until(lambda: len(machine.jobs) == 0, timeout=10)
        machine.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_pause_during_the_call_pauses_even_when_everything_is_copied(tmp_path: Path) -> None:
    """iotest 055 on a mostly empty image: every other copy task ends while one read waits at the
    breakpoint, then the pause comes.  QEMU's backup_pause cancels the running block-copy call,
    and backup_loop checks for a cancelled call before a successful one: the job pauses (and a
    new call after the resume finds nothing left), it does not complete while paused."""
    async def scenario() -> None:
        machine = make(tmp_path)
        machine.jobs.loop = asyncio.get_running_loop()
        hmp(machine, 'qemu-io drive0 "break read_aio bp_drive0"')
        cmd(machine, "drive-backup", device="drive0", target=str(tmp_path / "t3.qcow2"),
            format="qcow2", sync="full")
        await asyncio.sleep(0.3)  # every task but the stopped one is done by now
        info = await pause_then_release(machine)
        assert info["paused"] and not info["busy"]
        cmd(machine, "block-job-resume", device="drive0")
        await machine.jobs.wait_until(lambda: len(machine.jobs) == 0, timeout=10)
        machine.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_suspend_and_resume_lines_unless_qtest(tmp_path: Path) -> None:
    """blkdebug prints "Suspended request" when a request stops and "Resuming request" when
    resume (or remove_break) lets it go, on stdout, only `if (!qtest_enabled())`."""
    async def scenario(qtest: bool) -> tuple[str, str]:
        machine = make(tmp_path / ("q" if qtest else "n"))
        machine.clock.qtest = qtest
        machine.jobs.loop = asyncio.get_running_loop()
        hmp(machine, 'qemu-io drive0 "break read_aio bp0"')
        cmd(machine, "blockdev-backup", device="drive0", target="drive1", sync="full")
        await machine.jobs.wait_until(  # the job's first data read (at 1M) stops
            lambda: cmd(machine, "query-block-jobs")[0]["busy"], timeout=5)
        started = machine.stdout.getvalue()  # type: ignore[attr-defined]
        machine.stdout = io.StringIO()
        resumed = hmp(machine, 'qemu-io drive0 "resume bp0"')
        await machine.jobs.wait_until(lambda: len(machine.jobs) == 0, timeout=5)
        machine.close()
        return started, resumed

    async def both() -> None:
        assert await scenario(False) == ("blkdebug: Suspended request 'bp0'\n",
                                         "blkdebug: Resuming request 'bp0'\n")
        assert await scenario(True) == ("", "")

    (tmp_path / "q").mkdir()
    (tmp_path / "n").mkdir()
    asyncio.run(asyncio.wait_for(both(), 10))
