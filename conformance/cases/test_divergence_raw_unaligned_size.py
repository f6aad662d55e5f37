r"""A raw image whose size is not a multiple of 512 is a node of whole sectors: QEMU keeps a
node's length in bs->total_sectors (refresh_total_sectors: DIV_ROUND_UP(length, 512)) and
bdrv_getlength returns total_sectors * 512.  So a 1000-byte raw file is 1024 bytes long and a
1221-byte one 1536, wherever QEMU reports or uses the length:

- ``qemu-img info`` (virtual size, and 10.0's ``file length`` of the protocol child) and
  ``qemu-img map`` (the tail of the last sector is a trailing hole: zero, no data);
- ``virtual-size`` of the raw format node in query-block and query-named-block-nodes;
- guest I/O bounds: a read of the 24 bytes past the end of the file succeeds with zeros, one
  byte further fails with EIO; a write there grows the host file to 1024 bytes and dirties the
  bitmap;
- backups: the new target drive-backup creates has the rounded size (``Formatting ...
  size=1024`` / ``size=1536``) and the job's len and offset count whole clusters (65536).

The emulator used to report the exact byte counts (1000, 1221), refuse the reads and writes in
the last partial sector, and create backup targets of the exact size (then "Source and target
image have different sizes").

Deterministic: no job here is timed (each backup runs to its end and the case waits for it).
Run 5 times against each real QEMU (``./blocktxn conform --target qemu --qemu BIN -k
test_divergence_raw_unaligned_size``): 5/5 passed on QEMU 7.2.22, 5/5 on QEMU 10.0.2.

Record the golden from real QEMU with ``./blocktxn record-golden -k test_divergence_raw_unaligned_size``.
"""

from __future__ import annotations

import os

from conformance.vm import VM


async def test_divergence_raw_unaligned_size(vm: VM) -> None:
    """Sizes 1000 and 1221 are reported and used as 1024 and 1536 (whole sectors)."""
    small, odd = vm.path("r1000.raw"), vm.path("r1221.raw")
    small.write_bytes(b"\x5a" * 1000)
    odd.write_bytes(b"\xa5" * 1221)
    vm.tools.info(small, "raw")
    vm.tools.info(odd, "raw", json_output=True)
    vm.tools.map(small, "raw")
    vm.tools.compare(small, odd, "raw")

    vm.add_drive(small, fmt="raw", drive_id="drive0", node_name="node0")
    await vm.launch()
    await vm.qmp("blockdev-add", {"driver": "raw", "node-name": "odd0",
                                  "file": {"driver": "file", "filename": str(odd)}})
    await vm.qmp("query-block")
    await vm.qmp("query-named-block-nodes", {"flat": True})

    # Reads in the last sector: past the end of the file they read zeros; past 1024, EIO.
    await vm.hmp_qemu_io("drive0", "read -v 992 32")
    await vm.hmp_qemu_io("drive0", "read -P 0 1000 24")
    await vm.hmp_qemu_io("drive0", "read 1000 25")
    await vm.hmp_qemu_io("drive0", "read 1024 1")
    await vm.hmp_qemu_io("odd0", "read -P 0 1221 315")
    await vm.hmp_qemu_io("odd0", "read 1536 1")

    # New backup targets get the rounded size; the jobs count whole clusters.
    await vm.qmp("drive-backup", {"job-id": "j1", "device": "drive0", "sync": "full",
                                  "format": "raw", "target": str(vm.path("t1.raw"))})
    await vm.wait_job_end("j1")
    await vm.qmp("drive-backup", {"job-id": "j2", "device": "odd0", "sync": "full",
                                  "format": "qcow2", "target": str(vm.path("t2.qcow2"))})
    await vm.wait_job_end("j2")

    # A write into the tail grows the file to whole sectors and dirties the bitmap.
    await vm.qmp("block-dirty-bitmap-add", {"node": "node0", "name": "b0"})
    await vm.hmp_qemu_io("drive0", "write -P 0x11 1000 24")
    await vm.hmp_qemu_io("drive0", "read -P 0x11 1000 24")
    await vm.qmp("query-block")
    await vm.shutdown()

    assert os.path.getsize(small) == 1024
    assert os.path.getsize(odd) == 1221
    assert os.path.getsize(vm.path("t1.raw")) == 1024
    vm.tools.info(vm.path("t2.qcow2"), "qcow2")
    vm.tools.qemu_io(vm.path("t1.raw"), "raw", ["read -P 0x5a 0 1000", "read -P 0 1000 24"])
    assert vm.tools.compare(vm.path("t2.qcow2"), odd, "qcow2", "raw").returncode == 0
