"""Persistent dirty bitmaps stored in qcow2 (the bitmaps extension), interoperable with QEMU 7.2.

Round trips through the file (hypothesis-generated dirty patterns), the life cycle (in_use on a
writable open, inconsistent after a crash, removal from the image, transaction abort), QEMU's
limits and messages, and both directions against the real qemu-img / qemu-io / qemu-system:
granule sets are compared exactly through QEMU's x-debug-block-dirty-bitmap-sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import need, qmp_cmd, qmp_session, real, real_check_clean
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.block.dirty_bitmap import DirtyBitmap, DirtyBitmapSet
from emulator.block.drivers import FileNode
from emulator.block.image import create_image, open_image_chain
from emulator.block.qcow2_bitmaps import BitmapsExtension, check_constraints
from emulator.commands.bitmaps import transaction_action
from emulator.error import QemuError
from emulator.launcher import EmbeddedEmulator
from emulator.machine import Machine

MiB = 1 << 20
TIMEOUT = 20.0
BASE = ["-M", "none", "-nodefaults", "-display", "none"]
ROOT = Path(__file__).resolve().parent.parent


# ---- helpers ----------------------------------------------------------------------------------------
def real_bitmaps(path: Path) -> list[dict[str, Any]]:
    """qemu-img info's format-specific bitmaps (the on-disk directory)."""
    info = json.loads(real("qemu-img", "info", "-U", "--output=json", str(path)).stdout)
    return list(info["format-specific"]["data"].get("bitmaps", []))


def emulated_check(path: Path) -> dict[str, Any]:
    with open_image_chain(str(path), "qcow2") as img:
        assert img.qcow2 is not None
        return img.qcow2.check()


def sha256_of(bm: DirtyBitmap) -> str:
    """hbitmap_sha256: the last level (whole 64-bit little-endian words) hashed."""
    words = (bm.granules + 63) // 64
    return hashlib.sha256(bm.to_dense(0, bm.granules).ljust(words * 8, b"\0")).hexdigest()


def open_machine(path: Path, *, read_only: bool = False) -> Machine:
    machine = Machine()
    opts = {"if": "none", "id": "drive0", "node-name": "node0", "file": str(path), "format": "qcow2"}
    if read_only:
        opts["readonly"] = "on"
    machine.block.drive_add(opts)
    return machine


def bitmaps_of(machine: Machine) -> dict[str, DirtyBitmap]:
    node = machine.block.lookup_bs("drive0")
    return {bm.name: bm for bm in node.dirty_bitmaps if bm.name is not None}


def add_bitmap(machine: Machine, name: str, granularity: int | None = None, **options: Any) -> DirtyBitmap:
    """block-dirty-bitmap-add on drive0 (through the QMP dispatcher); the new bitmap."""
    if granularity is not None:
        options["granularity"] = granularity
    qmp_cmd(machine, "block-dirty-bitmap-add", node="drive0", name=name, **options)
    return bitmaps_of(machine)[name]


def remove_bitmap(machine: Machine, name: str) -> None:
    """block-dirty-bitmap-remove on drive0 (through the QMP dispatcher)."""
    qmp_cmd(machine, "block-dirty-bitmap-remove", node="drive0", name=name)


def on_disk(path: Path) -> list[dict[str, Any]]:
    with open_image_chain(str(path), "qcow2") as img:
        assert img.qcow2 is not None
        return list(img.qcow2.format_specific().get("bitmaps", []))


def io(cmd: str) -> tuple[str, dict[str, Any]]:
    return ("human-monitor-command", {"command-line": f'qemu-io drive0 "{cmd}"'})


def add(name: str, **kw: Any) -> tuple[str, dict[str, Any]]:
    return ("block-dirty-bitmap-add", {"node": "drive0", "name": name, **kw})


def sha(name: str) -> tuple[str, dict[str, Any]]:
    return ("x-debug-block-dirty-bitmap-sha256", {"node": "drive0", "name": name})


QUERY = ("query-named-block-nodes", None)


def drive_args(path: Path) -> list[str]:
    return ["-drive", f"if=none,id=drive0,node-name=node0,file={path},format=qcow2"]


