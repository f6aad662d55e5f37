"""The QMP server through the real qemu.qmp clients and through raw sockets.

Expected texts are real QEMU 7.2.22's answers to the same bytes (recorded over a raw socket).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

from emulator.commands import COMMANDS, CommandDef
from emulator.error import QemuError
from emulator.machine import Machine
from emulator.qmp import Endpoint, QmpServer

TIMEOUT = 10.0


class ServerThread:
    """A QmpServer on its own loop and thread, with a few extra commands for testing."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.machine = Machine()
        self.loop = asyncio.new_event_loop()
        self.gate = asyncio.Event()
        self.entered = threading.Event()
        commands = dict(COMMANDS)
        commands["x-test-wait"] = CommandDef("x-test-wait", self._wait)
        commands["x-test-crash"] = CommandDef("x-test-crash", self._crash)
        commands["x-test-event"] = CommandDef("x-test-event", self._event, {"name": "str"})
        self.server = QmpServer(self.machine, endpoints, commands=commands)
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._started.wait(TIMEOUT)

    async def _wait(self, machine: Machine) -> str:
        self.entered.set()
        await self.gate.wait()
        return "opened"

    @staticmethod
    def _crash(machine: Machine) -> None:
        raise ZeroDivisionError("boom")

    @staticmethod
    def _event(machine: Machine, name: str) -> None:
        machine.emit_event(name, {"n": 1})

    def _run(self) -> None:
        async def main() -> None:
            await self.server.start()
            self._started.set()
            await self.server.serve_forever()
            self.machine.close()

        try:
            self.loop.run_until_complete(main())
        finally:
            self.loop.close()

    def open_gate(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.set)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.request_stop()
            self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


@pytest.fixture
def server(sockdir: Path) -> Iterator[ServerThread]:
    thread = ServerThread([Endpoint("unix", path=str(sockdir / "q.sock"))])
    yield thread
    thread.stop()


def sock_path(server: ServerThread) -> str:
    return server.server.endpoints[0].path


