"""The post-case real qemu-img check catches a bad image (so its silence means something)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conformance.imagecheck import check_images, qcow2_files

QEMU_IMG = shutil.which("qemu-img")
pytestmark = pytest.mark.skipif(QEMU_IMG is None,
                                reason="qemu-img not found: apt-get install qemu-utils")


def test_clean_and_leaky_images(tmp_path: Path) -> None:
    assert QEMU_IMG is not None
    good, bad = tmp_path / "good.qcow2", tmp_path / "bad.qcow2"
    for image in (good, bad):
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    (tmp_path / "raw.img").write_bytes(bytes(4096))
    # Raise cluster 0's refcount (first entry of the refcount block at cluster 2) to 2: a leak.
    with bad.open("r+b") as handle:
        handle.seek(2 * 65536)
        handle.write(struct.pack(">H", 2))
    assert qcow2_files(tmp_path) == [bad, good]
    problems = check_images(QEMU_IMG, tmp_path)
    assert len(problems) == 1 and problems[0].startswith("bad.qcow2: qemu-img check exit 3")
