"""Socket hygiene and file-system footprint of the emulator process.

- The QMP unix socket is created mode 0600, even under umask 000, and removed when the emulator
  ends by `quit`, SIGTERM, SIGINT, a failed start-up, or EmbeddedEmulator.stop().
- TCP QMP is served only when asked for, and binds the loopback address unless the command line
  gives an address (checked from the listening sockets the kernel reports for the process).
- A whole session (drive-backup targets, a snapshot overlay, bitmaps, guest writes) creates and
  modifies only the files the command line and the QMP commands name: a watched cwd, TMPDIR and
  HOME show nothing else.

Deliberate differences from QEMU 7.2.22, which creates the socket with the umask's mode (0755
under umask 022) and binds `tcp::PORT` to every interface (0.0.0.0 and ::).  QEMU also removes
its socket on quit and on SIGTERM.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import emulator.qmp.server as server_module
from emulator.launcher import EmbeddedEmulator
from emulator.machine import Machine
from emulator.qmp import Endpoint, QmpServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0
BASE = ["-M", "none", "-nodefaults", "-display", "none"]


def emulator_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the interpreter's .pyc cache is not the emulator's doing
    env.update(extra)
    return env


def start(argv: list[str], *, cwd: Path | None = None, umask: int | None = None,
          env: dict[str, str] | None = None, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "emulator", *argv]
    if umask is not None:  # through a shell: preexec_fn is unsafe in a threaded test process
        command = ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *command]
    return subprocess.Popen(command, cwd=cwd or ROOT, env=env or emulator_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def wait_for(predicate: Any, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the emulator exited ({process.returncode}) waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)  # polling a condition, bounded by the deadline


class Qmp:
    """A raw, negotiated QMP connection (unix path or (host, port))."""

    def __init__(self, address: str | tuple[str, int]) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(address)
        self.file = self.sock.makefile("rb")
        assert self.file.readline().startswith(b'{"QMP": ')
        assert self.cmd("qmp_capabilities") == {}

    def cmd(self, name: str, /, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": name, "id": name}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode())
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError(name)
            message = json.loads(line)
            if message.get("id") == name:
                assert "error" not in message, message
                return message["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def connect_when_ready(path: Path, process: subprocess.Popen[bytes]) -> Qmp:
    """Connect once the socket listens (it exists a moment before listen() is called)."""
    connected: list[Qmp] = []

    def attempt() -> bool:
        try:
            connected.append(Qmp(str(path)))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        return True

    wait_for(attempt, f"{path} to accept connections", process)
    return connected[0]


# ---- the unix socket ---------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["qmp", "chardev"])
def test_socket_is_0600_under_umask_000(sockdir: Path, option: str) -> None:
    path = sockdir / "q.sock"
    if option == "qmp":
        argv = [*BASE, "-qmp", f"unix:{path},server=on,wait=off"]
    else:
        argv = [*BASE, "-chardev", f"socket,id=mon0,path={path},server=on,wait=off",
                "-mon", "chardev=mon0,mode=control"]
    process = start(argv, umask=0)
    try:
        qmp = connect_when_ready(path, process)
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
        qmp.close()
    finally:
        process.kill()
        process.wait(TIMEOUT)


def test_embedded_socket_is_0600_under_umask_000(sockdir: Path) -> None:
    path = sockdir / "q.sock"
    old = os.umask(0)
    try:
        instance = EmbeddedEmulator([*BASE, "-qmp", f"unix:{path},server=on,wait=off"])
        instance.start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        instance.stop()
    assert not path.exists()


def test_socket_file_never_exists_with_wider_mode(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mode is right from bind() on, not fixed afterwards: no window for another user."""
    path = sockdir / "q.sock"
    seen: list[int] = []
    real_chmod = os.chmod

    def observing_chmod(target: Any, mode: int, **kwargs: Any) -> None:
        if str(target) == str(path):
            seen.append(stat.S_IMODE(os.stat(path).st_mode))
        real_chmod(target, mode, **kwargs)

    monkeypatch.setattr(server_module.os, "chmod", observing_chmod)
    machine = Machine()

    async def bind_and_close() -> None:
        server = QmpServer(machine, [Endpoint("unix", path=str(path))])
        await server.start()
        await server.close()

    old = os.umask(0)
    try:
        asyncio.run(asyncio.wait_for(bind_and_close(), TIMEOUT))
    finally:
        os.umask(old)
        machine.close()
    assert seen == [0o600]
    assert not path.exists()


@pytest.mark.parametrize("how", ["quit", "SIGTERM", "SIGINT", "SIGHUP"])
def test_socket_removed_on_exit(sockdir: Path, how: str) -> None:
    path = sockdir / "q.sock"
    other = sockdir / "mon.sock"
    process = start([*BASE, "-qmp", f"unix:{path},server=on,wait=off",
                     "-chardev", f"socket,id=m,path={other},server=on,wait=off", "-mon", "chardev=m,mode=control"])
    try:
        qmp = connect_when_ready(path, process)
        assert other.exists()
        if how == "quit":
            assert qmp.cmd("quit") == {}
        else:
            process.send_signal(getattr(signal, how))
        assert process.wait(TIMEOUT) == 0
        qmp.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert not path.exists() and not other.exists()


def test_socket_removed_when_start_up_fails(sockdir: Path) -> None:
    path = sockdir / "q.sock"
    process = start([*BASE, "-qmp", f"unix:{path},server=on,wait=off",
                     "-qmp", f"unix:{sockdir}/no-such-dir/q.sock,server=on,wait=off"],
                    stderr=subprocess.PIPE)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 1
    assert b"Failed to bind socket to" in err
    assert not path.exists()