class Raw:
    """A raw socket client: bytes in, lines out, every read with a timeout."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def msg(self) -> dict[str, Any]:
        return json.loads(self.line())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, data: bytes) -> bytes:
        self.send(data)
        return self.line()

    def negotiate(self) -> None:
        self.line()
        assert self.ask(b'{"execute":"qmp_capabilities"}') == b'{"return": {}}\r\n'

    def at_eof(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: ServerThread) -> Iterator[Raw]:
    client = Raw(sock_path(server))
    yield client
    client.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


# ---- greeting and negotiation ---------------------------------------------------------------------

def test_greeting_bytes(raw: Raw) -> None:
    assert raw.line() == (b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
                          b'"package": "blocktxn-emulator"}, "capabilities": ["oob"]}}\r\n')


NEGOTIATION = [
    (b'{"execute":"query-status"}',
     b'{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with \'qmp_capabilities\'"}}'),
    (b'{"execute":"query-status","id":5}',
     b'{"id": 5, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with \'qmp_capabilities\'"}}'),
    (b'{"execute":"nosuch","id":5}',
     b'{"id": 5, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with \'qmp_capabilities\'"}}'),
    (b'{"exec-oob":"qmp_capabilities","arguments":{"enable":["oob"]},"id":0}',
     b'{"id": 0, "error": {"class": "GenericError", "desc": "QMP input member \'exec-oob\' is unexpected"}}'),
    (b'{"execute":"qmp_capabilities","arguments":{"enable":["bogus"]}}',
     b'{"error": {"class": "GenericError", "desc": "Parameter \'null\' does not accept value \'bogus\'"}}'),
    (b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}',
     b'{"error": {"class": "GenericError", "desc": "Invalid parameter type for \'enable\', expected: array"}}'),
    (b'{"execute":"qmp_capabilities","arguments":{"enable":["oob","oob"]},"id":[1,{"a":null}]}',
     b'{"return": {}, "id": [1, {"a": null}]}'),
    (b'{"execute":"qmp_capabilities","id":1}',
     b'{"id": 1, "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}'),
    (b'{"execute":"query-status","id":2}',
     b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": 2}'),
    (b'{"exec-oob":"query-status","id":3}',
     b'{"id": 3, "error": {"class": "GenericError", "desc": "The command query-status does not support OOB"}}'),
    (b'{"exec-oob":"nosuch","id":5}',
     b'{"id": 5, "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}'),
    (b'{"exec-oob":"query-status","execute":"query-status","id":6}',
     b'{"id": 6, "error": {"class": "GenericError", "desc": "QMP input member \'execute\' clashes with \'exec-oob\'"}}'),
    (b'{"execute":"query-status","exec-oob":"query-status","id":6}',
     b'{"id": 6, "error": {"class": "GenericError", "desc": "QMP input member \'execute\' clashes with \'exec-oob\'"}}'),
    (b'{"exec-oob":5,"id":7}',
     b'{"id": 7, "error": {"class": "GenericError", "desc": "QMP input member \'exec-oob\' must be a string"}}'),
    (b'{"exec-oob":"qmp_capabilities","id":10}',
     b'{"id": 10, "error": {"class": "GenericError", "desc": "The command qmp_capabilities does not support OOB"}}'),
]


def test_negotiation_sequence_as_recorded(raw: Raw) -> None:
    raw.line()
    for request, reply in NEGOTIATION:
        assert raw.ask(request) == reply + b"\r\n", request


SHAPE = [
    (b"[1,2]", b'{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}'),
    (b'"str"', b'{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}'),
    (b'{"execute":1,"id":7}',
     b'{"id": 7, "error": {"class": "GenericError", "desc": "QMP input member \'execute\' must be a string"}}'),
    (b'{"arguments":{},"id":"x"}',
     b'{"id": "x", "error": {"class": "GenericError", "desc": "QMP input lacks member \'execute\'"}}'),
    (b"{}", b'{"error": {"class": "GenericError", "desc": "QMP input lacks member \'execute\'"}}'),
    (b'{"execute":"query-status","arguments":[],"id":3}',
     b'{"id": 3, "error": {"class": "GenericError", "desc": "QMP input member \'arguments\' must be an object"}}'),
    (b'{"execute":"query-status","arguments":null,"id":5}',
     b'{"id": 5, "error": {"class": "GenericError", "desc": "QMP input member \'arguments\' must be an object"}}'),
    (b'{"execute":"query-status","foo":1,"id":3}',
     b'{"id": 3, "error": {"class": "GenericError", "desc": "QMP input member \'foo\' is unexpected"}}'),
    (b'{"execute":"query-status","exec-oob":"query-status","id":6}',
     b'{"id": 6, "error": {"class": "GenericError", "desc": "QMP input member \'exec-oob\' is unexpected"}}'),
    (b'{"execute":"query-status","id":11,"arguments":5,"zz":1}',
     b'{"id": 11, "error": {"class": "GenericError", "desc": "QMP input member \'zz\' is unexpected"}}'),
    (b'{"zz":1,"execute":5,"id":11,"arguments":5}',
     b'{"id": 11, "error": {"class": "GenericError", "desc": "QMP input member \'execute\' must be a string"}}'),
    (b'{"execute":"nosuch","id":3}',
     b'{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}'),
    (b'{"execute":"query-status","arguments":{"x":1},"id":3}',
     b'{"id": 3, "error": {"class": "GenericError", "desc": "Parameter \'x\' is unexpected"}}'),
    (b'{"execute":"query-status","id":6,"id":7}',
     b'{"error": {"class": "GenericError", "desc": "JSON parse error, duplicate key"}}'),
    (b"}", b'{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}'),
    (b'{"execute":"query-status","id":"\\x"}',
     b'{"error": {"class": "GenericError", "desc": "JSON parse error, invalid escape sequence in string"}}'),
    (b'{"execute":"query-status","id":null}',
     b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": null}'),
    (b'{"execute":"query-status","id":{"x":1.5e3}}',
     b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": {"x": 1500}}'),
    (b'{"execute":"query-status","id":"\xc3\xa9"}',
     b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": "\\u00E9"}'),
    (b'{"execute":"query-status","id":-0.0}',
     b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": -0}'),
    (b'{"execute":"query-status","id":12345678901234567890123}',
     b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": 1.2345678901234568e+22}'),
    (b"{'execute':'query-status', 'id': 'sq\\'x'}",
     b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": "sq\'x"}'),
    (b'{"execute":"query-version"}',
     b'{"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "blocktxn-emulator"}}'),
]


@pytest.mark.parametrize(("request_bytes", "reply"), SHAPE, ids=[r[:32].decode("latin-1") for r, _ in SHAPE])
def test_request_shape_errors_as_recorded(raw: Raw, request_bytes: bytes, reply: bytes) -> None:
    raw.negotiate()
    assert raw.ask(request_bytes) == reply + b"\r\n"
    assert raw.ask(b'{"execute":"query-status","id":"after"}').endswith(b'"id": "after"}\r\n')


def test_garbage_gets_errors_and_the_server_carries_on(raw: Raw) -> None:
    raw.negotiate()
    raw.send(b'{"execute"')
    raw.send(b" garbage}")
    assert raw.line() == b'{"error": {"class": "GenericError", "desc": "JSON parse error, missing : in object pair"}}\r\n'
    raw.send(b'{"a": 01, "b": 2}')
    expected = ["JSON parse error, stray '01'", "JSON parse error, expecting value",
                "QMP input must be a JSON object", "JSON parse error, expecting value",
                "QMP input must be a JSON object", "JSON parse error, expecting value"]
    assert [raw.msg()["error"]["desc"] for _ in expected] == expected
    assert raw.ask(b'\xff{"execute":"query-status","id":1}') == \
        b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\r\n'
    assert raw.msg() == {"return": {"status": "running", "singlestep": False, "running": True}, "id": 1}


def test_pipelined_commands_without_newlines_answer_in_order(raw: Raw) -> None:
    raw.line()
    raw.send(b'{"execute":"qmp_capabilities","id":0}{"execute":"query-status","id":1}'
             b'{"execute":"nosuch","id":2}{"execute":"query-version","id":3}')
    assert [raw.msg()["id"] for _ in range(4)] == [0, 1, 2, 3]


def test_events_only_after_negotiation_and_before_the_reply(server: ServerThread) -> None:
    watcher = Raw(sock_path(server))
    actor = Raw(sock_path(server))
    try:
        watcher.line()
        actor.negotiate()
        actor.send(b'{"execute":"stop","id":"s"}')
        event = actor.msg()
        assert event["event"] == "STOP" and "data" not in event
        assert set(event["timestamp"]) == {"seconds", "microseconds"}
        assert actor.msg() == {"return": {}, "id": "s"}
        # The watcher, still negotiating, got nothing; after negotiating it sees the next event.
        assert watcher.ask(b'{"execute":"qmp_capabilities"}') == b'{"return": {}}\r\n'
        actor.send(b'{"execute":"cont"}')
        assert actor.msg()["event"] == "RESUME"
        assert watcher.msg()["event"] == "RESUME"
        assert actor.msg() == {"return": {}}
        assert actor.ask(b'{"execute":"x-test-event","arguments":{"name":"X"}}').startswith(
            b'{"timestamp": {"seconds": ')
    finally:
        watcher.close()
        actor.close()


def test_disconnect_mid_command_leaves_other_clients_alone(server: ServerThread) -> None:
    leaver = Raw(sock_path(server))
    stayer = Raw(sock_path(server))
    try:
        leaver.negotiate()
        stayer.negotiate()
        leaver.send(b'{"execute":"x-test-wait","id":"w"}')
        assert server.entered.wait(TIMEOUT)
        leaver.close()
        stayer.send(b'{"execute":"query-status","id":"q"}')  # queued behind the running command
        server.open_gate()
        assert stayer.msg()["id"] == "q"
        assert stayer.ask(b'{"execute":"query-version","id":"v"}').endswith(b'"id": "v"}\r\n')
    finally:
        stayer.close()


def test_handler_bug_is_reported_logged_and_survived(raw: Raw, caplog: pytest.LogCaptureFixture) -> None:
    raw.negotiate()
    with caplog.at_level(logging.ERROR, logger="emulator.qmp"):
        reply = json.loads(raw.ask(b'{"execute":"x-test-crash","id":9}'))
    assert reply["id"] == 9 and reply["error"]["class"] == "GenericError"
    assert "ZeroDivisionError: boom" in reply["error"]["desc"]
    assert any("x-test-crash" in r.getMessage() and r.exc_info for r in caplog.records)
    assert raw.ask(b'{"execute":"query-status","id":10}').endswith(b'"id": 10}\r\n')


def test_quit_sends_shutdown_then_reply_then_closes(server: ServerThread, sockdir: Path) -> None:
    other = Raw(sock_path(server))
    raw = Raw(sock_path(server))
    other.negotiate()
    raw.negotiate()
    raw.send(b'{"execute":"quit","id":"q"}')
    event = raw.msg()
    assert event["event"] == "SHUTDOWN" and event["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert raw.msg() == {"return": {}, "id": "q"}
    assert raw.at_eof()
    assert other.msg()["event"] == "SHUTDOWN"
    assert other.at_eof()
    server.thread.join(TIMEOUT)
    assert not server.thread.is_alive()
    assert server.machine.shutdown_requested
    assert not (sockdir / "q.sock").exists()
    raw.close()
    other.close()


def test_socket_mode_0600_and_removed_after_stop(server: ServerThread) -> None:
    path = sock_path(server)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    server.stop()
    assert not os.path.exists(path)


# ---- the qemu.qmp clients ----------------------------------------------------------------------------

def test_qmpclient_two_clients_at_once_with_events(server: ServerThread) -> None:
    async def scenario() -> None:
        first, second = QMPClient("first"), QMPClient("second")
        await first.connect(sock_path(server))
        await second.connect(sock_path(server))
        assert await first.execute("query-status") == {"status": "running", "singlestep": False,
                                                      "running": True}
        with pytest.raises(ExecuteError) as info:
            await second.execute("block-dirty-bitmap-add", {"node": "nodev", "name": "b",
                                                            "granularity": 2**32})
        assert info.value.error_class == "GenericError"
        assert info.value.received["error"]["desc"] == "Parameter 'granularity' expects uint32_t"
        listener = EventListener()
        with first.listen(listener):
            await second.execute("stop")
            event = await listener.get()
        assert event["event"] == "STOP"
        assert await first.execute("query-status") == {"status": "paused", "singlestep": False,
                                                      "running": False}
        names = {c["name"] for c in await first.execute("query-commands")}
        assert {"qmp_capabilities", "query-status", "quit", "cont", "stop"} <= names
        await first.disconnect()
        assert (await second.execute("query-version"))["qemu"]["major"] == 7
        await second.disconnect()

    run(scenario())


def test_legacy_client(server: ServerThread) -> None:
    qmp = QEMUMonitorProtocol(sock_path(server))
    qmp.connect(negotiate=True)
    try:
        assert qmp.cmd_obj({"execute": "query-status"}) == \
            {"return": {"status": "running", "singlestep": False, "running": True}}
        assert qmp.cmd_raw("nosuch") == \
            {"error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}
        assert qmp.cmd("stop") == {}
        assert qmp.pull_event(wait=TIMEOUT)["event"] == "STOP"
        qmp.cmd("quit")
    finally:
        try:
            qmp.close()
        except EOFError:  # the server closed first, as with real QEMU
            pass
    server.thread.join(TIMEOUT)
    assert not server.thread.is_alive()


def test_tcp_endpoint_on_loopback() -> None:
    thread = ServerThread([Endpoint("tcp", host="", port="0")])
    try:
        host, port = thread.server.tcp_addresses[0]
        assert host == "127.0.0.1" and port > 0

        async def scenario() -> None:
            client = QMPClient("tcp")
            await client.connect((host, port))
            assert (await client.execute("query-status"))["running"] is True
            await client.disconnect()

        run(scenario())
    finally:
        thread.stop()


def test_connecting_out_to_a_listening_client(sockdir: Path) -> None:
    """-chardev socket,path=P without server=on: the emulator connects to P (QEMU's harness mode)."""
    path = str(sockdir / "client.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    thread = ServerThread([Endpoint("unix", path=path, listen=False)])
    try:
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        assert conn.recv(4096).startswith(b'{"QMP": {"version": ')
        conn.sendall(b'{"execute":"qmp_capabilities"}')
        assert conn.recv(4096) == b'{"return": {}}\r\n'
        conn.close()
    finally:
        thread.stop()
        listener.close()


def test_failed_endpoint_reports_qemu_text(sockdir: Path) -> None:
    machine = Machine()

    async def scenario() -> str:
        server = QmpServer(machine, [Endpoint("unix", path=str(sockdir / "none" / "q.sock"))])
        with pytest.raises(QemuError) as info:
            await server.start()
        return info.value.desc

    assert run(scenario()) == f"Failed to bind socket to {sockdir}/none/q.sock: No such file or directory"
    machine.close()
