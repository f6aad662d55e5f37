"""The QMP input fuzzer, bounded for CI: generated hostile input against the emulator running as
a process (every input answered in bounded time, the server serving a fresh client after each
batch, no crash), the same small inputs against real QEMU 7.2 when installed (same error
classes, same text), regressions for the bugs the fuzzer found, and checks that the fuzzer's
own checks can fail.

Expected bytes in the regressions were recorded from qemu-system-x86_64 7.2.22 over a raw socket.
"""

from __future__ import annotations

import errno
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.qmpfuzz.campaign import (
    Campaign,
    LiveTarget,
    check_outcome,
    compare_outcomes,
    fuzz_targets,
    qemu_available,
)
from conformance.qmpfuzz.client import FuzzClient, Outcome, parse_reply
from conformance.qmpfuzz.inputs import (
    FAMILIES,
    UNSAFE_COMMANDS,
    FuzzInput,
    InputGenerator,
    command_names,
    is_harmless,
)
from conformance.targets import EmulatorTarget
from emulator.cutils import qemu_strtoi64, qemu_strtosz, qemu_strtou64
from emulator.error import QemuError
from emulator.launcher import EmbeddedEmulator
from emulator.qmp.jsonparser import parse_json
from emulator.qmp.keyval import keyval_parse

pytestmark = pytest.mark.timeout(120)

needs_qemu = pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86_64 not installed")


@pytest.fixture(scope="module")
def emulator() -> Iterator[LiveTarget]:
    with LiveTarget(EmulatorTarget("7.2", separate_process=True), name="emulator") as target:
        yield target


#: The real QEMU versions compared with: the one on PATH (Debian 12's 7.2) and QEMU 10.0 as
#: unpacked by scripts/setup-qemu-10.sh (its modules beside it).
QEMU_BINARIES = {"path": None,
                 "10.0": "/root/.cache/blocktxn/qemu-10.0.2/usr/bin/qemu-system-x86_64"}


@pytest.fixture(scope="module", params=sorted(QEMU_BINARIES))
def qemu_pair(request: pytest.FixtureRequest) -> Iterator[tuple[LiveTarget, LiveTarget]]:
    """Real QEMU and the emulator told to behave like that version."""
    binary = QEMU_BINARIES[request.param]
    if not qemu_available(binary):
        pytest.skip(f"{binary or 'qemu-system-x86_64'} not installed")
    emulator_target, qemu_target, profile = fuzz_targets(binary)
    assert qemu_target is not None, profile.binaries.missing()
    assert request.param == "path" or profile.version_text == request.param
    with LiveTarget(emulator_target, name="emulator") as emulator, \
            LiveTarget(qemu_target, name=f"qemu {profile.version_text}") as qemu:
        yield emulator, qemu


def assert_clean(campaign: Campaign) -> None:
    report = campaign.report
    details = "\n".join(f.describe()[:800] for f in report.findings[:10])
    assert report.clean, f"{report.summary()}\n{details}\n{report.server_problems}"


# ---- the emulator under fuzzing ----------------------------------------------------------------------

def test_mixed_inputs_all_answered_and_server_survives(emulator: LiveTarget) -> None:
    campaign = Campaign(emulator, batch_size=50)
    report = campaign.run(InputGenerator("ci-mixed", max_size=128 * 1024, drive="drive0").inputs(400))
    assert_clean(campaign)
    assert report.inputs == 400 and report.batches >= 8
    assert set(report.families) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family(emulator: LiveTarget, family: str) -> None:
    campaign = Campaign(emulator, batch_size=10)
    generator = InputGenerator(f"ci-{family}", max_size=256 * 1024, drive="drive0", pre_negotiation=0.3)
    campaign.run(generator.inputs(20, family))
    assert_clean(campaign)


def test_pipelined_thousands_answer_in_order(emulator: LiveTarget) -> None:
    ids = [f"p{n}" for n in range(5000)]
    data = b"".join(b'{"execute":"query-status","id":"%s"}' % i.encode() for i in ids)
    item = FuzzInput("pipelined", data, expected_ids=tuple(ids))
    outcome = emulator.client.run(item)
    assert outcome.status == "answered"
    assert check_outcome(item, outcome) == []


def test_disconnect_mid_command_then_next_client_served(emulator: LiveTarget) -> None:
    slow = b'{"execute":"human-monitor-command","arguments":{"command-line":"qemu-io drive0 \\"write 0 4M\\""}}'
    for data in (slow * 8, b'{"execute":"query-status","id":"' + b"x" * 500_000, b"[" * 1000):
        assert emulator.client.run(FuzzInput("disconnect", data, disconnect=True)).status == "disconnected"
        assert emulator.client.health_check() is None
    assert emulator.problems() == []


