"""EmbeddedEmulator: in-process instances that start, serve, stop and leave nothing behind."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from pathlib import Path

import pytest
from helpers import qmp_session
from qemu.qmp import QMPClient

from emulator.launcher import EmbeddedEmulator, EmulatorStartError

TIMEOUT = 10.0
BASE = ["-M", "none", "-nodefaults", "-display", "none"]


def argv_for(sock: Path, *extra: str) -> list[str]:
    return [*BASE, "-qmp", f"unix:{sock},server=on,wait=off", *extra]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_start_serve_stop(sockdir: Path) -> None:
    sock = sockdir / "q.sock"
    with EmbeddedEmulator(argv_for(sock)) as emu:
        assert emu.is_running() and not emu.stopped
        assert qmp_session(sock, ("query-status", None)) == [{"status": "running", "singlestep": False, "running": True}]
    assert emu.stopped and not emu.is_running()
    assert not sock.exists()
    emu.stop()  # idempotent


def test_start_paused_and_drive_option(sockdir: Path) -> None:
    image = sockdir / "a.img"
    image.write_bytes(bytes(1 << 20))
    sock = sockdir / "q.sock"
    with EmbeddedEmulator(argv_for(sock, "-S", "-drive", f"file={image},if=none,id=drive0,format=raw")) as emu:
        status, blocks = qmp_session(sock, ("query-status", None), ("query-block", None))
        assert status == {"status": "prelaunch", "singlestep": False, "running": False}
        assert isinstance(blocks, list) and blocks[0]["device"] == "drive0"
    assert emu.stopped


def test_quit_stops_the_instance_by_itself(sockdir: Path) -> None:
    sock = sockdir / "q.sock"
    emu = EmbeddedEmulator(argv_for(sock), stdout=io.StringIO())
    emu.start()
    try:
        async def quit_session() -> None:
            client = QMPClient("quitter")
            await client.connect(str(sock))
            await client.execute("quit")
            try:
                await client.disconnect()
            except EOFError:  # the server closed first, as QEMU does
                pass

        asyncio.run(asyncio.wait_for(quit_session(), TIMEOUT))
        assert emu._thread is not None
        emu._thread.join(TIMEOUT)
        assert emu.stopped
        assert emu.machine is not None and emu.machine.shutdown_reason == "host-qmp-quit"
        assert not sock.exists()
    finally:
        emu.stop()


@pytest.mark.parametrize(("argv", "message"), [
    (["-foo"], "qemu-system-x86_64: -foo: invalid option"),
    ([*BASE, "-blockdev", "driver=bogus"],
     "qemu-system-x86_64: -blockdev driver=bogus: Parameter 'driver' does not accept value 'bogus'"),
    (["-version"], "-version does not start an emulator"),
])
def test_bad_command_line_raises(argv: list[str], message: str) -> None:
    with pytest.raises(EmulatorStartError) as info:
        EmbeddedEmulator(argv).start()
    assert str(info.value) == message


def test_start_up_failure_raises_and_cleans_up(sockdir: Path) -> None:
    sock = sockdir / "q.sock"
    missing = sockdir / "missing.qcow2"
    emu = EmbeddedEmulator(argv_for(sock, "-drive", f"file={missing},if=none,id=d0"))
    with pytest.raises(EmulatorStartError) as info:
        emu.start()
    assert str(info.value) == (f"qemu-system-x86_64: -drive file={missing},if=none,id=d0: "
                               f"Could not open '{missing}': No such file or directory")
    assert emu.stopped and not sock.exists()


def test_many_instances_at_once_and_in_a_row_without_leaks(sockdir: Path) -> None:
    threads_before = threading.active_count()
    fds_before = open_fds()
    for round_ in range(3):
        emus = [EmbeddedEmulator(argv_for(sockdir / f"q{round_}-{i}.sock")) for i in range(4)]
        for emu in emus:
            emu.start()
        for i, emu in enumerate(emus):
            assert qmp_session(sockdir / f"q{round_}-{i}.sock", ("query-version", None))[0]["qemu"]["major"] == 7
        for emu in emus:
            emu.stop(TIMEOUT)
    for _ in range(10):
        emu = EmbeddedEmulator(argv_for(sockdir / "again.sock"))
        emu.start()
        emu.stop(TIMEOUT)
    assert threading.active_count() == threads_before
    assert open_fds() == fds_before
    assert list(sockdir.iterdir()) == []
