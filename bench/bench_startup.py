"""Start-up time, process start -> QMP greeting, emulator vs real QEMU, side by side.

Targets: the emulator started from scratch (the launcher `blocktxn iotests` writes, `python -S`
with compiled bytecode), the emulator through the fork server `blocktxn iotests` uses (a warm
process forks each emulator; the launcher is then only a small client), and real QEMU.
Each run starts the binary the way QEMU's iotests do (`-chardev socket,id=mon,fd=N -mon
chardev=mon,mode=control`, plus `-accel qtest` for the emulator and `-accel tcg` for Debian's QEMU,
which has no qtest accelerator), with PYTHONDONTWRITEBYTECODE=1 as iotests set it, and times
until the greeting line arrives; then it quits the process.  Prints the median of N runs per
target and the ratio emulator / QEMU.  Performance is reported, never asserted.

    .venv/bin/python bench/bench_startup.py [--runs N] [--machine pc|none]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QEMU10_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blocktxn" / "qemu-10.0.2"
TIMEOUT = 30.0


def emulator_launcher(folder: Path) -> list[str]:
    """The same launcher `blocktxn iotests` writes as QEMU_PROG."""
    sys.path.insert(0, str(ROOT))
    from conformance.iotests.runner import emulator_launcher as make

    return [str(make(folder))]


def targets(folder: Path, forkserver: str) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """name -> (argv prefix, extra env, accelerator)."""
    launcher = emulator_launcher(folder)
    found: dict[str, tuple[list[str], dict[str, str], str]] = {}
    for version in ("7.2", "10.0"):
        found[f"emulator {version}"] = (launcher, {"BLOCKTXN_QEMU_VERSION": version}, "qtest")
        found[f"emulator+fs {version}"] = (launcher, {"BLOCKTXN_QEMU_VERSION": version,
                                                      "BLOCKTXN_FORKSERVER": forkserver}, "qtest")
    qemu7 = shutil.which("qemu-system-x86_64")
    if qemu7:
        found["qemu 7.2"] = ([qemu7], {}, "tcg")
    binary10 = QEMU10_DIR / "usr" / "bin" / "qemu-system-x86_64"
    if binary10.exists():
        found["qemu 10.0"] = ([str(binary10)], {
            "QEMU_MODULE_DIR": str(QEMU10_DIR / "usr/lib/x86_64-linux-gnu/qemu")}, "tcg")
    return found


def one_run(argv: list[str], env: dict[str, str], accel: str, machine: str) -> float:
    """Seconds from spawning the process to the greeting's end of line."""
    ours, theirs = socket.socketpair()
    try:
        full = [*argv, "-display", "none", "-vga", "none", "-chardev",
                f"socket,id=mon,fd={theirs.fileno()}", "-mon", "chardev=mon,mode=control",
                "-accel", accel, "-nodefaults", "-M", machine]
        start = time.perf_counter()
        proc = subprocess.Popen(full, env={**os.environ, **env, "PYTHONDONTWRITEBYTECODE": "1"},
                                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        theirs.close()
        ours.settimeout(TIMEOUT)
        data = b""
        while b"\n" not in data:
            chunk = ours.recv(4096)
            if not chunk:
                raise RuntimeError(f"{argv[0]} closed the monitor before greeting")
            data += chunk
        elapsed = time.perf_counter() - start
        ours.sendall(b'{"execute":"qmp_capabilities"}{"execute":"quit"}')
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return elapsed
    finally:
        ours.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--machine", default="pc", help="machine type (iotests use the default, pc)")
    args = parser.parse_args()
    from conformance.iotests.runner import ForkServer

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        medians: dict[str, float] = {}
        server = ForkServer(Path(tmp))
        try:
            for name, (argv, env, accel) in targets(Path(tmp), server.path).items():
                one_run(argv, env, accel, args.machine)  # warm the page cache
                times = [one_run(argv, env, accel, args.machine) for _ in range(args.runs)]
                medians[name] = statistics.median(times)
                print(f"{name:17s} median {medians[name] * 1000:7.1f} ms  (min {min(times) * 1000:.1f}, "
                      f"max {max(times) * 1000:.1f}, n={args.runs})", flush=True)
        finally:
            server.stop()
    for version in ("7.2", "10.0"):
        theirs = medians.get(f"qemu {version}")
        for kind in ("emulator", "emulator+fs"):
            ours = medians.get(f"{kind} {version}")
            if ours and theirs:
                print(f"ratio {kind}/qemu {version}: {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