def test_limits_are_answered_like_qemu(emulator: LiveTarget) -> None:
    """Nesting beyond 1024 and a 64 MiB token are QEMU errors, not crashes or hangs."""
    deep = emulator.client.run(FuzzInput("nesting", b"[" * 1025 + b"]" * 1025))
    descs = [reply.desc for reply in deep.answers]
    assert deep.status == "answered"
    assert descs[0] == "JSON nesting depth limit exceeded"
    assert descs.count("JSON parse error, expecting value") == 1025  # as QEMU 7.2.22 answers
    echoed = emulator.client.run(FuzzInput("nesting", b'{"execute":"query-status","id":' + b"[" * 1023
                                           + b"]" * 1023 + b"}"))
    assert echoed.answers[0].kind == "return"
    assert echoed.answers[0].raw.endswith(b'"id": ' + b"[" * 1023 + b"]" * 1023 + b"}\r\n")


# ---- against real QEMU ---------------------------------------------------------------------------

@needs_qemu
def test_same_answers_as_qemu(qemu_pair: tuple[LiveTarget, LiveTarget]) -> None:
    emulator, qemu = qemu_pair
    campaign = Campaign(emulator, qemu, batch_size=50)
    generator = InputGenerator("ci-differential", max_size=2048, drive="drive0")
    report = campaign.run(generator.inputs(300))
    assert_clean(campaign)
    assert report.compared >= 250


# ---- regressions found by the fuzzer ------------------------------------------------------------------

RUNNING = b'{"return": {"status": "running", "singlestep": false, "running": true}, '
STRAY_FF = b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\r\n'

REGRESSIONS = [
    # An integer of more than 4300 digits made Python's int() raise: the connection died.
    (b'{"execute":"query-status","id":' + b"9" * 5000 + b"}", [RUNNING + b'"id": inf}\r\n']),
    (b'{"execute":"query-status","id":-' + b"9" * 400 + b".5}", [RUNNING + b'"id": -inf}\r\n']),
    # An invalid \\u escape is shown as QEMU prints the raw bytes (bad UTF-8 as U+FFFD), not Latin-1.
    (b'{"execute":"query-status","id":"\\u12\xc3"}',
     [(b'{"error": {"class": "GenericError", "desc": "JSON parse error, \\\\u12\\uFFFD\\" is not a '
      b'valid Unicode character"}}\r\n')]),
    (b'{"execute":"query-status","id":"\\u\xe4d83"}',
     [(b'{"error": {"class": "GenericError", "desc": "JSON parse error, \\\\u\\uFFFDd83 is not a '
      b'valid Unicode character"}}\r\n')]),
    (b'{"execute":"query-status","id":"\\u\xc3\xa9AB"}',
     [(b'{"error": {"class": "GenericError", "desc": "JSON parse error, \\\\u\\u00E9AB is not a '
      b'valid Unicode character"}}\r\n')]),
]


@pytest.mark.parametrize(("data", "expected"), REGRESSIONS, ids=range(len(REGRESSIONS)))
def test_regressions_recorded_from_qemu(emulator: LiveTarget, data: bytes, expected: list[bytes]) -> None:
    outcome = emulator.client.run(FuzzInput("regression", data))
    assert outcome.status == "answered"
    assert [reply.raw for reply in outcome.answers] == [*expected, STRAY_FF]


def test_long_digit_strings_in_the_number_parsers() -> None:
    assert parse_json("9" * 5000) == float("inf")
    assert parse_json("-" + "9" * 5000) == float("-inf")
    assert parse_json("18446744073709551615") == (1 << 64) - 1
    assert parse_json("-9223372036854775808") == -(1 << 63)
    assert parse_json("18446744073709551616") == 2.0 ** 64
    for parse, text in ((qemu_strtoi64, "9" * 5000), (qemu_strtou64, "-" + "9" * 5000),
                        (qemu_strtosz, "9" * 5000 + "k"), (qemu_strtosz, "9" * 30 + ".5k"),
                        (qemu_strtosz, "0x" + "f" * 5000)):
        with pytest.raises(OSError) as overflow:
            parse(text)
        assert overflow.value.errno == errno.ERANGE
    assert qemu_strtoi64("0" * 5000 + "12") == 10  # strtoll base 0: a leading 0 means octal
    # exact 64.64 fixed point, rounded half up: real qemu-io 7.2.22 and 10.0.2 read 1593 bytes
    assert qemu_strtosz("1." + "5" * 5000 + "k") == 1593
    with pytest.raises(QemuError, match="is too long"):
        keyval_parse("a." + "1" * 5000 + "=x", None)