def run_qemu(sock: Path, path: Path, *commands: tuple[str, dict[str, Any] | None]) -> list[Any]:
    """A real qemu-system-x86_64 session on `path`, ended with quit (bitmaps are stored)."""
    binary = need("qemu-system-x86_64")
    proc = subprocess.Popen([binary, *BASE, "-qmp", f"unix:{sock},server=on,wait=off",
                             *drive_args(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = qmp_session(sock, *commands, ("quit", None))
        assert proc.wait(TIMEOUT) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    return out[:-1]


def run_emulator(sock: Path, path: Path, *commands: tuple[str, dict[str, Any] | None]) -> list[Any]:
    """An in-process emulator session on `path`; stopping it closes the node (bitmaps stored)."""
    with EmbeddedEmulator([*BASE, "-qmp", f"unix:{sock},server=on,wait=off", *drive_args(path)]):
        return qmp_session(sock, *commands)


def node0_bitmaps(reply: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    node = next(n for n in reply if n["node-name"] == "node0")
    return {b["name"]: b for b in node.get("dirty-bitmaps", [])}


# ---- round trips through the file (the emulator alone) ----------------------------------------------
PATTERNS = st.lists(st.tuples(st.integers(0, 16 * MiB - 1), st.integers(1, 3 * MiB)), max_size=12)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cluster_bits=st.sampled_from([9, 12, 16]), gran_bits=st.integers(9, 17),
       size=st.integers(1, 16 * MiB // 512).map(lambda n: n * 512), pattern=PATTERNS,
       disabled=st.booleans())
def test_dirty_patterns_round_trip_through_the_file(tmp_path_factory: pytest.TempPathFactory,
                                                    cluster_bits: int, gran_bits: int, size: int,
                                                    pattern: list[tuple[int, int]],
                                                    disabled: bool) -> None:
    path = tmp_path_factory.mktemp("rt") / "img.qcow2"
    create_image(str(path), "qcow2", size, cluster_size=1 << cluster_bits)
    machine = open_machine(path)
    bm = add_bitmap(machine, "b", 1 << gran_bits, persistent=True, disabled=disabled)
    for offset, length in pattern:
        bm.set_dirty(offset % size, length)
    expected, count = bm.save_bits(), bm.count()
    machine.close()

    ours = on_disk(path)
    assert ours == [{"name": "b", "granularity": 1 << gran_bits, "flags": [] if disabled else ["auto"]}]
    result = emulated_check(path)
    assert (result["corruptions"], result["leaks"], result["check-errors"]) == (0, 0, 0), result["messages"]

    machine = open_machine(path)
    try:
        loaded = bitmaps_of(machine)["b"]
        assert loaded.bits == expected and loaded.count() == count
        assert loaded.persistent and loaded.disabled == disabled and not loaded.inconsistent
        assert on_disk(path)[0]["flags"] == ["in-use"] + ([] if disabled else ["auto"])
    finally:
        machine.close()
    assert on_disk(path)[0]["flags"] == ([] if disabled else ["auto"])


def test_guest_writes_are_recorded_stored_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", 64 * MiB)
    machine = open_machine(path)
    add_bitmap(machine, "g64k", persistent=True)
    add_bitmap(machine, "g512", 512, persistent=True)
    add_bitmap(machine, "transient", 512)
    node = machine.block.lookup_bs("drive0")
    node.pwrite(0, b"\1" * 4096)
    node.pwrite(40 * MiB + 100, b"\2" * 10)
    machine.close()
    machine = open_machine(path)
    try:
        loaded = bitmaps_of(machine)
        assert set(loaded) == {"g64k", "g512"}  # the transient one is gone, as in QEMU
        assert loaded["g64k"].count() == 2 * 65536
        assert loaded["g512"].count() == 8 * 512 + 512
        assert [bm.name for bm in node_list(machine)] == ["g64k", "g512"]  # directory order, head-inserted
    finally:
        machine.close()


def crash(machine: Machine) -> None:
    """What a killed process leaves: its descriptors (and image locks) gone, nothing stored."""
    for node in machine.block.nodes:
        if isinstance(node, FileNode):
            node.storage.close()


def node_list(machine: Machine) -> list[DirtyBitmap]:
    return list(machine.block.lookup_bs("drive0").dirty_bitmaps)


def test_all_ones_table_entry_loads_as_a_dirty_chunk(tmp_path: Path) -> None:
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", 8 * MiB, cluster_size=512)  # 512 * 8 granules per data cluster
    machine = open_machine(path)
    add_bitmap(machine, "b", 512, persistent=True)
    machine.close()
    with open_image_chain(str(path), "qcow2") as img:
        assert img.qcow2 is not None
        ext = img.qcow2.bitmaps_ext
        table_offset, table_size = struct.unpack_from(
            ">QI", img.file.pread(ext.directory_offset, 12))
    assert table_size == 8 * MiB // (512 * 4096)
    with open(path, "r+b") as f:  # chunk 1 (guest bytes 2 MiB..4 MiB): "all ones"
        f.seek(table_offset + 8)
        f.write(struct.pack(">Q", 1))
    machine = open_machine(path)
    try:
        bm = bitmaps_of(machine)["b"]
        assert list(bm.dirty_extents()) == [(2 * MiB, 2 * MiB)]
    finally:
        machine.close()
    result = emulated_check(path)
    assert (result["corruptions"], result["leaks"]) == (0, 0)


def test_read_only_open_loads_readonly_bitmaps_and_leaves_the_image_alone(tmp_path: Path) -> None:
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", MiB)
    machine = open_machine(path)
    add_bitmap(machine, "b", persistent=True).set_dirty(0, 1)
    machine.close()
    before = path.read_bytes()
    machine = open_machine(path, read_only=True)
    try:
        bm = bitmaps_of(machine)["b"]
        assert bm.readonly and bm.count() == 65536
        with pytest.raises(QemuError, match="Bitmap 'b' is readonly and cannot be modified"):
            remove_bitmap(machine, "b")
    finally:
        machine.close()
    assert path.read_bytes() == before


def test_removal_deletes_from_the_image_at_once(tmp_path: Path) -> None:
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", MiB)
    machine = open_machine(path)
    add_bitmap(machine, "a", persistent=True).set_dirty(0, MiB)
    add_bitmap(machine, "b", persistent=True)
    machine.close()
    machine = open_machine(path)
    try:
        remove_bitmap(machine, "a")
        assert [b["name"] for b in on_disk(path)] == ["b"]
        remove_bitmap(machine, "b")
        assert on_disk(path) == []
        with open_image_chain(str(path), "qcow2") as img:
            assert img.qcow2 is not None and img.qcow2.bitmaps_ext.nb_bitmaps == 0
            assert not img.qcow2.header.autoclear_features & 1
    finally:
        machine.close()
    result = emulated_check(path)
    assert (result["corruptions"], result["leaks"]) == (0, 0), result["messages"]


def test_aborted_transaction_removal_stores_the_bitmap_again(tmp_path: Path) -> None:
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", MiB)
    machine = open_machine(path)
    add_bitmap(machine, "b", persistent=True).set_dirty(4096, 1)
    machine.close()
    machine = open_machine(path)
    action = transaction_action(machine, "block-dirty-bitmap-remove", {"node": "drive0", "name": "b"})
    action.prepare()
    assert on_disk(path) == []  # QEMU removes it from the image in prepare
    action.abort()
    machine.close()
    assert on_disk(path) == [{"name": "b", "granularity": 65536, "flags": ["auto"]}]
    machine = open_machine(path)
    try:
        assert bitmaps_of(machine)["b"].count() == 65536
    finally:
        machine.close()


def test_inconsistent_bitmap_is_refused_kept_on_disk_and_removable(tmp_path: Path) -> None:
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", MiB)
    machine = open_machine(path)
    add_bitmap(machine, "b", persistent=True)
    machine.close()
    crash(open_machine(path))  # the open marks in_use on disk; then it dies without closing
    machine = open_machine(path)
    try:
        bm = bitmaps_of(machine)["b"]
        assert bm.inconsistent and bm.disabled
        assert DirtyBitmapSet.info(bm)["inconsistent"] is True
        with pytest.raises(QemuError, match="^Bitmap 'b' is inconsistent and cannot be used$"):
            bm.check(7)
    finally:
        machine.close()
    assert on_disk(path) == [{"name": "b", "granularity": 65536, "flags": ["in-use", "auto"]}]
    machine = open_machine(path)
    try:
        remove_bitmap(machine, "b")
    finally:
        machine.close()
    assert on_disk(path) == []
    result = emulated_check(path)
    assert (result["corruptions"], result["leaks"]) == (0, 0), result["messages"]


def test_offline_writes_keep_persistent_bitmaps_current(tmp_path: Path) -> None:
    """The offline image layer (blocktxn io / img) keeps a writable image's persistent bitmaps
    current and stores them at close, as qemu-io does: nothing leaks, nothing goes stale."""
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", MiB)
    machine = open_machine(path)
    add_bitmap(machine, "b", persistent=True).set_dirty(0, 1)
    machine.close()
    with open_image_chain(str(path), "qcow2", read_only=False) as img:
        img.pwrite(512 * 1024, b"x" * 512)
    machine = open_machine(path)
    try:
        assert {name: bm.count() for name, bm in bitmaps_of(machine).items()} == {"b": 2 * 65536}
    finally:
        machine.close()
    result = emulated_check(path)
    assert (result["corruptions"], result["leaks"]) == (0, 0), result["messages"]
    if shutil.which("qemu-img"):
        assert real("qemu-img", "check", str(path), check=False).returncode == 0


def test_limits_and_messages(tmp_path: Path) -> None:
    with pytest.raises(QemuError, match=r"^Granularity is under minimum \(512 bytes\)$"):
        check_constraints("x", 256, MiB, 65536)
    with pytest.raises(QemuError, match=r"^Granularity exceeds maximum \(2147483648 bytes\)$"):
        check_constraints("x", 1 << 32, MiB, 65536)
    with pytest.raises(QemuError, match="^Too much space will be occupied by the bitmap. Use larger "
                                        "granularity$"):
        check_constraints("x", 512, 1 << 50, 65536)
    with pytest.raises(QemuError, match=r"^Name length exceeds maximum \(1023 characters\)$"):
        check_constraints("x" * 1024, 65536, MiB, 65536)
    for data, message in [
        (struct.pack(">IIQQ", 0, 0, 24, 65536), "found bitmaps extension with zero bitmaps"),
        (struct.pack(">IIQQ", 1, 1, 24, 65536), "bitmaps_ext: Reserved field is not zero"),
        (struct.pack(">IIQQ", 65536, 0, 24, 65536),
         "bitmaps_ext: Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535"),
        (struct.pack(">IIQQ", 1, 0, 24, 512), "bitmaps_ext: invalid bitmap directory offset"),
        (struct.pack(">IIQQ", 1, 0, 1024 * 65535 + 1, 65536),
         "bitmaps_ext: bitmap directory size (67107841) exceeds the maximum supported size (67107840)"),
        (b"\0" * 16, "bitmaps_ext: Invalid extension length"),
    ]:
        with pytest.raises(QemuError) as exc:
            BitmapsExtension.parse(data, 65536)
        assert exc.value.desc == message
    # A damaged directory entry makes the open fail, as in QEMU.
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", MiB)
    machine = open_machine(path)
    add_bitmap(machine, "bad", persistent=True)
    machine.close()
    with open_image_chain(str(path), "qcow2") as img:
        assert img.qcow2 is not None
        directory = img.qcow2.bitmaps_ext.directory_offset
    with open(path, "r+b") as f:
        f.seek(directory + 17)  # granularity_bits
        f.write(b"\x08")
    with pytest.raises(QemuError, match="^Bitmap 'bad' doesn't satisfy the constraints$"):
        open_machine(path)


def test_persistent_bitmap_refused_on_qcow2_v2(tmp_path: Path) -> None:
    path = tmp_path / "v2.qcow2"
    real("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(path), "1M")
    machine = Machine()
    machine.block.drive_add({"if": "none", "id": "drive0", "file": str(path), "format": "qcow2",
                             "readonly": "on"})
    try:
        with pytest.raises(QemuError, match="^Can't make bitmap 'b' persistent in 'drive0': Cannot "
                                            "store dirty bitmaps in qcow2 v2 files$"):
            add_bitmap(machine, "b", persistent=True)
    finally:
        machine.close()


# ---- interop with real QEMU ---------------------------------------------------------------------
WRITES = ["write 0 8k", "write 100k 1k", "write 3M 1M", "write 63M 512"]


def test_emulator_bitmaps_are_read_by_real_qemu(tmp_path: Path, sockdir: Path) -> None:
    need("qemu-system-x86_64")
    path = tmp_path / "img.qcow2"
    create_image(str(path), "qcow2", 64 * MiB)
    ours = run_emulator(sockdir / "e.sock", path,
                        add("auto4k", granularity=4096, persistent=True),
                        add("off", granularity=65536, persistent=True, disabled=True),
                        add("fine", granularity=512, persistent=True),
                        *[io(w) for w in WRITES], QUERY)
    mine = node0_bitmaps(ours[-1])
    real_check_clean(path)
    assert real_bitmaps(path) == [
        {"flags": ["auto"], "name": "fine", "granularity": 512},
        {"flags": [], "name": "off", "granularity": 65536},
        {"flags": ["auto"], "name": "auto4k", "granularity": 4096},
    ]
    theirs = run_qemu(sockdir / "q.sock", path, QUERY, sha("auto4k"), sha("off"), sha("fine"))
    seen = node0_bitmaps(theirs[0])
    for name in ("auto4k", "off", "fine"):
        assert seen[name]["count"] == mine[name]["count"]
        assert seen[name]["persistent"] is True and "inconsistent" not in seen[name]
    assert seen["off"]["recording"] is False and seen["fine"]["recording"] is True
    # Exact granules: QEMU's sha256 of the bitmap against ours, loaded from the same file.
    machine = open_machine(path)
    try:
        loaded = bitmaps_of(machine)
        assert [reply["sha256"] for reply in theirs[1:]] == [
            sha256_of(loaded[n]) for n in ("auto4k", "off", "fine")]
    finally:
        machine.close()
    real_check_clean(path)


def test_real_qemu_bitmaps_are_loaded_by_the_emulator(tmp_path: Path, sockdir: Path) -> None:
    path = tmp_path / "img.qcow2"
    real("qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M")
    theirs = run_qemu(sockdir / "q.sock", path,
                      add("q0", persistent=True), add("q1", granularity=512, persistent=True),
                      add("qd", granularity=131072, persistent=True, disabled=True),
                      *[io(w) for w in WRITES], QUERY, sha("q0"), sha("q1"), sha("qd"))
    seen = node0_bitmaps(theirs[-4])
    ours = run_emulator(sockdir / "e.sock", path, QUERY)
    mine = node0_bitmaps(ours[0])
    assert {n: (b["count"], b["granularity"], b["recording"]) for n, b in mine.items()} == \
        {n: (b["count"], b["granularity"], b["recording"]) for n, b in seen.items()}
    machine = open_machine(path)
    try:
        loaded = bitmaps_of(machine)
        assert [sha256_of(loaded[n]) for n in ("q0", "q1", "qd")] == [r["sha256"] for r in theirs[-3:]]
    finally:
        machine.close()
    real_check_clean(path)


def test_qemu_img_bitmap_and_qemu_io_writes_are_loaded(tmp_path: Path) -> None:
    path = tmp_path / "img.qcow2"
    real("qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M")
    real("qemu-img", "bitmap", "--add", "-g", "4096", str(path), "b0")
    real("qemu-img", "bitmap", "--add", "--disable", str(path), "b1")
    real("qemu-io", "-c", "write 0 8k", "-c", "write 100k 1k", "-c", "write 15M 1M", str(path))
    real("qemu-img", "bitmap", "--enable", str(path), "b1")
    real("qemu-io", "-c", "write 5M 64k", str(path))
    machine = open_machine(path)
    try:
        loaded = bitmaps_of(machine)
        assert list(loaded["b0"].dirty_extents()) == [(0, 8192), (102400, 4096), (5 * MiB, 65536),
                                                      (15 * MiB, MiB)]
        assert list(loaded["b1"].dirty_extents()) == [(5 * MiB, 65536)]
        assert not loaded["b0"].disabled and not loaded["b1"].disabled
    finally:
        machine.close()
    real_check_clean(path)
    assert real_bitmaps(path) == [{"flags": ["auto"], "name": "b0", "granularity": 4096},
                                  {"flags": ["auto"], "name": "b1", "granularity": 65536}]


def test_killed_emulator_leaves_the_bitmap_inconsistent_not_stale(tmp_path: Path, sockdir: Path) -> None:
    need("qemu-img")
    path = tmp_path / "img.qcow2"
    real("qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M")
    real("qemu-img", "bitmap", "--add", str(path), "b0")
    sock = sockdir / "k.sock"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "emulator", *BASE, "-qmp",
                             f"unix:{sock},server=on,wait=off", *drive_args(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        replies = qmp_session(sock, io("write 0 64k"), QUERY)
        assert node0_bitmaps(replies[-1])["b0"]["count"] == 65536
        assert real_bitmaps(path) == [{"flags": ["in-use", "auto"], "name": "b0", "granularity": 65536}]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(TIMEOUT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()
    real_check_clean(path)  # no corruption; the bitmap is still referenced
    assert real_bitmaps(path) == [{"flags": ["in-use", "auto"], "name": "b0", "granularity": 65536}]
    ours = run_emulator(sockdir / "e.sock", path, QUERY,
                        ("block-dirty-bitmap-clear", {"node": "drive0", "name": "b0"}),
                        ("block-dirty-bitmap-enable", {"node": "drive0", "name": "b0"}))
    assert node0_bitmaps(ours[0])["b0"] == {"name": "b0", "recording": False, "persistent": True,
                                            "busy": False, "granularity": 65536, "count": 0,
                                            "inconsistent": True}
    assert ours[1:] == [{"error": "Bitmap 'b0' is inconsistent and cannot be used"}] * 2
    if shutil.which("qemu-system-x86_64"):
        theirs = run_qemu(sockdir / "q.sock", path, QUERY)
        assert node0_bitmaps(theirs[0])["b0"] == node0_bitmaps(ours[0])["b0"]
    real_check_clean(path)
