"""conformance.compare.normalize: the orders real QEMU produces compare equal; real differences do not.

The event sequences are the ones recorded from QEMU 7.2 in docs/qemu-7.2-observations.md, section 3.
"""

from __future__ import annotations

from typing import Any

import pytest

from conformance.compare.normalize import PathMap, filter_text, normalize
from conformance.qmplog import QmpLog

PATHS = PathMap.of(TEST_DIR="/tmp/pytest-of-x/pytest-1/test_a0", SOCK_DIR="/tmp/btxabc")
LEN = 458752


def jsc(job: str, status: str, seconds: int = 1) -> dict[str, Any]:
    return {"timestamp": {"seconds": seconds, "microseconds": 5}, "event": "JOB_STATUS_CHANGE",
            "data": {"id": job, "status": status}}


def block_event(name: str, job: str, **data: Any) -> dict[str, Any]:
    return {"timestamp": {"seconds": 2, "microseconds": 7}, "event": name,
            "data": {"device": job, **data}}


def session(items: list[tuple[str, Any]], version: str = "10.0",
            case: str = "test_transaction/test_grouped_user_cancel") -> str:
    log = QmpLog(case)
    for kind, message in items:
        log.add(kind, message)  # type: ignore[arg-type]
    return normalize(log, PATHS, version).render()


def command(name: str, cmd_id: int, **arguments: Any) -> tuple[str, dict[str, Any]]:
    message: dict[str, Any] = {"execute": name, "id": f"__qmp#{cmd_id:05d}"}
    if arguments:
        message["arguments"] = arguments
    return ("command", message)


def reply(cmd_id: int, value: Any = None) -> tuple[str, dict[str, Any]]:
    return ("reply", {"return": {} if value is None else value, "id": f"__qmp#{cmd_id:05d}"})


def events(*messages: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("event", message) for message in messages]


# ---- b2: grouped transaction, drive1 gets EIO (three interleavings seen in 10 runs) ------------
def b2_drive1() -> list[dict[str, Any]]:
    return [jsc("drive1", "created"), jsc("drive1", "running"), jsc("drive1", "paused"),
            jsc("drive1", "running"),
            block_event("BLOCK_JOB_ERROR", "drive1", operation="read", action="report"),
            jsc("drive1", "aborting"),
            block_event("BLOCK_JOB_COMPLETED", "drive1", error="Input/output error", len=LEN,
                        offset=393216, speed=0, type="backup"),
            jsc("drive1", "concluded"), jsc("drive1", "null")]


def b2_drive0(waiting: bool, offset: int) -> list[dict[str, Any]]:
    return [jsc("drive0", "created"), jsc("drive0", "running"), jsc("drive0", "paused"),
            jsc("drive0", "running")] + ([jsc("drive0", "waiting")] if waiting else []) + [
            jsc("drive0", "aborting"),
            block_event("BLOCK_JOB_CANCELLED", "drive0", len=LEN, offset=offset, speed=0,
                        type="backup"),
            jsc("drive0", "concluded"), jsc("drive0", "null")]


def b2_session(order: str, waiting: bool, offset: int) -> str:
    d0, d1 = b2_drive0(waiting, offset), b2_drive1()
    head = [d0[0], d1[0]] + d1[1:4] + d0[1:4]  # both created, then each starts
    if order == "typical":  # drive1 fails, drive0 aborts, drive1 ends, then drive0 ends
        tail = d0[4:-4] + d1[4:6] + [d0[-4]] + d1[6:] + d0[-3:]
    elif order == "drive0-first":
        tail = d0[4:-4] + d1[4:6] + d0[-4:] + d1[6:]
    else:  # "serial": every drive1 event first
        tail = d1[4:] + d0[4:]
    conversation = [command("transaction", 3, actions=[]), reply(3)]
    return session(conversation + events(*head) + events(*tail))


@pytest.mark.parametrize("order", ["typical", "drive0-first", "serial"])
@pytest.mark.parametrize("waiting", [False, True])
def test_grouped_failure_interleavings_and_optional_waiting_compare_equal(
        order: str, waiting: bool) -> None:
    reference = b2_session("typical", waiting=False, offset=LEN)
    assert b2_session(order, waiting, offset=LEN) == reference


def test_a_cancelled_offset_is_compared_in_goldens_and_masked_for_live_fuzzing() -> None:
    """J3 applies to the live differential fuzzer only: goldens keep a cancelled job's offset
    (deterministic in every real run of the suite), the fuzzer masks it."""
    from conformance.compare.normalize import normalize_job_events

    assert b2_session("typical", False, offset=65536) != b2_session("typical", False, offset=LEN)
    lines = {offset: normalize_job_events(b2_drive0(False, offset), PATHS, mask_failed_offsets=True)
             for offset in (65536, LEN)}
    assert lines[65536] == lines[LEN]
    assert any('"offset": "MASKED"' in line for line in lines[LEN])


