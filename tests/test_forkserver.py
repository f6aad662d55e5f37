"""The emulator fork server `blocktxn iotests` uses: a client started as QEMU_PROG must behave as
the emulator started directly (output, exit status, inherited fds, signals), and no emulator may
outlive its client or the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.iotests.runner import ForkServer, emulator_launcher

TIMEOUT = 30
BASE = ["-M", "none", "-nodefaults", "-display", "none"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, ForkServer]]:
    server = ForkServer(tmp_path)
    try:
        yield emulator_launcher(tmp_path), server
    finally:
        server.stop()


def run(launcher: Path, args: list[str], server: ForkServer | None,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("BLOCKTXN_FORKSERVER", None)
    if server is not None:
        env["BLOCKTXN_FORKSERVER"] = server.path
    return subprocess.run([str(launcher), *args], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False, **kwargs)  # type: ignore[call-overload]


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


@pytest.mark.parametrize("args", [["-machine", "help"], ["-bogus"], [*BASE, "-device", "foo"],
                                  [*BASE, "-qmp", "stdio"]])
def test_same_output_and_status_as_a_direct_start(served: tuple[Path, ForkServer], args: list[str]) -> None:
    launcher, server = served
    stdin = '{"execute":"qmp_capabilities"}{"execute":"query-status"}{"execute":"quit"}'
    direct, forked = (run(launcher, args, s, input=stdin) for s in (None, server))
    assert (forked.returncode, forked.stderr) == (direct.returncode, direct.stderr)
    strip = [line for line in forked.stdout.splitlines() if '"timestamp"' not in line]
    assert strip == [line for line in direct.stdout.splitlines() if '"timestamp"' not in line]


def test_inherited_socket_fd_and_sigterm(served: tuple[Path, ForkServer]) -> None:
    launcher, server = served
    ours, theirs = socket.socketpair()
    env = {**os.environ, "BLOCKTXN_FORKSERVER": server.path}
    proc = subprocess.Popen([str(launcher), *BASE, "-chardev", f"socket,id=mon,fd={theirs.fileno()}",
                             "-mon", "chardev=mon,mode=control"], env=env, pass_fds=[theirs.fileno()],
                            stderr=subprocess.PIPE, text=True)
    theirs.close()
    try:
        ours.settimeout(TIMEOUT)
        assert b'"QMP"' in ours.recv(4096)
        ours.sendall(b'{"execute":"qmp_capabilities"}')
        assert b'"return"' in ours.recv(4096)
        proc.send_signal(signal.SIGTERM)  # forwarded to the emulator
        assert proc.wait(TIMEOUT) == 0
        assert proc.stderr is not None and proc.stderr.read() == "qemu-system-x86_64: terminating on signal 15\n"
        assert b'"SHUTDOWN"' in ours.recv(4096)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()


def test_no_emulator_outlives_a_killed_client_or_the_server(served: tuple[Path, ForkServer],
                                                            tmp_path: Path) -> None:
    launcher, server = served
    env = {**os.environ, "BLOCKTXN_FORKSERVER": server.path}
    sock = str(tmp_path / "qmp.sock")

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(launcher), *BASE, "-qmp", f"unix:{sock},server=on,wait=off"], env=env)
        deadline = time.monotonic() + TIMEOUT
        while not children(server.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        return proc

    client = start()
    (emulator,) = children(server.proc.pid)
    client.kill()
    client.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while emulator in children(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emulator not in children(server.proc.pid)
    client = start()
    (emulator,) = children(server.proc.pid)
    server.stop()
    assert client.wait(TIMEOUT) == -signal.SIGKILL  # told how its emulator ended, and ends alike
    assert not Path(f"/proc/{emulator}").exists() or Path(f"/proc/{emulator}/stat").read_text().split()[2] == "Z"
