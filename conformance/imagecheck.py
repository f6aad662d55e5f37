"""Cross-check the images an emulator case wrote with the real `qemu-img check`.

Every qcow2 file left in an emulator case's directory must be one real QEMU accepts: no errors and
no leaked clusters.  This runs after the case (it is not part of the golden log) whenever a real
qemu-img is available, so CI, which installs QEMU, checks every image the emulator writes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

QCOW2_MAGIC = b"QFI\xfb"
CHECK_TIMEOUT = 60.0


def qcow2_files(directory: Path) -> list[Path]:
    found = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            with path.open("rb") as handle:
                if handle.read(4) == QCOW2_MAGIC:
                    found.append(path)
        except OSError:
            continue
    return found


def check_images(qemu_img: str, directory: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run `qemu-img check` on every qcow2 in `directory`; return a problem line per bad image."""
    problems = []
    for path in qcow2_files(directory):
        done = subprocess.run([qemu_img, "check", "-f", "qcow2", str(path)], capture_output=True,
                              text=True, timeout=CHECK_TIMEOUT, check=False, env=env)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().replace("\n", " | ")
            problems.append(f"{path.name}: qemu-img check exit {done.returncode}: {output}")
    return problems