def test_grouped_failure_renders_per_job_sequences() -> None:
    text = b2_session("typical", waiting=True, offset=LEN)
    assert "== events of job drive0\nJOB_STATUS_CHANGE created\nJOB_STATUS_CHANGE running\n" \
           "JOB_STATUS_CHANGE aborting\nBLOCK_JOB_CANCELLED " in text
    assert '"error": "Input/output error",\n' in text  # rule L1: a long message is indented
    assert '  "len": 458752,\n' in text and '  "offset": 458752,\n' in text
    assert text.index("== events of job drive0") < text.index("== events of job drive1")


def test_short_messages_stay_on_one_line_and_long_ones_are_indented() -> None:
    """Rule L1: compact JSON up to 100 characters with the prefix, else indented key-sorted
    JSON whose continuation lines sit under the prefix."""
    from conformance.compare.normalize import message_lines

    assert message_lines("<- ", {"return": {}}) == ['<- {"return": {}}']
    long = {"return": [{"node-name": "drive0", "drv": "qcow2", "ro": False, "file": "x" * 60}]}
    lines = message_lines("<- ", long)
    assert lines[0] == "<- {" and lines[-1] == "   }"
    assert '         "drv": "qcow2",' in lines and len(lines) == 10


def test_a_real_difference_in_a_job_sequence_is_caught() -> None:
    d0 = b2_drive0(False, LEN)
    d0[5]["event"] = "BLOCK_JOB_COMPLETED"  # drive0 reported completed, not cancelled
    broken = session(events(*d0, *b2_drive1()))
    assert broken != session(events(*b2_drive0(False, LEN), *b2_drive1()))


def test_missing_event_and_wrong_error_text_are_caught() -> None:
    full = b2_drive1()
    assert session(events(*full)) != session(events(*(full[:4] + full[5:])))  # no BLOCK_JOB_ERROR
    wrong = [dict(event) for event in full]
    wrong[6] = block_event("BLOCK_JOB_COMPLETED", "drive1", error="No space left on device",
                           len=LEN, offset=393216, speed=0, type="backup")
    assert session(events(*full)) != session(events(*wrong))


# ---- drain-induced pause pairs, reply/event order ---------------------------------------------
def single_job(extra_pairs: int) -> list[dict[str, Any]]:
    statuses = ["created", "running", "paused", "running"] + ["paused", "running"] * extra_pairs
    statuses += ["waiting", "pending"]
    sequence = [jsc("drive0", status) for status in statuses]
    sequence.append(block_event("BLOCK_JOB_COMPLETED", "drive0", len=LEN, offset=LEN, speed=0,
                                type="backup"))
    return sequence + [jsc("drive0", "concluded"), jsc("drive0", "null")]


@pytest.mark.parametrize("extra_pairs", [1, 7])
def test_drain_pause_pairs_are_not_compared_where_10_0_varies(extra_pairs: int) -> None:
    """Rule J1: in the cases where real QEMU 10.0 varied the number of pairs between runs."""
    assert session(events(*single_job(extra_pairs))) == session(events(*single_job(0)))


@pytest.mark.parametrize("version, case", [("7.2", "test_transaction/test_grouped_user_cancel"),
                                           ("10.0", "test_mod/test_case")])
@pytest.mark.parametrize("extra_pairs", [1, 7])
def test_drain_pause_pairs_are_compared_elsewhere(extra_pairs: int, version: str, case: str) -> None:
    """QEMU 7.2's pairs, and 10.0's outside the listed cases, are deterministic: a missing or
    extra drained section is a difference."""
    with_pairs = session(events(*single_job(extra_pairs)), version, case)
    assert with_pairs != session(events(*single_job(0)), version, case)
    assert with_pairs.count("JOB_STATUS_CHANGE paused") == extra_pairs + 1


def test_every_drain_pair_is_dropped_for_an_unmeasured_version() -> None:
    assert session(events(*single_job(3)), "11.0") == session(events(*single_job(0)), "11.0")


def test_a_pause_without_resume_is_kept() -> None:
    stuck = [jsc("drive0", s) for s in ("created", "running", "paused", "running", "paused")]
    text = session(events(*stuck))
    assert text.endswith("JOB_STATUS_CHANGE running\nJOB_STATUS_CHANGE paused\n\n== other events\n")


