"""The QEMU-like command line: parsing in-process, and `python -m emulator` as a process.

Expected stderr texts are what real qemu-system-x86_64 7.2.22 printed for the same arguments.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import emulator_process as emulator

from emulator.cmdline import CmdlineError, parse_args
from emulator.qmp import Endpoint

ROOT = Path(__file__).resolve().parent.parent
BASE = ["-M", "none", "-nodefaults", "-display", "none"]
TIMEOUT = 30


def error_text(argv: list[str]) -> str:
    with pytest.raises(CmdlineError) as info:
        parse_args(argv)
    return info.value.format()


@pytest.mark.parametrize(("argv", "stderr"), [
    (["-foo"], "qemu-system-x86_64: -foo: invalid option\n"),
    ([*BASE, "-qmp"], "qemu-system-x86_64: -qmp: requires an argument\n"),
    ([*BASE, "-qmp", "bogus"], ("qemu-system-x86_64: -qmp bogus: 'bogus' is not a valid char driver\n"
                               "qemu-system-x86_64: -qmp bogus: parse error: bogus\n")),
    ([*BASE, "-qmp", "unix:/x.sock,server=on,wait=off,bogus=1"],
     ("qemu-system-x86_64: -qmp unix:/x.sock,server=on,wait=off,bogus=1: Invalid parameter 'bogus'\n"
     "qemu-system-x86_64: -qmp unix:/x.sock,server=on,wait=off,bogus=1: parse error: "
     "unix:/x.sock,server=on,wait=off,bogus=1\n")),
    ([*BASE, "-qmp", "unix:/x.sock,server=maybe,wait=off"],
     ("qemu-system-x86_64: -qmp unix:/x.sock,server=maybe,wait=off: Parameter 'server' expects 'on' or 'off'\n"
     "qemu-system-x86_64: -qmp unix:/x.sock,server=maybe,wait=off: parse error: "
     "unix:/x.sock,server=maybe,wait=off\n")),
    ([*BASE, "-qmp", "tcp:localhost,server=on,wait=off"],
     "qemu-system-x86_64: -qmp tcp:localhost,server=on,wait=off: parse error: tcp:localhost,server=on,wait=off\n"),
    ([*BASE, "-blockdev", "driver=bogus"],
     "qemu-system-x86_64: -blockdev driver=bogus: Parameter 'driver' does not accept value 'bogus'\n"),
    ([*BASE, "-blockdev", '{"driver":"file"}'],
     "qemu-system-x86_64: -blockdev {\"driver\":\"file\"}: Parameter 'filename' is missing\n"),
    ([*BASE, "-blockdev", '{"driver":"file",'],
     "qemu-system-x86_64: -blockdev {\"driver\":\"file\",: JSON parse error, premature EOI\n"),
    ([*BASE, "-blockdev", "driver=file,node-name=f,filename=x,aio=bogus"],
     ("qemu-system-x86_64: -blockdev driver=file,node-name=f,filename=x,aio=bogus: "
     "Parameter 'aio' does not accept value 'bogus'\n")),
    ([*BASE, "-blockdev", "qcow2,node-name"],
     "qemu-system-x86_64: -blockdev qcow2,node-name: Expected '=' after parameter 'node-name'\n"),
    ([*BASE, "-M", "bogus"], ("qemu-system-x86_64: unsupported machine type\n"
                             "Use -machine help to list supported machines\n")),
    ([*BASE, "-machine", "none,accel=bogus"], "qemu-system-x86_64: invalid accelerator bogus\n"),
    ([*BASE, "-accel", "bogus"], "qemu-system-x86_64: -accel bogus: invalid accelerator bogus\n"),
    ([*BASE, "-chardev", "socket,id=c0"], "qemu-system-x86_64: -chardev socket,id=c0: Unable to parse FD number \n"),
    ([*BASE, "-chardev", "socket,path=/x"], "qemu-system-x86_64: -chardev socket,path=/x: chardev: no id specified\n"),
    ([*BASE, "-chardev", "bogus,id=x"], "qemu-system-x86_64: -chardev bogus,id=x: 'bogus' is not a valid char driver name\n"),
    ([*BASE, "-chardev", "socket,id=c0,path=/a", "-chardev", "socket,id=c0,path=/b"],
     "qemu-system-x86_64: -chardev socket,id=c0,path=/b: Duplicate ID 'c0' for chardev\n"),
    ([*BASE, "-mon", "chardev=nosuch,mode=control"],
     "qemu-system-x86_64: -mon chardev=nosuch,mode=control: chardev \"nosuch\" not found\n"),
    ([*BASE, "-mon", "chardev"], "qemu-system-x86_64: -mon chardev: chardev \"chardev\" not found\n"),
    ([*BASE, "-mon", "bogus=1"], "qemu-system-x86_64: -mon bogus=1: Invalid parameter 'bogus'\n"),
    ([*BASE, "-mon", "chardev=c9,mode=bogus"],
     "qemu-system-x86_64: -mon chardev=c9,mode=bogus: Parameter 'mode' does not accept value 'bogus'\n"),
    ([*BASE, "-chardev", "socket,id=c0,path=/a,server=on,wait=off", "-mon", "chardev=c0,mode=control",
      "-mon", "chardev=c0,mode=control"],
     "qemu-system-x86_64: -mon chardev=c0,mode=control: Device 'c0' is in use\n"),
    ([*BASE, "-display", "bogus"], "qemu-system-x86_64: -display bogus: Parameter 'type' does not accept value 'bogus'\n"),
    (["-nodefaults", "-version", "-foo"], "qemu-system-x86_64: -foo: invalid option\n"),
])
def test_errors_as_qemu_prints_them(argv: list[str], stderr: str) -> None:
    assert error_text(argv) == stderr


def test_monitor_spellings() -> None:
    config = parse_args([*BASE, "-S", "-accel", "tcg", "-machine", "none,accel=tcg",
                         "-qmp", "unix:/a.sock,server=on,wait=off",
                         "-qmp", "unix:/b.sock,server,nowait",
                         "-qmp", "tcp:127.0.0.1:4444,server=on,wait=off",
                         "-chardev", "socket,id=mon0,path=/c.sock", "-mon", "chardev=mon0,mode=control",
                         "-chardev", "socket,id=mon1,path=/d.sock,server=on,wait=off", "-mon", "mon1,mode=control"])
    assert config.start_paused
    assert config.monitors == [
        Endpoint("unix", path="/a.sock"), Endpoint("unix", path="/b.sock"),
        Endpoint("tcp", host="127.0.0.1", port="4444"),
        Endpoint("unix", path="/c.sock", listen=False), Endpoint("unix", path="/d.sock"),
    ]
    assert config.monitors[0].origin == "-qmp unix:/a.sock,server=on,wait=off"


def test_block_options_are_visited() -> None:
    config = parse_args([*BASE, "-blockdev", "driver=null-co,node-name=n0,size=1048576,read-only=on",
                         "-blockdev", '{"driver":"null-co","node-name":"n1"}',
                         "-drive", "file=a,,b.qcow2,if=none,id=drive0,format=qcow2,cache=none,aio=native"])
    assert config.blockdevs[0][1] == {"driver": "null-co", "node-name": "n0", "read-only": True, "size": 1048576}
    assert config.blockdevs[1] == ('-blockdev {"driver":"null-co","node-name":"n1"}',
                                   {"driver": "null-co", "node-name": "n1"})
    assert config.drives[0][1] == {"file": "a,b.qcow2", "if": "none", "id": "drive0", "format": "qcow2",
                                   "cache": "none", "aio": "native"}


def test_version_and_help_actions() -> None:
    assert parse_args(["-version"]).action == "version"
    assert parse_args(["--version"]).action == "version"
    assert parse_args(["-h"]).action == "help"


# ---- as a process ------------------------------------------------------------------------------------

def test_process_version() -> None:
    done = emulator(["-version"])
    assert done.returncode == 0
    assert done.stdout == ("QEMU emulator version 7.2.22 (blocktxn-emulator)\n"
                           "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n")


def test_process_bad_options(tmp_path: Path) -> None:
    done = emulator(["-foo"])
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "qemu-system-x86_64: -foo: invalid option\n")
    missing = tmp_path / "nosuch.img"
    done = emulator([*BASE, "-drive", f"file={missing},if=none,id=d0"])
    assert done.returncode == 1
    assert done.stderr == (f"qemu-system-x86_64: -drive file={missing},if=none,id=d0: "
                           f"Could not open '{missing}': No such file or directory\n")
    done = emulator([*BASE, "-drive", f"file={missing},if=none,id=0bad"])
    assert done.stderr.endswith("Parameter 'id' expects an identifier\n"
                                "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.\n")
    sock = tmp_path / "nodir" / "x.sock"
    done = emulator([*BASE, "-qmp", f"unix:{sock},server=on,wait=off"])
    assert done.stderr == (f"qemu-system-x86_64: -qmp unix:{sock},server=on,wait=off: "
                           f"Failed to bind socket to {sock}: No such file or directory\n")


def test_process_serves_qmp_until_quit() -> None:
    sockdir = tempfile.mkdtemp(prefix="btx")
    path = os.path.join(sockdir, "q.sock")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "emulator", *BASE, "-S", "-qmp", f"unix:{path},server=on,wait=off"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        sock = _connect_when_ready(path, proc)
        buf = _read_lines(sock, 1)
        assert buf[0].startswith(b'{"QMP": ')
        sock.sendall(b'{"execute":"qmp_capabilities"}{"execute":"query-status"}{"execute":"quit"}')
        lines = _read_lines(sock, 4)
        assert lines[1] == b'{"return": {"status": "prelaunch", "singlestep": false, "running": false}}\r\n'
        assert b'"event": "SHUTDOWN"' in lines[2] and lines[3] == b'{"return": {}}\r\n'
        assert sock.recv(1) == b""
        sock.close()
        assert proc.wait(TIMEOUT) == 0
        assert not os.path.exists(path)
        assert proc.stderr is not None and proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        os.rmdir(sockdir)


def test_process_sigterm() -> None:
    sockdir = tempfile.mkdtemp(prefix="btx")
    path = os.path.join(sockdir, "q.sock")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "emulator", *BASE, "-qmp", f"unix:{path},server=on,wait=off"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        sock = _connect_when_ready(path, proc)
        _read_lines(sock, 1)
        sock.sendall(b'{"execute":"qmp_capabilities"}')
        _read_lines(sock, 1)
        proc.terminate()
        event = _read_lines(sock, 1)[0]
        assert b'"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-signal"}' in event
        assert proc.wait(TIMEOUT) == 0
        assert proc.stderr is not None and proc.stderr.read() == b"qemu-system-x86_64: terminating on signal 15\n"
        assert not os.path.exists(path)
        sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        os.rmdir(sockdir)


def _connect_when_ready(path: str, proc: subprocess.Popen[bytes]) -> socket.socket:
    """Connect as soon as the socket accepts (bounded by TIMEOUT), like a client polling QEMU."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _read_lines(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return [line + b"\n" for line in data.split(b"\n")[:count]]
