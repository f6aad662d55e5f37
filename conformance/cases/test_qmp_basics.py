"""QMP greeting, negotiation and error replies, as qemu.qmp sees them.

Malformed JSON on a raw socket is a unit test of the emulator's QMP layer: qemu.qmp cannot send it.
"""

from __future__ import annotations

from conformance.vm import VM


async def test_greeting_and_queries(vm: VM) -> None:
    """The greeting (version, ``oob`` capability), query-version, query-status, and the reply to
    a second qmp_capabilities once negotiation is complete."""
    await vm.launch()
    version = await vm.cmd("query-version")
    assert (version["qemu"]["major"], version["qemu"]["minor"]) == vm.qemu_version
    assert vm.qemu_version in {(7, 2), (10, 0)}
    status = await vm.cmd("query-status")
    assert status["status"] == "running"
    reply = await vm.qmp("qmp_capabilities")
    assert reply["error"]["class"] == "CommandNotFound"


async def test_error_replies(vm: VM) -> None:
    """Error class and text for an unknown command, a missing argument, a wrong argument type,
    an unexpected argument and a bad enum value; the connection stays usable after each."""
    await vm.launch()
    errors = [
        await vm.qmp("no-such-command"),
        await vm.qmp("block-dirty-bitmap-add", node="drive0"),
        await vm.qmp("block-job-set-speed", device="job0", speed="fast"),
        await vm.qmp("query-status", bogus=1),
        await vm.qmp("drive-backup", device="drive0", target="t.img", sync="bogus"),
    ]
    assert [reply["error"]["class"] for reply in errors] == ["CommandNotFound"] + ["GenericError"] * 4
    assert (await vm.cmd("query-status"))["running"] is True
