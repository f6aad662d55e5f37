"""QMP start-up and round-trip latency: real QEMU vs the emulator (process and in-process).

Measured side by side in one run:
- start to greeting: from starting the target until its QMP greeting can be read (connect
  polled every millisecond), N starts each;
- round trip: mean time of `query-status` through qemu.qmp's QMPClient, M calls each.

Prints a table with means and the emulator/QEMU ratios; runs without QEMU ("QEMU not found").
Usage: python bench/bench_qmp.py [--starts 20] [--calls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path

from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator.launcher import EmbeddedEmulator

ARGS = ["-M", "none", "-nodefaults", "-display", "none"]
TIMEOUT = 30.0


def machine_args(sock: Path) -> list[str]:
    return [*ARGS, "-qmp", f"unix:{sock},server=on,wait=off"]


def read_greeting(sock: Path, deadline: float) -> None:
    """Poll-connect until the greeting line arrives."""
    while True:
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(TIMEOUT)
        try:
            client.connect(str(sock))
            data = b""
            while b"\n" not in data:
                chunk = client.recv(4096)
                if not chunk:
                    raise ConnectionResetError("closed before the greeting")
                data += chunk
            return
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
        finally:
            client.close()


class Target(ABC):
    name: str

    @abstractmethod
    def start(self, sock: Path) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...


class ProcessTarget(Target):
    def __init__(self, name: str, argv0: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv0 = argv0
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, sock: Path) -> None:
        self.proc = subprocess.Popen([*self.argv0, *machine_args(sock)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class InProcessTarget(Target):
    name = "emulator (in-process)"

    def __init__(self) -> None:
        self.emu: EmbeddedEmulator | None = None

    def start(self, sock: Path) -> None:
        self.emu = EmbeddedEmulator(machine_args(sock))
        self.emu.start()

    def stop(self) -> None:
        if self.emu is not None:
            self.emu.stop()
        self.emu = None


def time_starts(target: Target, starts: int, workdir: Path) -> float:
    samples = []
    for i in range(starts):
        sock = workdir / f"s{i}.sock"
        begin = time.perf_counter()
        target.start(sock)
        try:
            read_greeting(sock, time.monotonic() + TIMEOUT)
            samples.append(time.perf_counter() - begin)
        finally:
            target.stop()
    return statistics.mean(samples)


async def _round_trips(sock: Path, calls: int) -> float:
    client = QMPClient("bench")
    await asyncio.wait_for(client.connect(str(sock)), TIMEOUT)
    try:
        await client.execute("query-status")  # warm-up
        begin = time.perf_counter()
        for _ in range(calls):
            await asyncio.wait_for(client.execute("query-status"), TIMEOUT)
        return (time.perf_counter() - begin) / calls
    finally:
        await client.disconnect()


def time_round_trip(target: Target, calls: int, workdir: Path) -> float:
    sock = workdir / "rt.sock"
    target.start(sock)
    try:
        read_greeting(sock, time.monotonic() + TIMEOUT)
        return asyncio.run(_round_trips(sock, calls))
    finally:
        target.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args(argv)

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    qemu = shutil.which("qemu-system-x86_64")
    targets: list[Target | None] = [
        ProcessTarget("QEMU 7.2", [qemu]) if qemu else None,
        ProcessTarget("emulator (process)", [sys.executable, "-m", "emulator"], env),
        InProcessTarget(),
    ]
    results: dict[str, tuple[float, float] | None] = {}
    with tempfile.TemporaryDirectory(prefix="btx") as tmp:
        workdir = Path(tmp)
        for target in targets:
            if target is None:
                results["QEMU 7.2"] = None
                continue
            results[target.name] = (time_starts(target, args.starts, workdir),
                                    time_round_trip(target, args.calls, workdir))

    base = results.get("QEMU 7.2")
    print(f"{'target':<24} {'start->greeting (ms)':>21} {'ratio':>7} {'query-status RTT (ms)':>22} {'ratio':>7}")
    for name, value in results.items():
        if value is None:
            print(f"{name:<24} {'QEMU not found':>21}")
            continue
        start, rtt = value
        ratio_start = f"{start / base[0]:.2f}" if base else "-"
        ratio_rtt = f"{rtt / base[1]:.2f}" if base else "-"
        print(f"{name:<24} {start * 1e3:>21.2f} {ratio_start:>7} {rtt * 1e3:>22.3f} {ratio_rtt:>7}")
    print(f"({args.starts} starts and {args.calls} round trips per target; ratios are target/QEMU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