def test_nothing_is_answered_after_quit() -> None:
    """QEMU 7.2 answers `quit`, then reads nothing more: pipelined requests get no reply."""
    sockdir = Path(tempfile.mkdtemp(prefix="btx"))
    path = sockdir / "q.sock"
    instance = EmbeddedEmulator(["-M", "none", "-qmp", f"unix:{path},server=on,wait=off"])
    instance.start()
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(b'{"execute":"qmp_capabilities"}{"execute":"quit","id":0}'
                         b'{"execute":"query-status","id":1}{"execute":"query-status","id":2}')
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        lines = received.splitlines()
        assert lines[0].startswith(b'{"QMP"') and lines[1] == b'{"return": {}}'
        assert b'"event": "SHUTDOWN"' in lines[2]
        assert lines[3:] == [b'{"return": {}, "id": 0}']
    finally:
        instance.stop()
        sockdir.rmdir()


# ---- the fuzzer's own checks can fail --------------------------------------------------------------

def _reply(raw: bytes) -> list:
    return [parse_reply(raw)]


def test_comparison_flags_class_and_text_differences() -> None:
    item = FuzzInput("x", b"{}")
    ours = Outcome("answered", _reply(b'{"error": {"class": "GenericError", "desc": "a"}}\r\n'))
    same = Outcome("answered", _reply(b'{"error": {"class": "GenericError", "desc": "a"}}\r\n'))
    text = Outcome("answered", _reply(b'{"error": {"class": "GenericError", "desc": "b"}}\r\n'))
    klass = Outcome("answered", _reply(b'{"error": {"class": "CommandNotFound", "desc": "a"}}\r\n'))
    more = Outcome("answered", ours.replies * 2)
    assert compare_outcomes(item, ours, same) == []
    assert [f.category for f in compare_outcomes(item, ours, text)] == ["text-mismatch"]
    assert [f.category for f in compare_outcomes(item, ours, klass)] == ["class-mismatch"]
    assert [f.category for f in compare_outcomes(item, ours, more)] == ["class-mismatch"]
    assert [f.category for f in compare_outcomes(item, ours, Outcome("closed"))] == ["class-mismatch"]


def test_outcome_checks_flag_bugs() -> None:
    item = FuzzInput("x", b"{}", expected_ids=("a", "b"))
    internal = _reply(b'{"error": {"class": "GenericError", "desc": "Internal error in the blocktxn '
                      b'emulator while running x: ZeroDivisionError"}, "id": "a"}\r\n')
    assert [f.category for f in check_outcome(item, Outcome("answered", internal))] == ["crash", "oracle"]
    swapped = _reply(b'{"return": {}, "id": "b"}\r\n') + _reply(b'{"return": {}, "id": "a"}\r\n')
    assert [f.category for f in check_outcome(item, Outcome("answered", swapped))] == ["oracle"]
    assert [f.category for f in check_outcome(item, Outcome("hang"))] == ["hang"]
    assert [f.category for f in check_outcome(item, Outcome("answered", _reply(b"[1]\r\n") +
                                                            _reply(b'{"return": {}, "id": "a"}\r\n') +
                                                            _reply(b'{"return": {}, "id": "b"}\r\n')))] \
        == ["invalid-reply"]
    nonfinite = parse_reply(b'{"return": {}, "id": -inf}\r\n')
    assert nonfinite.kind == "return" and nonfinite.message == {"return": {}, "id": float("-inf")}


def test_client_reports_a_silent_server_as_a_hang_within_its_bound() -> None:
    sockdir = Path(tempfile.mkdtemp(prefix="btx"))
    path = sockdir / "silent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    accepted: list[socket.socket] = []

    def greet_then_ignore() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')

    thread = threading.Thread(target=greet_then_ignore, daemon=True)
    thread.start()
    try:
        client = FuzzClient(path, base_timeout=0.5)
        outcome = client.run(FuzzInput("x", b"{}", negotiate=False))
        assert outcome.status == "hang" and 0.5 <= outcome.seconds < 5
    finally:
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()
        path.unlink()
        sockdir.rmdir()


def test_generator_is_deterministic_and_harmless() -> None:
    first = list(InputGenerator(42, max_size=65536, drive="drive0").inputs(300))
    second = list(InputGenerator(42, max_size=65536, drive="drive0").inputs(300))
    assert first == second
    assert all(is_harmless(item) for item in first)
    assert not is_harmless(FuzzInput("malformed", b'{"execute":"quit"}'))
    assert not is_harmless(FuzzInput("malformed", b"{'execute':'stop','id':1}"))
    assert command_names(b'{"execute":"qu\\u0069t"}') >= {"quit"}
    assert not is_harmless(FuzzInput("malformed", b'{"execute":"qu\\u0069t"}'))
    assert "quit" in UNSAFE_COMMANDS
