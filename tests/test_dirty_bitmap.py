"""Dirty bitmaps: the bitmap itself, the per-node set, successors, and the QMP commands/actions.

Expected values and messages were taken from a real QEMU 7.2 (qemu-system-x86_64 -M none, QMP):
see the report of the change that added emulator/block/dirty_bitmap.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import qmp_cmd as run

from emulator.block.dirty_bitmap import (
    BITMAP_ALLOW_RO,
    BITMAP_BUSY,
    BITMAP_DEFAULT,
    BITMAP_RO,
    DirtyBitmap,
    DirtyBitmapSet,
    default_granularity,
    merge_dirty_bitmap,
)
from emulator.error import QemuError

MiB = 1 << 20
TiB = 1 << 40
IMG = 64 * MiB
#: iotest 124's first write set: 0xab 0 512, 0xfe 16M 256k, 0x64 32736k 64k.
WRITES_A = ((0, 512), (16 * MiB, 256 * 1024), (32736 * 1024, 64 * 1024))


def dirty(bm: DirtyBitmap, writes: tuple[tuple[int, int], ...] = WRITES_A) -> DirtyBitmap:
    for offset, length in writes:
        bm.set_dirty(offset, length)
    return bm


# ---- DirtyBitmap ------------------------------------------------------------------------------
@pytest.mark.parametrize(("granularity", "count"), [(65536, 458752), (32768, 360448),
                                                    (131072, 655360), (512, 328192)])
def test_count_iotest124_write_set(granularity: int, count: int) -> None:
    assert dirty(DirtyBitmap("b", granularity, IMG)).count() == count


def test_count_is_whole_granules_even_past_the_end() -> None:
    # QEMU 7.2: a 2 GiB-granularity bitmap on a 64 MiB node counts 2147483648 after one write.
    bm = DirtyBitmap("b", 1 << 31, IMG)
    bm.set_dirty(0, 512)
    assert bm.count() == 1 << 31


def test_set_reset_clear_is_dirty() -> None:
    bm = DirtyBitmap("b", 65536, IMG)
    bm.set_dirty(65535, 2)  # straddles two granules
    assert bm.count() == 2 * 65536
    assert bm.is_dirty(0) and bm.is_dirty(131071) and not bm.is_dirty(131072)
    bm.reset_dirty(0, 65536)
    assert not bm.is_dirty(0) and bm.count() == 65536
    with pytest.raises(ValueError):
        bm.reset_dirty(512, 65536)  # hbitmap_reset needs granule alignment
    bm.set_dirty(0, 0)
    assert bm.count() == 65536
    bm.clear()
    assert bm.count() == 0


def test_reset_tail_may_end_at_unaligned_size() -> None:
    bm = DirtyBitmap("b", 65536, 65536 + 512)
    bm.set_dirty(0, 65536 + 512)
    bm.reset_dirty(65536, 512)
    assert bm.count() == 65536


def test_extents_and_next_dirty_area() -> None:
    bm = dirty(DirtyBitmap("b", 65536, IMG))
    assert list(bm.dirty_extents()) == [(0, 65536), (16 * MiB, 262144), (33488896, 131072)]
    assert bm.next_dirty_area(1000) == (1000, 64536)
    assert bm.next_dirty_area(65536) == (16 * MiB, 262144)
    assert bm.next_dirty_area(16 * MiB, 16 * MiB + 4096) == (16 * MiB, 4096)
    assert bm.next_dirty_area(16 * MiB, max_bytes=65536) == (16 * MiB, 65536)
    assert bm.next_dirty_area(33488896 + 131072) is None
    assert bm.next_dirty(65536, 16 * MiB) == -1
    assert bm.next_zero(0) == 65536
    assert bm.next_zero(16 * MiB) == 16 * MiB + 262144
    assert list(bm.dirty_extents(16 * MiB + 65536, 16 * MiB + 131072)) == [(16 * MiB + 65536, 65536)]


def test_extent_reaching_the_end_is_clipped_to_size() -> None:
    bm = DirtyBitmap("b", 65536, 100000)
    bm.set_dirty(0, 100000)
    assert list(bm.dirty_extents()) == [(0, 100000)]
    assert bm.next_zero(0) == -1


def test_long_runs_are_found_in_few_steps() -> None:
    bm = DirtyBitmap("b", 512, TiB)
    bm.set_dirty(4096, 100 * (1 << 30))
    bm.set_dirty(TiB - 512, 512)
    assert list(bm.dirty_extents()) == [(4096, 100 * (1 << 30)), (TiB - 512, 512)]


def test_one_tib_at_512_bytes_memory_follows_dirty_data() -> None:
    bm = DirtyBitmap("b", 512, TiB)
    assert bm.granules == 1 << 31
    for offset in (0, 1 << 35, TiB - 4096):
        bm.set_dirty(offset, 65536 if offset + 65536 <= TiB else 4096)
    assert bm.count() == 2 * 65536 + 4096
    assert len(bm.to_bytes()) < 512
    assert bm.bits.get_statistics()["n_bytes_run_containers"] + \
        bm.bits.get_statistics()["n_bytes_array_containers"] < 4096
    assert bm.is_dirty(TiB - 1)
    copy = bm.copy()
    copy.merge_from(bm)
    assert copy.count() == bm.count()


def test_merge_same_and_different_granularity() -> None:
    a = dirty(DirtyBitmap("a", 65536, IMG))
    fine = DirtyBitmap("f", 512, IMG)
    fine.set_dirty(8 * MiB + 512, 512)
    coarse = DirtyBitmap("c", 131072, IMG)
    coarse.merge_from(a)
    assert coarse.count() == 655360
    a.merge_from(fine)
    assert a.count() == 458752 + 65536 and a.is_dirty(8 * MiB)
    fine.merge_from(coarse)  # coarse -> fine sets every fine granule in the coarse one
    assert fine.count() == 655360 + 512 - 0
    with pytest.raises(ValueError):
        a.merge_from(DirtyBitmap("x", 65536, IMG // 2))


def test_checked_merge_messages() -> None:
    dest = DirtyBitmap("d", 65536, IMG)
    src = DirtyBitmap("s", 65536, 32 * MiB)
    with pytest.raises(QemuError, match=r"^Bitmaps are of different sizes \(destination size is "
                                        r"67108864, source size is 33554432\) and can't be merged$"):
        merge_dirty_bitmap(dest, src)
    src2 = dirty(DirtyBitmap("s2", 65536, IMG))
    src2.busy = True
    with pytest.raises(QemuError, match="Bitmap 's2' is currently in use"):
        merge_dirty_bitmap(dest, src2)
    src2.busy = False
    src2.readonly = True  # a read-only source is fine (ALLOW_RO)
    merge_dirty_bitmap(dest, src2)
    assert dest.count() == 458752
    dest.readonly = True
    with pytest.raises(QemuError, match="^Bitmap 'd' is readonly and cannot be modified$"):
        merge_dirty_bitmap(dest, src2)


def test_truncate_shrink_keeps_partial_granule_and_grow_is_clean() -> None:
    bm = DirtyBitmap("b", 65536, IMG)
    bm.set_dirty(IMG - 65536, 65536)
    bm.set_dirty(MiB, 512)
    bm.truncate(IMG - 65536 + 512)  # last granule now partial and still dirty
    assert bm.count() == 2 * 65536
    bm.truncate(MiB + 512)
    assert bm.count() == 65536 and bm.size == MiB + 512
    bm.truncate(IMG)
    assert bm.count() == 65536
    assert list(bm.dirty_extents()) == [(MiB, 65536)]


def test_dense_round_trip_little_endian_bit_order() -> None:
    bm = DirtyBitmap("b", 65536, IMG)
    bm.set_dirty(0, 1)
    bm.set_dirty(9 * 65536, 3 * 65536)
    dense = bm.to_dense()
    assert len(dense) == 1024 // 8
    assert dense[0] == 0x01 and dense[1] == 0x0E
    other = DirtyBitmap("o", 65536, IMG)
    other.load_dense(dense)
    assert list(other.dirty_extents()) == list(bm.dirty_extents())
    restored = DirtyBitmap("r", 65536, IMG)
    restored.load_bytes(bm.to_bytes())
    assert restored.count() == bm.count()


def test_default_granularity() -> None:
    assert default_granularity(None) == 65536
    assert default_granularity(512) == 4096
    assert default_granularity(65536) == 65536
    assert default_granularity(2 * MiB) == 65536
    assert default_granularity(16384) == 16384


# ---- DirtyBitmapSet -----------------------------------------------------------------------------
def test_create_errors_and_head_insertion() -> None:
    s = DirtyBitmapSet()
    b0 = s.create("b0", 65536, IMG)
    b1 = s.create("b1", 512, IMG, disabled=True)
    assert [bm.name for bm in s] == ["b1", "b0"]  # QEMU lists the newest first
    assert s.find("b0") is b0 and s.find("nosuch") is None
    assert b1.disabled and not b1.recording
    with pytest.raises(QemuError, match="^Bitmap already exists: b0$"):
        s.create("b0", 65536, IMG)
    with pytest.raises(QemuError, match="^Granularity must be power of 2 and at least 512$"):
        s.create("x", 1000, IMG)
    s.create("y" * 1023, 65536, IMG)
    with pytest.raises(QemuError, match="^Bitmap name too long: z{1024}$"):
        s.create("z" * 1024, 65536, IMG)
    with pytest.raises(QemuError, match="^Bitmap already exists"):
        s.create("b0", 65536, IMG)  # the duplicate check comes before the length check


def test_mark_dirty_only_enabled_bitmaps() -> None:
    s = DirtyBitmapSet()
    on = s.create("on", 65536, IMG)
    off = s.create("off", 65536, IMG, disabled=True)
    s.mark_dirty(0, 512)
    assert on.count() == 65536 and off.count() == 0


def test_info_fields_as_qemu_emits_them() -> None:
    s = DirtyBitmapSet()
    bm = dirty(s.create("b0", 65536, IMG))
    info = s.info(bm)
    assert list(info) == ["name", "recording", "persistent", "busy", "granularity", "count"]
    assert info == {"name": "b0", "recording": True, "persistent": False, "busy": False,
                    "granularity": 65536, "count": 458752}
    bm.persistent = bm.inconsistent = True
    assert s.info(bm)["inconsistent"] is True
    anon = s.create(None, 512, IMG)
    assert "name" not in s.info(anon)
    assert [i.get("name") for i in s.query()] == [None, "b0"]


@pytest.mark.parametrize(("flags", "attr", "message"), [
    (BITMAP_BUSY, "busy", "Bitmap 'b' is currently in use by another operation and cannot be used"),
    (BITMAP_RO, "readonly", "Bitmap 'b' is readonly and cannot be modified"),
    (BITMAP_DEFAULT, "inconsistent", "Bitmap 'b' is inconsistent and cannot be used"),
    (BITMAP_ALLOW_RO, "busy", "Bitmap 'b' is currently in use by another operation and cannot be used"),
])
def test_check_flags(flags: int, attr: str, message: str) -> None:
    s = DirtyBitmapSet()
    bm = s.create("b", 65536, IMG)
    s.check(bm, flags)
    setattr(bm, attr, True)
    with pytest.raises(QemuError) as exc:
        s.check(bm, flags)
    assert exc.value.desc == message and exc.value.error_class == "GenericError"


def test_check_allow_ro_accepts_readonly_and_order_busy_first() -> None:
    s = DirtyBitmapSet()
    bm = s.create("b", 65536, IMG)
    bm.readonly = True
    s.check(bm, BITMAP_ALLOW_RO)
    bm.busy = bm.inconsistent = True
    with pytest.raises(QemuError, match="currently in use"):
        s.check(bm, BITMAP_DEFAULT)


# ---- successors (backup's freeze / sync / roll back) --------------------------------------------
def test_successor_records_writes_during_the_job_and_abdicate_keeps_only_those() -> None:
    s = DirtyBitmapSet()
    other = s.create("other", 65536, IMG)
    bm = dirty(s.create("b0", 65536, IMG, persistent=True))
    succ = s.create_successor(bm)
    assert bm.busy and bm.disabled and bm.recording and succ.name is None and not succ.disabled
    assert [b.name for b in s] == [None, "b0", "other"]
    with pytest.raises(QemuError, match="^Bitmap 'b0' is currently in use by another operation"):
        s.create_successor(bm)
    s.mark_dirty(MiB, 65536)  # a guest write while the job runs
    assert bm.count() == 458752 and succ.count() == 65536
    survivor = s.abdicate(bm)
    assert survivor is succ and survivor.name == "b0" and survivor.persistent
    assert not survivor.busy and survivor.count() == 65536
    assert bm not in s and bm.name is None and not bm.persistent
    # The successor keeps its own list position: the synced bitmap moves to the head.
    assert [b.name for b in s] == ["b0", "other"]
    assert other.count() == 65536  # an ordinary bitmap saw the write too


def test_reclaim_ors_successor_back_and_restores_recording() -> None:
    s = DirtyBitmapSet()
    bm = dirty(s.create("b0", 65536, IMG))
    succ = s.create_successor(bm)
    s.mark_dirty(MiB, 65536)
    s.mark_dirty(0, 512)  # already dirty in the parent
    back = s.reclaim(bm)
    assert back is bm and not bm.busy and not bm.disabled and bm.successor is None
    assert bm.count() == 458752 + 65536
    assert succ not in s and [b.name for b in s] == ["b0"]


def test_successor_of_disabled_bitmap_is_disabled_and_reclaim_keeps_it_disabled() -> None:
    s = DirtyBitmapSet()
    bm = s.create("d", 65536, IMG, disabled=True)
    succ = s.create_successor(bm)
    assert succ.disabled and not bm.recording
    s.mark_dirty(0, 512)
    assert succ.count() == 0
    s.reclaim(bm)
    assert bm.disabled and not bm.busy


def test_successor_errors() -> None:
    s = DirtyBitmapSet()
    bm = s.create("b", 65536, IMG)
    with pytest.raises(QemuError, match="^Cannot relinquish control if there's no successor present$"):
        s.abdicate(bm)
    with pytest.raises(QemuError, match="^Cannot reclaim a successor when none is present$"):
        s.reclaim(bm)
    s.create_successor(bm)
    bm.busy = False  # e.g. a caller that cleared busy by hand: the successor check still holds
    with pytest.raises(QemuError, match="^Cannot create a successor for a bitmap that already has one$"):
        s.create_successor(bm)
    bm.busy = True
    with pytest.raises(ValueError):
        s.remove(bm)


def test_truncate_follows_every_bitmap() -> None:
    s = DirtyBitmapSet()
    a = dirty(s.create("a", 65536, IMG))
    b = dirty(s.create("b", 32768, IMG, disabled=True))
    s.truncate(65 * MiB)
    assert a.size == b.size == 65 * MiB
    s.mark_dirty(64 * MiB, 512)
    assert a.count() == 458752 + 65536 and b.count() == 360448
    s.truncate(16 * MiB)
    assert a.count() == 65536 and b.count() == 32768


# ---- QMP commands and transaction actions ---------------------------------------------------------
@pytest.fixture
def machine(tmp_path: Any) -> Any:
    from emulator.block.image import create_image
    from emulator.machine import Machine

    m = Machine()
    m.block.blockdev_add({"driver": "null-co", "node-name": "null0", "size": IMG})
    m.block.blockdev_add({"driver": "null-co", "node-name": "small", "size": 32 * MiB})
    qcow2 = str(tmp_path / "a.qcow2")
    create_image(qcow2, "qcow2", IMG)
    m.block.blockdev_add({"driver": "qcow2", "node-name": "q0",
                          "file": {"driver": "file", "filename": qcow2}})
    yield m
    m.block.close_all()


def bitmaps_of(machine: Any, node: str) -> list[dict[str, Any]]:
    return machine.block.find_node(node).dirty_bitmaps.query()


def expect_error(message: str, fn: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(QemuError) as exc:
        fn(*args, **kwargs)
    assert exc.value.desc == message and exc.value.error_class == "GenericError"


def test_add_defaults_and_errors_in_qemu_order(machine: Any) -> None:
    run(machine, "block-dirty-bitmap-add", node="q0", name="b0")
    run(machine, "block-dirty-bitmap-add", node="null0", name="n0")
    run(machine, "block-dirty-bitmap-add", node="q0", name="b1", granularity=512, disabled=True)
    assert bitmaps_of(machine, "q0") == [
        {"name": "b1", "recording": False, "persistent": False, "busy": False, "granularity": 512,
         "count": 0},
        {"name": "b0", "recording": True, "persistent": False, "busy": False, "granularity": 65536,
         "count": 0}]
    assert bitmaps_of(machine, "null0")[0]["granularity"] == 65536
    expect_error("Bitmap name cannot be empty", run, machine, "block-dirty-bitmap-add",
                 node="nosuch", name="")
    expect_error("Cannot find device='nosuch' nor node-name='nosuch'", run, machine,
                 "block-dirty-bitmap-add", node="nosuch", name="x")
    expect_error("Granularity must be power of 2 and at least 512", run, machine,
                 "block-dirty-bitmap-add", node="q0", name="b0", granularity=100)
    expect_error("Bitmap already exists: b0", run, machine, "block-dirty-bitmap-add",
                 node="q0", name="b0")
    expect_error("Bitmap already exists: b0", run, machine, "block-dirty-bitmap-add",
                 node="q0", name="b0", persistent=True)
    expect_error("Bitmap name too long: " + "x" * 1024, run, machine, "block-dirty-bitmap-add",
                 node="q0", name="x" * 1024)


def test_add_persistent(machine: Any) -> None:
    run(machine, "block-dirty-bitmap-add", node="q0", name="p", granularity=1 << 31, persistent=True)
    assert bitmaps_of(machine, "q0")[0]["persistent"] is True
    expect_error("Can't store persistent bitmaps to null0: Operation not supported", run, machine,
                 "block-dirty-bitmap-add", node="null0", name="p", persistent=True)
    expect_error("Can't make bitmap '" + "z" * 1024 + "' persistent in 'q0': Name length exceeds "
                 "maximum (1023 characters)", run, machine, "block-dirty-bitmap-add", node="q0",
                 name="z" * 1024, persistent=True)


def test_lookup_errors_of_the_other_commands(machine: Any) -> None:
    for cmd in ("remove", "clear", "enable", "disable"):
        expect_error("Node 'nosuch' not found", run, machine, f"block-dirty-bitmap-{cmd}",
                     node="nosuch", name="b")
        expect_error("Dirty bitmap 'b' not found", run, machine, f"block-dirty-bitmap-{cmd}",
                     node="q0", name="b")


def test_clear_enable_disable_remove(machine: Any) -> None:
    run(machine, "block-dirty-bitmap-add", node="null0", name="b", disabled=True)
    bm = machine.block.find_node("null0").dirty_bitmaps.find("b")
    bm.set_dirty(0, 512)
    run(machine, "block-dirty-bitmap-clear", node="null0", name="b")  # allowed while disabled
    assert bm.count() == 0
    run(machine, "block-dirty-bitmap-enable", node="null0", name="b")
    machine.block.find_node("null0").pwrite(0, b"x" * 512)
    assert bm.count() == 65536
    run(machine, "block-dirty-bitmap-disable", node="null0", name="b")
    run(machine, "block-dirty-bitmap-disable", node="null0", name="b")  # idempotent, as QEMU
    assert not bm.recording
    run(machine, "block-dirty-bitmap-remove", node="null0", name="b")
    assert bitmaps_of(machine, "null0") == []


def test_busy_and_readonly_and_inconsistent_refusals(machine: Any) -> None:
    node = machine.block.find_node("null0")
    run(machine, "block-dirty-bitmap-add", node="null0", name="b0")
    run(machine, "block-dirty-bitmap-add", node="null0", name="b1")
    node.dirty_bitmaps.create_successor(node.dirty_bitmaps.find("b0"))
    busy = "Bitmap 'b0' is currently in use by another operation and cannot be used"
    for cmd in ("remove", "clear", "enable", "disable"):
        expect_error(busy, run, machine, f"block-dirty-bitmap-{cmd}", node="null0", name="b0")
    expect_error(busy, run, machine, "block-dirty-bitmap-merge", node="null0", target="b0",
                 bitmaps=["b1"])
    expect_error(busy, run, machine, "block-dirty-bitmap-merge", node="null0", target="b1",
                 bitmaps=["b0"])
    expect_error("Dirty bitmap 'nosuch' not found", run, machine, "block-dirty-bitmap-merge",
                 node="null0", target="b0", bitmaps=["nosuch"])  # sources are looked at first
    b1 = node.dirty_bitmaps.find("b1")
    b1.readonly = True
    ro = "Bitmap 'b1' is readonly and cannot be modified"
    expect_error(ro, run, machine, "block-dirty-bitmap-clear", node="null0", name="b1")
    expect_error(ro, run, machine, "block-dirty-bitmap-remove", node="null0", name="b1")
    expect_error(ro, run, machine, "block-dirty-bitmap-merge", node="null0", target="b1",
                 bitmaps=["b1"])
    run(machine, "block-dirty-bitmap-disable", node="null0", name="b1")  # ALLOW_RO
    b1.readonly, b1.inconsistent = False, True
    inc = "Bitmap 'b1' is inconsistent and cannot be used"
    for cmd in ("clear", "enable", "disable"):
        expect_error(inc, run, machine, f"block-dirty-bitmap-{cmd}", node="null0", name="b1")
    run(machine, "block-dirty-bitmap-remove", node="null0", name="b1")  # remove is allowed


def test_merge_local_external_and_sizes(machine: Any) -> None:
    null0 = machine.block.find_node("null0")
    run(machine, "block-dirty-bitmap-add", node="null0", name="t", granularity=131072)
    run(machine, "block-dirty-bitmap-add", node="null0", name="s", granularity=512)
    run(machine, "block-dirty-bitmap-add", node="q0", name="ext")
    run(machine, "block-dirty-bitmap-add", node="small", name="sm")
    dirty(null0.dirty_bitmaps.find("s"))
    machine.block.find_node("q0").dirty_bitmaps.find("ext").set_dirty(48 * MiB, 1)
    run(machine, "block-dirty-bitmap-merge", node="null0", target="t",
        bitmaps=["s", {"node": "q0", "name": "ext"}, "t"])
    assert null0.dirty_bitmaps.find("t").count() == 655360 + 131072
    expect_error("Bitmaps are of different sizes (destination size is 67108864, source size is "
                 "33554432) and can't be merged", run, machine, "block-dirty-bitmap-merge",
                 node="null0", target="t", bitmaps=[{"node": "small", "name": "sm"}])
    expect_error("Node 'nowhere' not found", run, machine, "block-dirty-bitmap-merge", node="null0",
                 target="t", bitmaps=["s", {"node": "nowhere", "name": "x"}])
    assert null0.dirty_bitmaps.find("t").count() == 655360 + 131072  # untouched by the failures
    run(machine, "block-dirty-bitmap-merge", node="null0", target="t", bitmaps=[])


def transact(machine: Any, *actions: tuple[str, dict[str, Any]], fail: bool = False) -> None:
    """Run actions in one QMP transaction; with `fail`, an "abort" action ends it, so that every
    action before it is prepared and then aborted in reverse."""
    listed = [{"type": kind, "data": data} for kind, data in actions]
    if fail:
        listed.append({"type": "abort", "data": {}})
    run(machine, "transaction", actions=listed)


def test_transaction_actions_roll_back(machine: Any) -> None:
    null0 = machine.block.find_node("null0")
    run(machine, "block-dirty-bitmap-add", node="null0", name="b1")
    b1 = dirty(null0.dirty_bitmaps.find("b1"))
    with pytest.raises(QemuError, match="Abort action"):
        transact(machine, ("block-dirty-bitmap-add", {"node": "null0", "name": "nb"}),
                 ("block-dirty-bitmap-clear", {"node": "null0", "name": "b1"}),
                 ("block-dirty-bitmap-disable", {"node": "null0", "name": "b1"}),
                 ("block-dirty-bitmap-merge", {"node": "null0", "target": "nb", "bitmaps": ["b1"]}),
                 ("block-dirty-bitmap-remove", {"node": "null0", "name": "b1"}), fail=True)
    assert null0.dirty_bitmaps.find("nb") is None
    assert b1.count() == 458752 and not b1.disabled and not b1.busy and not b1.skip_store
    # remove marks busy in prepare, so a second remove (or clear) of it in the same txn fails
    with pytest.raises(QemuError, match="^Bitmap 'b1' is currently in use"):
        transact(machine, ("block-dirty-bitmap-remove", {"node": "null0", "name": "b1"}),
                 ("block-dirty-bitmap-clear", {"node": "null0", "name": "b1"}))
    assert not b1.busy
    # and an add of the same name after a remove in the same txn still sees it
    with pytest.raises(QemuError, match="^Bitmap already exists: b1$"):
        transact(machine, ("block-dirty-bitmap-remove", {"node": "null0", "name": "b1"}),
                 ("block-dirty-bitmap-add", {"node": "null0", "name": "b1"}))
    # an action whose own prepare failed is aborted too; that must be harmless
    with pytest.raises(QemuError, match="^Dirty bitmap 'nosuch' not found$"):
        transact(machine, ("block-dirty-bitmap-enable", {"node": "null0", "name": "nosuch"}))


def test_transaction_actions_commit(machine: Any) -> None:
    null0 = machine.block.find_node("null0")
    run(machine, "block-dirty-bitmap-add", node="null0", name="b1")
    dirty(null0.dirty_bitmaps.find("b1"))
    transact(machine, ("block-dirty-bitmap-add", {"node": "null0", "name": "nb", "granularity": 512}),
             ("block-dirty-bitmap-disable", {"node": "null0", "name": "nb"}),
             ("block-dirty-bitmap-merge", {"node": "null0", "target": "nb", "bitmaps": ["b1"]}),
             ("block-dirty-bitmap-clear", {"node": "null0", "name": "b1"}))
    nb = null0.dirty_bitmaps.find("nb")
    assert nb.disabled and nb.count() == 458752 and null0.dirty_bitmaps.find("b1").count() == 0
    transact(machine, ("block-dirty-bitmap-remove", {"node": "null0", "name": "b1"}),
             ("block-dirty-bitmap-enable", {"node": "null0", "name": "nb"}))
    assert null0.dirty_bitmaps.find("b1") is None and not nb.disabled


def test_a_read_only_bitmap_refuses_writes_with_eperm() -> None:
    """bdrv_aligned_pwritev and bdrv_co_pdiscard fail with EPERM while the node has a read-only
    bitmap (it could not record the write), before the node's own read-only check.  Through QMP
    and HMP the permission system refuses such writes first: read-only bitmaps only exist on
    read-only nodes (measured on QEMU 7.2.22 and 10.0.2: "Block node is read-only")."""
    import errno

    from emulator.block.drivers import NullCoNode

    node = NullCoNode("n", 1 << 20)
    node.unmap = True
    bitmap = node.dirty_bitmaps.create("b", 65536, 1 << 20)
    node.pwrite(0, b"x")
    bitmap.readonly = True
    for write in (lambda: node.pwrite(0, b"x"), lambda: node.pwrite_zeroes(0, 512),
                  lambda: node.discard(0, 65536)):
        with pytest.raises(OSError) as refused:
            write()
        assert refused.value.errno == errno.EPERM
    assert bitmap.count() == 65536  # only the first write was recorded
    bitmap.readonly = False
    node.discard(0, 65536)