def test_embedded_stop_removes_socket(sockdir: Path) -> None:
    path = sockdir / "q.sock"
    with EmbeddedEmulator([*BASE, "-qmp", f"unix:{path},server=on,wait=off"]):
        assert path.exists()
    assert not path.exists()


# ---- TCP ----------------------------------------------------------------------------------------

def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc prints the address as host-order 32-bit words.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_tcp(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket the process holds."""
    inodes = _socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A" and inode in inodes:
                host, port = local.split(":")
                found.append((_address(host), int(port, 16)))
    return sorted(found)


pytestmark_linux = pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")


@pytestmark_linux
def test_no_tcp_listener_unless_asked(sockdir: Path) -> None:
    path = sockdir / "q.sock"
    process = start([*BASE, "-qmp", f"unix:{path},server=on,wait=off"])
    try:
        connect_when_ready(path, process).close()
        assert listening_tcp(process.pid) == []
    finally:
        process.kill()
        process.wait(TIMEOUT)


@pytestmark_linux
@pytest.mark.parametrize(("spec", "expected_host"), [
    ("tcp::0,server=on,wait=off", "127.0.0.1"),            # no address: loopback only
    ("tcp:127.0.0.3:0,server=on,wait=off", "127.0.0.3"),   # an explicit address is honoured
    ("tcp:localhost:0,server=on,wait=off", "127.0.0.1"),
])
def test_tcp_binds_loopback_unless_an_address_is_given(spec: str, expected_host: str) -> None:
    process = start([*BASE, "-qmp", spec])
    try:
        wait_for(lambda: listening_tcp(process.pid), "a TCP listener", process)
        listeners = listening_tcp(process.pid)
        assert [host for host, _ in listeners] == [expected_host], listeners
        qmp = Qmp(listeners[0])
        assert qmp.cmd("query-status")["status"] == "running"
        qmp.close()
    finally:
        process.kill()
        process.wait(TIMEOUT)


# ---- no writes outside what the command line names ----------------------------------------------

def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under the roots."""
    state = {}
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                path = os.path.join(dirpath, name)
                info = os.lstat(path)
                state[path] = (info.st_size, info.st_mtime_ns)
            state[dirpath + "/"] = (0, 0)
    return state


def wait_jobs(qmp: Qmp) -> None:
    deadline = time.monotonic() + TIMEOUT
    while qmp.cmd("query-block-jobs"):  # each query is a round trip; bounded by the deadline
        assert time.monotonic() < deadline, "backup jobs did not finish"


def test_session_writes_only_the_named_files(tmp_path: Path) -> None:
    work, tmpdir, home, logs = (tmp_path / name for name in ("work", "tmp", "home", "logs"))
    for directory in (work, tmpdir, home, logs):
        directory.mkdir()
    sockdir = Path(tempfile.mkdtemp(prefix="btx"))
    sock = sockdir / "q.sock"
    img = subprocess.run([sys.executable, "-m", "emulator.tools.img", "create", "-f", "qcow2",
                          str(work / "disk.qcow2"), "64M"], cwd=logs, env=emulator_env(),
                         capture_output=True, timeout=TIMEOUT, check=False)
    assert img.returncode == 0, img.stderr
    (work / "unrelated.txt").write_text("must stay as it is\n")
    before = snapshot(work, tmpdir, home)
    env = emulator_env(TMPDIR=str(tmpdir), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    with open(logs / "stderr", "wb") as stderr:
        process = start([*BASE, "-qmp", f"unix:{sock},server=on,wait=off",
                         "-drive", "if=none,id=drive0,file=disk.qcow2,format=qcow2"],
                        cwd=work, env=env, stderr=stderr)
        try:
            qmp = connect_when_ready(sock, process)
            qmp.cmd("block-dirty-bitmap-add", node="drive0", name="b0")
            qmp.cmd("human-monitor-command", **{"command-line": 'qemu-io drive0 "write -P 0x5a 0 1M"'})
            qmp.cmd("drive-backup", device="drive0", sync="full", target="full.qcow2", format="qcow2")
            wait_jobs(qmp)
            qmp.cmd("human-monitor-command", **{"command-line": 'qemu-io drive0 "write -P 0x6b 4M 64k"'})
            qmp.cmd("transaction", actions=[{"type": "drive-backup", "data": {
                "device": "drive0", "job-id": "inc", "sync": "incremental", "bitmap": "b0",
                "target": str(work / "inc.qcow2"), "format": "qcow2"}}])
            qmp.cmd("blockdev-snapshot-sync", device="drive0", **{"snapshot-file": "overlay.qcow2",
                                                                   "format": "qcow2"})
            wait_jobs(qmp)
            qmp.cmd("quit")
            assert process.wait(TIMEOUT) == 0
            qmp.close()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)
    after = snapshot(work, tmpdir, home)
    created = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    modified = sorted(path for path in set(before) & set(after) if before[path] != after[path])
    assert created == sorted(str(work / name) for name in ("full.qcow2", "inc.qcow2", "overlay.qcow2"))
    assert removed == []
    assert set(modified) <= {str(work / "disk.qcow2"), str(work) + "/"}, modified
    assert (work / "unrelated.txt").read_text() == "must stay as it is\n"
    assert list(sockdir.iterdir()) == []
    shutil.rmtree(sockdir)
