"""The machine model and the command line QEMU's iotests harness passes: machine types, devices,
-machine/-device/-drive format=help, chardev fd=, monitors on stdio, the qtest protocol.

Expected texts were printed by real qemu-system-x86_64 7.2.22 and 10.0.2 (Debian) for the same
arguments; where a real binary is installed, the help texts are also compared with it live.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import emulator_process as emulator

from emulator.block.backend import BlockBackend
from emulator.cmdline import CmdlineError, parse_args
from emulator.machine import Machine
from emulator.machine.clock import VirtualClock
from emulator.machine.qtest import QtestServer
from emulator.machine.types import lookup

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30
QEMU10 = Path.home() / ".cache/blocktxn/qemu-10.0.2/bin/qemu-system-x86_64"
REAL = {"7.2": shutil.which("qemu-system-x86_64"), "10.0": str(QEMU10) if QEMU10.exists() else None}
IOTESTS_VM = ["-display", "none", "-vga", "none", "-chardev", "socket,id=mon,fd={fd}", "-mon",
              "chardev=mon,mode=control", "-qtest", "unix:path={qtest}", "-accel", "qtest",
              "-nodefaults", "-display", "none", "-accel", "qtest"]


# ---- help texts -----------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_machine_help_names_a_default_and_its_alias(version: str) -> None:
    out = emulator(["-machine", "help"], version)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Supported machines are:"
    default = next(line for line in lines if " (default)" in line).split()[0]
    assert default == ("pc-i440fx-7.2" if version == "7.2" else "pc-i440fx-10.0")
    assert any(line.startswith("pc ") and line.endswith(f"(alias of {default})") for line in lines)
    assert "none                 empty machine" in lines


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("args", [["-machine", "help"], ["-M", "help"],
                                  ["-nodefaults", "-display", "none", "-accel", "qtest", "-M", "none",
                                   "-device", "help"],
                                  ["-drive", "format=help"]])
def test_help_texts_equal_real_qemu(version: str, args: list[str]) -> None:
    out = emulator(args, version)
    assert out.returncode == 0
    binary = REAL[version]
    if binary is None:
        pytest.skip(f"real QEMU {version} not installed: compared with the recorded text only")
    real_args = ["-accel" if a == "-accel" else a for a in args]
    real_args = ["tcg" if a == "qtest" else a for a in real_args]  # Debian's QEMU has no qtest accel
    real = subprocess.run([binary, *real_args], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert out.stdout == real.stdout


def test_device_help_lists_virtio_blk_as_iotests_need() -> None:
    out = emulator(["-nodefaults", "-display", "none", "-accel", "qtest", "-M", "none", "-device", "help"])
    assert 'name "virtio-blk-pci", bus PCI, alias "virtio-blk"' in out.stdout


# ---- accepted command lines ------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["-M", "pc,accel=qtest"], ["-machine", "q35"], ["-machine", "pc-i440fx-7.2"], ["-accel", "tcg"],
    ["-accel", "qtest", "-accel", "tcg"], ["-vga", "none"], ["-serial", "none"], ["-monitor", "none"],
    ["-nographic"], ["-qmp", "stdio"], ["-qmp-pretty", "stdio"], ["-monitor", "stdio"],
    ["-object", "iothread,id=io0"], ["-object", "throttle-group,id=g0,x-bps-total=1000"],
    ["-device", "virtio-scsi,id=scsi0"], ["-qtest-log", "none"],
    ["-drive", "if=none,id=d0,file=x.qcow2"], ["-drive", "if=virtio,id=d0,file=x.qcow2"],
    ["-drive", "if=ide,id=d0,media=cdrom"], ["-blocktxn-version", "10.0"],
])
def test_accepted_options(argv: list[str]) -> None:
    config = parse_args(["-nodefaults", "-display", "none", *argv])
    assert config.action == "run"


def test_iotests_vm_command_line_parses() -> None:
    a, b = socket.socketpair()
    try:
        argv = [arg.format(fd=a.fileno(), qtest="/tmp/q.sock") for arg in IOTESTS_VM]
        config = parse_args([*argv, "-drive", ("if=virtio,id=drive0,file=t.qcow2,format=qcow2,"
                             "cache=writeback,aio=threads,node-name=node0")])
    finally:
        a.close()
        b.close()
    assert config.machine is None and lookup(config.version, config.machine) is not None
    assert config.accels[0] == "qtest"
    assert config.qtest is not None and config.qtest.path == "/tmp/q.sock" and not config.qtest.listen
    assert config.monitors[0].kind == "fd" and config.monitors[0].mode == "control"


@pytest.mark.parametrize(("argv", "version", "stderr"), [
    (["-bogus"], "7.2", "qemu-system-x86_64: -bogus: invalid option\n"),
    (["-machine", "foo"], "7.2",
     "qemu-system-x86_64: unsupported machine type\nUse -machine help to list supported machines\n"),
    (["-machine", "foo"], "10.0",
     'qemu-system-x86_64: unsupported machine type: "foo"\nUse -machine help to list supported machines\n'),
    (["-accel", "foo"], "7.2", "qemu-system-x86_64: -accel foo: invalid accelerator foo\n"),
    (["-device", "foo"], "7.2", "qemu-system-x86_64: -device foo: 'foo' is not a valid device model name\n"),
    (["-drive", "if=bogus"], "7.2", "qemu-system-x86_64: -drive if=bogus: unsupported bus type 'bogus'\n"),
    (["-object", "foo,id=x"], "7.2",
     "qemu-system-x86_64: -object foo,id=x: Parameter 'qom-type' does not accept value 'foo'\n"),
    (["-object", "iothread,id=io0", "-object", "iothread,id=io0"], "7.2",
     "qemu-system-x86_64: -object iothread,id=io0: Duplicate ID 'io0' for object\n"),
    (["-vga", "foo"], "7.2", "qemu-system-x86_64: unknown vga type: foo\n"),
    (["-serial", "foo"], "7.2",
     ("qemu-system-x86_64: -serial foo: 'foo' is not a valid char driver\n"
      "qemu-system-x86_64: -serial foo: could not connect serial device to character backend 'foo'\n")),
    (["-monitor", "foo"], "7.2", ("qemu-system-x86_64: -monitor foo: 'foo' is not a valid char driver\n"
                                  "qemu-system-x86_64: -monitor foo: parse error: foo\n")),
    (["-chardev", "socket,id=x,fd=99"], "7.2",
     "qemu-system-x86_64: -chardev socket,id=x,fd=99: File descriptor '99' is not a socket\n"),
    (["-M", "none", "-qtest", "unix:path=/nonexistent/q.sock"], "7.2",
     ("qemu-system-x86_64: Failed to connect to '/nonexistent/q.sock': No such file or directory\n"
      "qemu-system-x86_64: Failed to initialize device for qtest: \"unix:path=/nonexistent/q.sock\"\n")),
    (["-M", "none", "-device", "virtio-blk"], "7.2",
     "qemu-system-x86_64: -device virtio-blk: No 'PCI' bus found for device 'virtio-blk-pci'\n"),
    (["-M", "none", "-device", "ide-hd"], "7.2",
     "qemu-system-x86_64: -device ide-hd: No 'IDE' bus found for device 'ide-hd'\n"),
    (["-device", "virtio-blk"], "7.2", "qemu-system-x86_64: -device virtio-blk: drive property not set\n"),
    (["-device", "ide-hd"], "7.2", "qemu-system-x86_64: -device ide-hd: No drive specified\n"),
    (["-device", "scsi-hd,drive=x"], "7.2",
     "qemu-system-x86_64: -device scsi-hd,drive=x: No 'SCSI' bus found for device 'scsi-hd'\n"),
    (["-device", "virtio-blk,drive=nope"], "7.2",
     "qemu-system-x86_64: -device virtio-blk,drive=nope: Property 'virtio-blk-device.drive' can't find value 'nope'\n"),
    (["-device", "virtio-blk,id=a,foo=1"], "7.2",
     "qemu-system-x86_64: -device virtio-blk,id=a,foo=1: Property 'virtio-blk-pci.foo' not found\n"),
    (["-M", "none,foo=bar"], "7.2", "qemu-system-x86_64: Property 'none-machine.foo' not found\n"),
    (["-M", "pc,foo=bar"], "7.2", "qemu-system-x86_64: Property 'pc-i440fx-7.2-machine.foo' not found\n"),
    (["-incoming", "defer"], "7.2",
     "qemu-system-x86_64: -incoming defer: this option is not supported by the blocktxn emulator\n"),
    (["-device", "virtio-scsi,id=s", "-device", "virtio-scsi,id=s"], "7.2",
     "qemu-system-x86_64: -device virtio-scsi,id=s: Duplicate ID 's' for device\n"),
])
def test_bad_options_exit_1_with_qemus_text(argv: list[str], version: str, stderr: str) -> None:
    out = emulator(["-nodefaults", "-display", "none", *argv], version)
    assert (out.returncode, out.stderr) == (1, stderr)


def test_parse_errors_carry_the_option() -> None:
    with pytest.raises(CmdlineError) as info:
        parse_args(["-accel", "bogus"])
    assert info.value.format() == "qemu-system-x86_64: -accel bogus: invalid accelerator bogus\n"


# ---- devices -----------------------------------------------------------------------------------

def test_device_paths_and_qdev_names(tmp_path: Path) -> None:
    machine = Machine()
    machine.configure("7.2", lookup("7.2", None))

    def backend(name: str) -> BlockBackend:
        image = tmp_path / f"{name}.raw"
        image.write_bytes(b"\0" * 65536)
        return machine.block.drive_add({"id": name, "file": str(image), "format": "raw"})

    d0, d1, d2, d3 = backend("drive0"), backend("drive1"), backend("drive2"), backend("drive3")
    tree = machine.devices
    tree.add_drive_device("virtio", d0, {})
    tree.add({"driver": "virtio-scsi", "id": "scsi0"})
    tree.add({"driver": "scsi-hd", "drive": "drive1", "id": "sd0"})
    tree.add({"driver": "virtio-blk", "drive": "drive2", "id": "vb"})
    tree.add_drive_device("ide", d3, {"media": "cdrom"})
    assert d0.dev == "/machine/peripheral-anon/device[0]/virtio-backend"
    assert d1.dev == "sd0"
    assert d2.dev == "/machine/peripheral/vb/virtio-backend"
    assert (d3.dev, d3.removable) == ("/machine/unattached/device[18]", True)
    events: list[tuple[str, dict[str, object]]] = []
    tree.emit = lambda name, data: events.append((name, data))
    assert tree.delete("vb") is None  # PCI unplug waits for a guest
    unplug = tree.delete("sd0")
    assert unplug is not None
    unplug()
    assert events == [("DEVICE_DELETED", {"device": "sd0", "path": "/machine/peripheral/sd0"})]
    assert d1.dev is None
    machine.close()


# ---- qtest -------------------------------------------------------------------------------------

def test_qtest_protocol_moves_the_virtual_clock_only_under_qtest() -> None:
    clock = VirtualClock(qtest=True)
    fired: list[int] = []
    clock.add_timer(300, lambda: fired.append(clock.now_ns()))
    server = QtestServer(clock, None)
    assert server.process("clock_step 100") == "OK 100\n"
    assert server.process("clock_step") == "OK 300\n"  # to the next timer
    assert fired == [300]
    assert server.process("clock_set 5000") == "OK 5000\n"
    assert server.process("endianness") == "OK little\n"
    assert server.process("readl 0x1000") == "FAIL Unknown command 'readl'\n"
    assert QtestServer(VirtualClock(qtest=False), None).process("clock_step 5") == \
        "FAIL Unknown command 'clock_step'\n"


def _greeting(sock: socket.socket) -> dict[str, object]:
    sock.settimeout(TIMEOUT)
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "monitor closed before the greeting"
        data += chunk
    return json.loads(data.split(b"\n")[0])


def test_iotests_launch_qtest_socket_and_fd_monitor() -> None:
    """What iotests.VM does: QMP on an inherited socketpair fd, qtest connecting to our listener."""
    with tempfile.TemporaryDirectory() as tmp:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        qtest_path = os.path.join(tmp, "qtest.sock")
        listener.bind(qtest_path)
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        ours, theirs = socket.socketpair()
        argv = [arg.format(fd=theirs.fileno(), qtest=qtest_path) for arg in IOTESTS_VM]
        proc = subprocess.Popen([sys.executable, "-m", "emulator", *argv], cwd=ROOT,
                                pass_fds=[theirs.fileno()], stderr=subprocess.PIPE, text=True)
        theirs.close()
        try:
            qtest, _ = listener.accept()
            qtest.settimeout(TIMEOUT)
            assert _greeting(ours)["QMP"]
            qtest.sendall(b"clock_step 1000\n")
            assert qtest.recv(100) == b"OK 1000\n"
            ours.sendall(b'{"execute":"qmp_capabilities"}{"execute":"query-status"}{"execute":"quit"}')
            assert proc.wait(TIMEOUT) == 0
            stderr = proc.stderr.read() if proc.stderr else ""
            assert stderr.startswith("[I 0.000000] OPENED\n[R +")
            assert "] CLOSED\n" in stderr
            qtest.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            ours.close()
            listener.close()


def test_qmp_pretty_and_hmp_on_stdio() -> None:
    out = emulator(["-M", "none", "-nodefaults", "-display", "none", "-qmp-pretty", "stdio"],
                   input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n')
    assert out.stdout.startswith('{\n    "QMP": {\n')
    assert '{\n    "return": {\n    }\n}\n' in out.stdout  # QEMU opens and closes {} on two lines
    hmp = emulator(["-blocktxn-version", "7.2", "-M", "none", "-nodefaults", "-display", "none", "-monitor", "stdio"],
                   input="bogus\nquit\n")
    real = ("QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) "
            "b\x1b[K\x1b[Dbo\x1b[K\x1b[D\x1b[Dbog\x1b[K\x1b[D\x1b[D\x1b[Dbogu\x1b[K"
            "\x1b[D\x1b[D\x1b[D\x1b[Dbogus\x1b[K\r\nunknown command: 'bogus'\r\n(qemu) "
            "q\x1b[K\x1b[Dqu\x1b[K\x1b[D\x1b[Dqui\x1b[K\x1b[D\x1b[D\x1b[Dquit\x1b[K\r\n")
    assert hmp.stdout == real.replace("\r\n", "\n")  # text mode reads CRLF as LF
    assert hmp.returncode == 0


def test_drive_default_ids_and_interfaces_as_qemu(tmp_path: Path) -> None:
    """Real QEMU 7.2: `-drive file=X` is if=ide on pc ("ide0-hd0", then "ide0-cd1" for a CD-ROM)
    and if=none on -M none ("none0"), where if=ide and if=floppy have no bus."""
    from emulator.cmdline import default_drive_id

    assert [default_drive_id("ide", 0, False), default_drive_id("ide", 1, True),
            default_drive_id("ide", 2, False), default_drive_id("virtio", 1, False),
            default_drive_id("none", 0, False), default_drive_id("scsi", 8, False)] == \
        ["ide0-hd0", "ide0-cd1", "ide1-hd0", "virtio1", "none0", "scsi1-hd1"]
    image = tmp_path / "x.raw"
    image.write_bytes(b"\0" * 65536)
    stdin = '{"execute":"qmp_capabilities"}{"execute":"query-block"}{"execute":"quit"}'
    out = emulator(["-nodefaults", "-display", "none", "-M", "none", "-qmp", "stdio",
                    "-drive", f"file={image},format=raw"], input=stdin)
    assert '"device": "none0"' in out.stdout and '"qdev"' not in out.stdout
    bad = emulator(["-nodefaults", "-display", "none", "-M", "none", "-drive", f"file={image},if=floppy"])
    assert bad.stderr == (f"qemu-system-x86_64: -drive file={image},if=floppy: "
                          "machine type does not support if=floppy,bus=0,unit=0\n")