def test_successful_completion_offset_is_compared() -> None:
    short = single_job(0)
    short[-3] = block_event("BLOCK_JOB_COMPLETED", "drive0", len=LEN, offset=65536, speed=0,
                            type="backup")
    assert session(events(*short)) != session(events(*single_job(0)))


def test_reply_before_or_after_cancel_events_compares_equal() -> None:
    cancel_events = [jsc("drive0", "aborting"),
                     block_event("BLOCK_JOB_CANCELLED", "drive0", len=LEN, offset=65536, speed=0,
                                 type="backup"),
                     jsc("drive0", "concluded"), jsc("drive0", "null")]
    before = [command("block-job-cancel", 4, device="drive0"), reply(4)] + events(*cancel_events)
    after = [command("block-job-cancel", 4, device="drive0")] + events(*cancel_events) + [reply(4)]
    assert session(before) == session(after)


def test_conversation_order_and_content_are_compared() -> None:
    first = [command("query-status", 0), reply(0, {"status": "running"}),
             command("query-block-jobs", 1), reply(1, [])]
    swapped = [command("query-block-jobs", 1), reply(1, []),
               command("query-status", 0), reply(0, {"status": "running"})]
    assert session(first) != session(swapped)
    other_error = [command("x", 0), ("reply", {"error": {"class": "GenericError", "desc": "a"}})]
    assert session(other_error) != session(
        [command("x", 0), ("reply", {"error": {"class": "CommandNotFound", "desc": "a"}})])


def test_non_job_events_keep_their_order() -> None:
    a = {"event": "SHUTDOWN", "data": {"guest": False}, "timestamp": {"seconds": 1}}
    b = {"event": "RESUME", "timestamp": {"seconds": 2}}
    assert session(events(a, b)) != session(events(b, a))
    assert 'SHUTDOWN {"guest": false}\nRESUME\n' in session(events(a, b))


# ---- filters ----------------------------------------------------------------------------------
def test_ids_timestamps_paths_versions_node_names_and_sizes_are_filtered() -> None:
    greeting = {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7},
                                    "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}
    block = [{"device": "drive0", "inserted": {
        "node-name": "#block251", "file": "/tmp/pytest-of-x/pytest-1/test_a0/d.img",
        "image": {"actual-size": 200704, "virtual-size": 1048576}}}]
    text = session([("greeting", greeting), command("query-version", 0),
                    reply(0, greeting["QMP"]["version"]), command("query-block", 1),
                    reply(1, block)])
    assert '"micro": "MICRO"' in text and '"package": "PACKAGE"' in text and '"major": 7' in text
    assert "Debian" not in text and "__qmp#" not in text and "timestamp" not in text
    assert '"node-name": "#blockNNN"' in text and '"file": "TEST_DIR/d.img"' in text
    assert '"actual-size": "MASKED"' in text and '"virtual-size": 1048576' in text


def test_text_filters() -> None:
    timing = "64 KiB, 1 ops; 00.00 sec (387.023 MiB/sec and 6192.3722 ops/sec)"
    assert filter_text(timing, PATHS) == "64 KiB, 1 ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)"
    assert filter_text("512 bytes, 1 ops; 00.00 sec (5.636 MiB/sec and 11542.2794 ops/sec)",
                       PATHS).startswith("512 bytes, 1 ops; XX:XX")
    assert filter_text("4 KiB, 1 ops; 00.00 sec (inf GiB/sec and inf ops/sec)", PATHS).endswith(
        "(XXX YYY/sec and XXX ops/sec)")
    # Under 1 KiB/s QEMU writes the rate in plain bytes (qemu-io's cvtstr).
    slow = "512 bytes, 1 ops; 00.59 sec (865.664458 bytes/sec and 1.6907 ops/sec)"
    assert filter_text(slow, PATHS) == "512 bytes, 1 ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)"
    assert filter_text("disk size: 196 KiB", PATHS) == "disk size: MASKED"
    assert filter_text("    disk size: 536 KiB", PATHS) == "    disk size: MASKED"  # qemu-img 10.0 child
    assert filter_text("/tmp/btxabc/qmp.sock", PATHS) == "SOCK_DIR/qmp.sock"
    assert filter_text("wrote 512/512 bytes at offset 0", PATHS) == "wrote 512/512 bytes at offset 0"


def test_tool_json_actual_size_is_masked_but_other_fields_are_not() -> None:
    """Rule F6 on qemu-img info --output=json lines: the host allocation varies, nothing else."""
    from conformance.compare.normalize import PathMap, filter_text

    assert filter_text('    "actual-size": 1589248,', PathMap()) == '    "actual-size": "MASKED",'
    assert filter_text('    "virtual-size": 67108864,', PathMap()) == '    "virtual-size": 67108864,'
