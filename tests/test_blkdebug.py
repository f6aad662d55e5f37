"""blkdebug: rule semantics and the legacy config file.

The expected behaviour (rule order, state handling, iotype/sector matching, and every config
error message) was observed with a real QEMU 7.2: `qemu-io -f raw -c ... blkdebug:CFG:IMG` and
QMP blockdev-add; see the report of the change that added emulator/block/blkdebug.py.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from emulator.block.blkdebug import (
    BLKDEBUG_EVENTS,
    BlkdebugNode,
    parse_blkdebug_config,
    parse_blkdebug_filename,
)
from emulator.block.drivers import FileNode
from emulator.error import QemuError

MiB = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Any:
    path = tmp_path / "img.raw"
    with open(path, "wb") as f:
        f.truncate(MiB)
    node = FileNode("file0", str(path))
    yield node
    node.close()


def blkdebug(image: Any, inject: list[dict[str, Any]] = (), states: list[dict[str, Any]] = (),
             **kw: Any) -> BlkdebugNode:
    return BlkdebugNode("dbg", image, inject_errors=list(inject), set_states=list(states), **kw)


def fails(fn: Any, *args: Any) -> int | None:
    """The errno a request fails with, or None if it succeeds."""
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return None


def test_passes_io_through(image: Any) -> None:
    node = blkdebug(image)
    assert node.driver == "blkdebug" and node.is_filter and node.filtered_child() is image
    node.pwrite(4096, b"\xab" * 512)
    assert image.pread(4096, 512) == b"\xab" * 512
    assert node.pread(4096, 512) == b"\xab" * 512
    node.pwrite_zeroes(4096, 512)
    assert node.pread(4096, 512) == bytes(512)
    node.flush()
    assert node.length() == MiB


def test_writes_through_blkdebug_dirty_the_child_too(image: Any) -> None:
    node = blkdebug(image)
    child_bm = image.dirty_bitmaps.create("c", 65536, MiB)
    own_bm = node.dirty_bitmaps.create("o", 65536, MiB)
    node.pwrite(0, b"x" * 512)
    assert child_bm.count() == own_bm.count() == 65536


def test_none_event_fires_at_open_and_rule_stays_active(image: Any) -> None:
    node = blkdebug(image, [{"event": "none", "errno": 5}])
    assert fails(node.pread, 0, 512) == errno.EIO
    assert fails(node.pread, 0, 512) == errno.EIO
    assert fails(node.pwrite, 0, b"x") == errno.EIO
    # Nothing was written, so QEMU's bdrv_co_flush skips flush_to_disk: no request to fail.
    node.flush()
    node.write_gen += 1  # as if a write had landed below the rule
    with pytest.raises(OSError) as exc:
        node.flush()
    assert exc.value.strerror == "Input/output error"


def test_once_removes_rule_after_first_hit(image: Any) -> None:
    node = blkdebug(image, [{"event": "none", "errno": 28, "once": True}])
    assert fails(node.pread, 0, 512) == errno.ENOSPC
    assert fails(node.pread, 0, 512) is None
    node.debug_event("none")  # the rule is gone for good, not just deactivated
    assert fails(node.pread, 0, 512) is None


def test_first_configured_rule_wins_and_errno_zero_never_fails(image: Any) -> None:
    node = blkdebug(image, [{"event": "none", "errno": 0}, {"event": "none", "errno": 5}])
    assert fails(node.pread, 0, 512) is None
    node = blkdebug(image, [{"event": "none", "errno": 5}, {"event": "none", "errno": 0}])
    assert fails(node.pread, 0, 512) == errno.EIO


def test_negative_errno_does_not_fail(image: Any) -> None:
    # QEMU returns -errno = +1, which callers take as success (observed: errno "-1" reads fine).
    node = blkdebug(image, [{"event": "none", "errno": -1}])
    assert fails(node.pread, 0, 512) is None


def test_sector_must_fall_inside_the_request(image: Any) -> None:
    node = blkdebug(image, [{"event": "none", "errno": 5, "sector": 3}])
    node.unmap = True  # discard=unmap: otherwise a discard never reaches the driver
    assert fails(node.pread, 0, 512) is None
    assert fails(node.pread, 512, 2048) == errno.EIO
    assert fails(node.pwrite, 1024, b"x" * 1024) == errno.EIO
    assert fails(node.pwrite_zeroes, 1024, 1024) == errno.EIO
    assert fails(node.discard, 1024, 1024) == errno.EIO
    assert fails(node.pread, 2048, 512) is None
    assert fails(node.flush) is None  # a flush has no range: sector rules never match it


def test_iotype_selects_the_request_kind(image: Any) -> None:
    node = blkdebug(image, [{"event": "none", "errno": 5, "iotype": "write-zeroes"}])
    assert fails(node.pwrite_zeroes, 0, 1024) == errno.EIO
    assert fails(node.pwrite, 0, b"x" * 512) is None
    assert fails(node.discard, 0, 512) is None
    node = blkdebug(image, [{"event": "none", "errno": 28, "iotype": "flush"}])
    node.pwrite(0, b"x")  # a write the flush-only rule lets through; now there is data to flush
    assert fails(node.flush) == errno.ENOSPC
    assert fails(node.pread, 0, 512) is None
    node = blkdebug(image, [{"event": "none", "errno": 5, "iotype": "block-status"}])
    assert fails(node.block_status, 0, 512) == errno.EIO
    assert fails(node.pread, 0, 512) is None
    node = blkdebug(image, [{"event": "none", "errno": 5}])  # the default excludes block-status
    assert fails(node.block_status, 0, 512) is None


def test_state_filter_uses_the_state_before_the_event(image: Any) -> None:
    # set-state 1->7 and an inject rule for state 7 on the same event: the rule does not fire.
    node = blkdebug(image, [{"event": "none", "state": 7, "errno": 5}],
                    [{"event": "none", "new_state": 7}])
    assert node.state == 7 and fails(node.pread, 0, 512) is None
    node = blkdebug(image, [{"event": "none", "state": 1, "errno": 5}],
                    [{"event": "none", "new_state": 7}])
    assert node.state == 7 and fails(node.pread, 0, 512) == errno.EIO


def test_a_new_activation_replaces_the_active_set(image: Any) -> None:
    node = blkdebug(image, [{"event": "none", "errno": 5},
                            {"event": "read_aio", "errno": 28, "iotype": "write"}])
    assert fails(node.pread, 0, 512) == errno.EIO
    node.debug_event("read_aio")
    assert fails(node.pread, 0, 512) is None
    assert fails(node.pwrite, 0, b"x") == errno.ENOSPC
    node.debug_event("flush_to_disk")  # no rules for it: the active set stays
    assert fails(node.pwrite, 0, b"x") == errno.ENOSPC


def test_iotest124_recipe_over_qcow2(tmp_path: Path) -> None:
    """set-state flush_to_disk 1->2; inject read_aio errno 5 in state 2, once."""
    from emulator.block.image import create_image
    from emulator.machine import Machine

    path = str(tmp_path / "drive1.qcow2")
    create_image(path, "qcow2", 64 * MiB)
    machine = Machine()
    try:
        qcow2 = machine.block.blockdev_add({
            "node-name": "drive1", "driver": "qcow2",
            "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": path},
                     "set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}],
                     "inject-error": [{"event": "read_aio", "errno": 5, "state": 2,
                                       "immediately": False, "once": True}]}})
        dbg = qcow2.children["file"]
        assert isinstance(dbg, BlkdebugNode) and dbg.state == 1
        qcow2.pwrite(0, b"\xab" * 65536)
        assert qcow2.pread(0, 512) == b"\xab" * 512  # state 1: reads work
        qcow2.flush()
        assert dbg.state == 2
        assert fails(qcow2.pread, 0, 512) == errno.EIO  # the first data read fails once
        assert qcow2.pread(0, 512) == b"\xab" * 512
        assert fails(qcow2.pread, 0, 512) is None
    finally:
        machine.block.close_all()


def test_align_and_event_validation(image: Any) -> None:
    with pytest.raises(QemuError, match="^Cannot meet constraints with align 3$"):
        blkdebug(image, align=3)
    with pytest.raises(QemuError, match="^Cannot meet constraints with align 2147483648$"):
        blkdebug(image, align=1 << 31)
    node = blkdebug(image, align=4096)
    assert node.request_alignment == 4096
    with pytest.raises(QemuError, match="^invalid parameter value: nosuch$"):
        blkdebug(image, [{"event": "nosuch"}])
    with pytest.raises(QemuError, match="^Missing event name for rule$"):
        blkdebug(image, [{"errno": 5}])
    with pytest.raises(QemuError, match="^invalid parameter value: bogus$"):
        blkdebug(image, [{"event": "none", "iotype": "bogus"}])
    with pytest.raises(ValueError):
        node.debug_event("not_an_event")
    assert len(BLKDEBUG_EVENTS) == 48 and BLKDEBUG_EVENTS[-2:] == ("cluster_alloc_space", "none")


def test_small_zero_write_falls_back_to_a_write(image: Any) -> None:
    node = blkdebug(image, [{"event": "none", "errno": 5, "iotype": "write"}], align=4096)
    assert fails(node.pwrite_zeroes, 0, 512) == errno.EIO  # below align: done as a write
    node = blkdebug(image, [{"event": "none", "errno": 5, "iotype": "discard"}], align=4096)
    assert fails(node.discard, 0, 4096) is None  # without discard=unmap nothing reaches it
    node.unmap = True
    assert fails(node.discard, 0, 512) is None  # below align: -ENOTSUP, ignored
    assert fails(node.discard, 0, 4096) == errno.EIO


# ---- legacy config file ---------------------------------------------------------------------------
def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "blkdebug.cfg"
    path.write_text(text)
    return str(path)


def test_parse_config(tmp_path: Path) -> None:
    text = ('# comment\n\n[inject-error]\nevent = "read_aio"\nerrno = "5"\nstate = "2"\n'
            'once = "on"\n  immediately   =   "off"  \nsector = "0x10"\niotype = "read"\n'
            '[set-state "s1"]\nevent = "flush_to_disk"\nstate = "1"\nnew_state = "2"\n'
            '[inject-error]x\nevent = "none"\nerrno = "010"\nonce = "yes"\n')
    inject, states = parse_blkdebug_config(config(tmp_path, text))
    assert inject == [{"event": "read_aio", "errno": 5, "state": 2, "once": True,
                       "immediately": False, "sector": 16, "iotype": "read"},
                      {"event": "none", "errno": 8, "once": True}]
    assert states == [{"event": "flush_to_disk", "state": 1, "new_state": 2}]


@pytest.mark.parametrize(("text", "message"), [
    ('[inject-error]\nevent = "nosuch"\n', "invalid parameter value: nosuch"),
    ('[inject-error]\nerrno = "5"\n', "Missing event name for rule"),
    ('[inject-error]\n', "Missing event name for rule"),
    ('[inject-error]\n[set-state]\nevent = "none"\nnew_state = "2"\n', "Missing event name for rule"),
    ('[inject-error]\nevent = "read_aio"\nerrno = "abc"\n', "Parameter 'errno' expects a number"),
    ('[inject-error]\nevent = "none"\nerrno = 5\n', "Parameter 'errno' expects a number"),
    ('[inject-error]\nevent = "none"\nerrno = "5x"\n', "Parameter 'errno' expects a number"),
    ('[inject-error]\nevent = "read_aio"\nerrno = "5"\nbogus = "1"\n', "Invalid parameter 'bogus'"),
    ('[bogus-section]\nevent = "read_aio"\n', "There is no option group 'bogus-section'"),
    ('[ inject-error ]\nevent = "none"\n', "There is no option group ' inject-error '"),
    ('garbage line\n', "no group defined"),
    ('[]\nevent = "none"\n', "no group defined"),
    ('# ok\n  # indented is not a comment\n[inject-error]\n', "no group defined"),
    ('[inject-error]\ngarbage\n', "Invalid parameter 'garbage'"),
    ('[inject-error]\nevent="none"\n', "Invalid parameter 'event=\"none\"'"),
    ('[inject-error]\nevent = read_aio\n', "invalid parameter value: "),
    ('[inject-error]\nevent = "read_aio"\niotype = "nosuch"\n', "invalid parameter value: nosuch"),
    ('[inject-error]\nevent = "read_aio"\nonce = "maybe"\n', "Parameter 'once' expects 'on' or 'off'"),
    ('[set-state]\nevent = "read_aio"\nnew_state = "x"\n', "Parameter 'new_state' expects a number"),
    ('[inject-error "id1"]\nevent = "none"\n[inject-error "id1"]\nevent = "none"\n',
     "Duplicate ID 'id1' for inject-error"),
    # inject-error rules are built before set-state rules, so their errors come first
    ('[set-state]\nevent = "nosuch"\nnew_state = "2"\n[inject-error]\nevent = "nosuch2"\n',
     "invalid parameter value: nosuch2"),
    # a group is validated when the next one starts, before later lines are read
    ('[set-state]\nevent = "none"\nnew_state = "2"\nbogus = "x"\n[inject-error]\ngarbage\n',
     "Invalid parameter 'bogus'"),
])
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(QemuError) as exc:
        parse_blkdebug_config(config(tmp_path, text))
    assert exc.value.desc == message


def test_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(QemuError, match="^Could not read blkdebug config file: No such file or "
                                        "directory$"):
        parse_blkdebug_config(str(tmp_path / "nonexist.cfg"))


def test_config_numbers_wrap_like_c(tmp_path: Path) -> None:
    inject, _ = parse_blkdebug_config(config(tmp_path, '[inject-error]\nevent = "none"\n'
                                                      'errno = "99999999999"\n'))
    assert inject[0]["errno"] == 99999999999  # the C int truncation happens in the rule
    inject, _ = parse_blkdebug_config(config(tmp_path, '[inject-error]\nevent = "none"\n'
                                                      'errno = "-1"\n'))
    assert inject[0]["errno"] == -1
    with pytest.raises(QemuError, match="^Value '18446744073709551616' is too large for parameter "
                                        "'errno'$"):
        parse_blkdebug_config(config(tmp_path, '[inject-error]\nevent = "none"\n'
                                               'errno = "18446744073709551616"\n'))


def test_config_file_rules_come_before_inline_ones(tmp_path: Path, image: Any) -> None:
    path = config(tmp_path, '[inject-error]\nevent = "none"\nerrno = "0"\n')
    node = blkdebug(image, [{"event": "none", "errno": 5}], config=path)
    assert fails(node.pread, 0, 512) is None
    path = config(tmp_path, '[inject-error]\nevent = "none"\nerrno = "99999999999"\n')
    node = blkdebug(image, config=path)
    with pytest.raises(OSError) as exc:
        node.pread(0, 512)
    assert exc.value.errno == 1215752191  # truncated to a C int, as QEMU ("Unknown error ...")


def test_parse_filename() -> None:
    assert parse_blkdebug_filename("blkdebug:/tmp/a.cfg:/tmp/img.raw") == ("/tmp/a.cfg", "/tmp/img.raw")
    assert parse_blkdebug_filename("blkdebug::/tmp/img.raw") == (None, "/tmp/img.raw")
    assert parse_blkdebug_filename("/tmp/img.raw") == (None, "/tmp/img.raw")
    with pytest.raises(QemuError, match="^blkdebug requires both config file and image path$"):
        parse_blkdebug_filename("blkdebug:/tmp/img.raw")
