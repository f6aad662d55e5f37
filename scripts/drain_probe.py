#!/usr/bin/env python3
"""Which commands pause a running job, and how often: per step, the JOB_STATUS_CHANGE events a
held backup job (``speed=1``) received while the step ran, on real QEMU and on the emulator.

This is how the drain points of conformance/compare/normalize.py's rule J1 and of the emulator's drained
sections (emulator/block/drain.py) were measured.  Each probe starts the differential scenario's
two drives (drive0 = ``-drive`` with node-name node0, drive1 = qcow2 over blkdebug), starts the
held backup(s) it names, then runs its steps one by one; after each step it waits `--settle`
seconds so that the step's events have arrived before the next one is sent.

    .venv/bin/python scripts/drain_probe.py --qemu /usr/bin/qemu-system-x86_64 [--runs 3] [PROBE...]

prints, per probe and step, ``qemu@7.2: j1 paused running`` beside ``emulator@7.2: ...`` and marks
the steps where they differ, or where repeated real runs differed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformance.differential.steps import (
    CreateImage,
    HmpIo,
    Img,
    Primitive,
    Qmp,
    launch_scenario,
    run_primitive,
    wait_first_chunk,
)
from conformance.targets import EmulatorTarget, QemuBinaries, QemuTarget, Target
from conformance.vm import VM


def backup(job: str, device: str = "drive0", **extra: Any) -> list[Primitive]:
    """A full drive-backup of `device` held still by speed=1 (mode=existing, so no creation)."""
    return [CreateImage(Img(f"{job}.qcow2")),
            Qmp("drive-backup", {"job-id": job, "device": device, "sync": "full", "format": "qcow2",
                                 "mode": "existing", "target": Img(f"{job}.qcow2"), "speed": 1,
                                 **extra})]


def blockdev_backup(job: str, device: str, target: str, **extra: Any) -> list[Primitive]:
    return [Qmp("blockdev-backup", {"job-id": job, "device": device, "target": target,
                                    "sync": "full", "speed": 1, **extra})]


def add_target_node(name: str) -> list[Primitive]:
    return [CreateImage(Img(f"{name}.qcow2")),
            Qmp("blockdev-add", {"node-name": name, "driver": "qcow2",
                                 "file": {"driver": "file", "filename": Img(f"{name}.qcow2")}})]


Steps = list[tuple[str, list[Primitive]]]

#: probe name -> (held jobs started first, steps)
PROBES: dict[str, Callable[[], tuple[Steps, Steps]]] = {}


def probe(fn: Callable[[], tuple[Steps, Steps]]) -> Callable[[], tuple[Steps, Steps]]:
    PROBES[fn.__name__] = fn
    return fn


@probe
def hmp_qemu_io() -> tuple[Steps, Steps]:
    return ([("j1 on drive0", backup("j1"))], [
        ("qemu-io drive0 read", [HmpIo("drive0", "read 0 512")]),
        ("qemu-io node0 read", [HmpIo("node0", "read 0 512")]),
        ("qemu-io node0 write", [HmpIo("node0", "write 0 512")]),
        ("qemu-io drive0 flush", [HmpIo("drive0", "flush")]),
        ("qemu-io node0 flush", [HmpIo("node0", "flush")]),
        ("qemu-io drive1 read (other drive)", [HmpIo("drive1", "read 0 512")]),
        ("qemu-io drive1 flush (other drive)", [HmpIo("drive1", "flush")]),
        ("query-block", [Qmp("query-block")]),
        ("query-named-block-nodes", [Qmp("query-named-block-nodes")]),
        ("query-jobs", [Qmp("query-jobs")]),
    ])


@probe
def bitmaps() -> tuple[Steps, Steps]:
    return ([("j1 on drive0", backup("j1"))], [
        ("bitmap-add drive0", [Qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})]),
        ("bitmap-add drive1", [Qmp("block-dirty-bitmap-add", {"node": "drive1", "name": "b1"})]),
        ("bitmap-clear drive0", [Qmp("block-dirty-bitmap-clear", {"node": "drive0", "name": "b0"})]),
        ("bitmap-disable drive0", [Qmp("block-dirty-bitmap-disable", {"node": "drive0", "name": "b0"})]),
        ("bitmap-enable drive0", [Qmp("block-dirty-bitmap-enable", {"node": "drive0", "name": "b0"})]),
        ("bitmap-merge drive0", [Qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b2"}),
                                 Qmp("block-dirty-bitmap-merge", {"node": "drive0", "target": "b2",
                                                                  "bitmaps": ["b0"]})]),
        ("bitmap-remove drive0", [Qmp("block-dirty-bitmap-remove", {"node": "drive0", "name": "b0"})]),
        ("bitmap-remove drive1", [Qmp("block-dirty-bitmap-remove", {"node": "drive1", "name": "b1"})]),
        ("bitmap-remove missing", [Qmp("block-dirty-bitmap-remove", {"node": "drive0", "name": "zz"})]),
    ])


@probe
def transactions() -> tuple[Steps, Steps]:
    return ([("j1 on drive0", backup("j1"))], [
        ("transaction []", [Qmp("transaction", {"actions": []})]),
        ("transaction bitmap-add drive1", [Qmp("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "drive1", "name": "t1"}}]})]),
        ("transaction bitmap-add drive0", [Qmp("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "t0"}}]})]),
        ("transaction 2x bitmap-add fails", [Qmp("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "u0"}},
            {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "t0"}}]})]),
        ("transaction bitmap-clear drive0", [Qmp("transaction", {"actions": [
            {"type": "block-dirty-bitmap-clear", "data": {"node": "drive0", "name": "t0"}}]})]),
        ("transaction abort", [Qmp("transaction", {"actions": [{"type": "abort", "data": {}}]})]),
    ])


@probe
def backups() -> tuple[Steps, Steps]:
    return ([("j1 on drive0", backup("j1"))], [
        ("drive-backup drive0 busy", [Qmp("drive-backup", {
            "job-id": "j2", "device": "drive0", "sync": "full", "format": "qcow2",
            "target": Img("j2.qcow2")})]),
        ("drive-backup bad bitmap", [Qmp("drive-backup", {
            "job-id": "j3", "device": "drive1", "sync": "incremental", "format": "qcow2",
            "target": Img("j3.qcow2"), "bitmap": "nosuch"})]),
        ("drive-backup drive1 (new job j4)", backup("j4", "drive1")),
        ("drive-backup drive1 sync=none (busy)", [Qmp("drive-backup", {
            "job-id": "j5", "device": "drive1", "sync": "none", "format": "qcow2",
            "target": Img("j5.qcow2")})]),
        ("block-job-set-speed j4", [Qmp("block-job-set-speed", {"device": "j4", "speed": 2})]),
        ("job-pause j4", [Qmp("job-pause", {"id": "j4"})]),
        ("job-resume j4", [Qmp("job-resume", {"id": "j4"})]),
        ("job-cancel j4", [Qmp("job-cancel", {"id": "j4"})]),
    ])


@probe
def graph() -> tuple[Steps, Steps]:
    return ([("j1 on drive0", backup("j1"))], [
        ("blockdev-add tgt", add_target_node("tgt")),
        ("blockdev-backup drive1->tgt (new job j2)", blockdev_backup("j2", "drive1", "tgt")),
        ("blockdev-add spare", add_target_node("spare")),
        ("blockdev-del spare", [Qmp("blockdev-del", {"node-name": "spare"})]),
        ("blockdev-del node0 busy", [Qmp("blockdev-del", {"node-name": "node0"})]),
        ("job-cancel j2", [Qmp("job-cancel", {"id": "j2"})]),
        ("blockdev-snapshot-sync drive1", [Qmp("blockdev-snapshot-sync", {
            "node-name": "drive1", "snapshot-file": Img("snap1.qcow2"), "format": "qcow2",
            "snapshot-node-name": "snap1"})]),
        ("drive-backup drive1 sync=none", [Qmp("drive-backup", {
            "job-id": "j3", "device": "snap1", "sync": "none", "format": "qcow2",
            "target": Img("j3.qcow2")})]),
        ("job-cancel j3", [Qmp("job-cancel", {"id": "j3"})]),
    ])


@probe
def job_end() -> tuple[Steps, Steps]:
    return ([("j1 on drive0", backup("j1")), ("j2 on drive1", backup("j2", "drive1"))], [
        ("block-job-set-speed j2 0 (j2 completes)", [Qmp("block-job-set-speed", {"device": "j2", "speed": 0})]),
        ("block-job-cancel j1", [Qmp("block-job-cancel", {"device": "j1"})]),
    ])


@probe
def backup_errors() -> tuple[Steps, Steps]:
    existing = {"format": "qcow2", "mode": "existing"}
    return ([("bitmap0", [Qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0"}),
                          HmpIo("drive0", "write -P 0x5 0 256k")]),
             ("job0 incremental on drive0", backup("job0", sync="incremental", bitmap="bitmap0"))], [
        ("t1", [CreateImage(Img("t1.qcow2"))]),
        ("busy device drive0", [Qmp("drive-backup", {"job-id": "job1", "device": "drive0", "sync": "full",
                                                    "target": Img("t1.qcow2"), **existing})]),
        ("job id in use (drive1)", [Qmp("drive-backup", {"job-id": "job0", "device": "drive1",
                                                         "sync": "full", "target": Img("t1.qcow2"),
                                                         **existing})]),
        ("job id in use (node0)", [Qmp("drive-backup", {"job-id": "job0", "device": "node0",
                                                        "sync": "full", "target": Img("t1.qcow2"),
                                                        **existing})]),
        ("write lock (drive1 -> job0's target)", [Qmp("drive-backup", {
            "job-id": "job1", "device": "drive1", "sync": "full", "target": Img("job0.qcow2"),
            **existing})]),
        ("busy bitmap incremental node0", [Qmp("drive-backup", {
            "job-id": "job1", "device": "node0", "sync": "incremental", "bitmap": "bitmap0",
            "target": Img("t1.qcow2"), **existing})]),
        ("bitmap-remove busy", [Qmp("block-dirty-bitmap-remove", {"node": "node0", "name": "bitmap0"})]),
        ("transaction clear busy", [Qmp("transaction", {"actions": [
            {"type": "block-dirty-bitmap-clear", "data": {"node": "node0", "name": "bitmap0"}}]})]),
        ("job2 full node0 (new)", [Qmp("drive-backup", {"job-id": "job2", "device": "node0",
                                                       "sync": "full", "target": Img("t1.qcow2"),
                                                       "speed": 1, **existing})]),
        ("job-cancel job0", [Qmp("job-cancel", {"id": "job0"})]),
        ("quit", [Qmp("quit")]),
    ])


@probe
def sync_none() -> tuple[Steps, Steps]:
    return ([], [
        ("t1", [CreateImage(Img("t1.qcow2"))]),
        ("j1 sync=none drive0", [Qmp("drive-backup", {"job-id": "j1", "device": "drive0", "sync": "none",
                                                     "format": "qcow2", "mode": "existing",
                                                     "target": Img("t1.qcow2")})]),
        ("query-named-block-nodes", [Qmp("query-named-block-nodes", {"flat": True})]),
        ("qemu-io drive0 write", [HmpIo("drive0", "write 0 64k")]),
        ("query-jobs", [Qmp("query-jobs")]),
        ("quit", [Qmp("quit")]),
    ])


@probe
def graph_changes() -> tuple[Steps, Steps]:
    """One graph change per step next to a held job on another drive: QEMU 10.0 drains every
    node for each graph write-lock section (bdrv_graph_wrlock), 7.2 does not."""
    return ([("j1 on drive0", backup("j1"))], [
        ("images", [CreateImage(Img("a.qcow2")), CreateImage(Img("b.qcow2")), CreateImage(Img("t.qcow2"))]),
        ("add file f1", [Qmp("blockdev-add", {"node-name": "f1", "driver": "file",
                                               "filename": Img("a.qcow2")})]),
        ("add qcow2 q1 over f1", [Qmp("blockdev-add", {"node-name": "q1", "driver": "qcow2",
                                                        "file": "f1"})]),
        ("del q1", [Qmp("blockdev-del", {"node-name": "q1"})]),
        ("del f1", [Qmp("blockdev-del", {"node-name": "f1"})]),
        ("add qcow2 q2 inline file", [Qmp("blockdev-add", {"node-name": "q2", "driver": "qcow2",
                                                            "file": {"driver": "file",
                                                                     "filename": Img("b.qcow2")}})]),
        ("del q2", [Qmp("blockdev-del", {"node-name": "q2"})]),
        ("add null n1", [Qmp("blockdev-add", {"node-name": "n1", "driver": "null-co"})]),
        ("add raw r1 over n1", [Qmp("blockdev-add", {"node-name": "r1", "driver": "raw", "file": "n1"})]),
        ("del r1", [Qmp("blockdev-del", {"node-name": "r1"})]),
        ("del n1", [Qmp("blockdev-del", {"node-name": "n1"})]),
        ("add tgt", [Qmp("blockdev-add", {"node-name": "tgt", "driver": "qcow2",
                                          "file": {"driver": "file", "filename": Img("t.qcow2")}})]),
        ("blockdev-backup drive1 -> tgt (j2)", blockdev_backup("j2", "drive1", "tgt")),
        ("job-cancel j2", [Qmp("job-cancel", {"id": "j2"})]),
        ("drive-backup drive1 existing (j3)", backup("j3", "drive1")),
        ("job-cancel j3", [Qmp("job-cancel", {"id": "j3"})]),
        ("qemu-io drive1 read", [HmpIo("drive1", "read 0 512")]),
        ("qemu-io tgt read", [HmpIo("tgt", "read 0 512")]),
        ("blockdev-del tgt", [Qmp("blockdev-del", {"node-name": "tgt"})]),
        ("drive-backup drive1 bad bitmap", [Qmp("drive-backup", {
            "job-id": "j4", "device": "drive1", "sync": "incremental", "format": "qcow2",
            "mode": "existing", "target": Img("a.qcow2"), "bitmap": "nosuch"})]),
        ("drive-backup drive1 bad job id", [Qmp("drive-backup", {
            "job-id": "1bad", "device": "drive1", "sync": "full", "format": "qcow2",
            "mode": "existing", "target": Img("a.qcow2")})]),
        ("transaction []", [Qmp("transaction", {"actions": []})]),
    ])


@probe
def graph_calibration() -> tuple[Steps, Steps]:
    """More graph changes next to a held job on another drive, for QEMU 10.0's counts."""
    blk = {"driver": "blkdebug", "image": {"driver": "file", "filename": Img("a.qcow2")}}
    return ([("j1 on drive0", backup("j1"))], [
        ("images", [CreateImage(Img("a.qcow2")), CreateImage(Img("b.qcow2")), CreateImage(Img("t.qcow2")),
                    CreateImage(Img("u.qcow2"))]),
        ("add qcow2/blkdebug/file q3", [Qmp("blockdev-add", {"node-name": "q3", "driver": "qcow2",
                                                             "file": blk})]),
        ("del q3", [Qmp("blockdev-del", {"node-name": "q3"})]),
        ("add raw over inline file", [Qmp("blockdev-add", {"node-name": "r2", "driver": "raw",
                                                           "file": {"driver": "file",
                                                                    "filename": Img("b.qcow2")}})]),
        ("del r2", [Qmp("blockdev-del", {"node-name": "r2"})]),
        ("add qcow2 qb with backing=drive1", [Qmp("blockdev-add", {
            "node-name": "qb", "driver": "qcow2", "backing": "drive1",
            "file": {"driver": "file", "filename": Img("b.qcow2")}})]),
        ("del qb", [Qmp("blockdev-del", {"node-name": "qb"})]),
        ("drive-backup drive1 absolute-paths (j2)", [Qmp("drive-backup", {
            "job-id": "j2", "device": "drive1", "sync": "full", "format": "qcow2",
            "target": Img("new.qcow2"), "speed": 1})]),
        ("job-cancel j2", [Qmp("job-cancel", {"id": "j2"})]),
        ("drive-backup drive1 sync=none (j3)", [Qmp("drive-backup", {
            "job-id": "j3", "device": "drive1", "sync": "none", "format": "qcow2",
            "mode": "existing", "target": Img("t.qcow2")})]),
        ("job-cancel j3", [Qmp("job-cancel", {"id": "j3"})]),
        ("drive-backup drive1 existing, completes (j4)", [Qmp("drive-backup", {
            "job-id": "j4", "device": "drive1", "sync": "full", "format": "qcow2",
            "mode": "existing", "target": Img("u.qcow2")})]),
        ("transaction of 2 bitmap-adds", [Qmp("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "drive1", "name": "x1"}},
            {"type": "block-dirty-bitmap-add", "data": {"node": "drive1", "name": "x2"}}]})]),
        ("block_resize drive1", [Qmp("block_resize", {"node-name": "drive1", "size": 8388608})]),
        ("blockdev-snapshot-sync drive1 existing", [Qmp("blockdev-snapshot-sync", {
            "node-name": "drive1", "snapshot-file": Img("b.qcow2"), "format": "qcow2",
            "mode": "existing", "snapshot-node-name": "s1"})]),
        ("qemu-io drive0 read (device)", [HmpIo("drive0", "read 0 512")]),
    ])


@probe
def image_creation() -> tuple[Steps, Steps]:
    """Targets and overlays QEMU creates itself (mode absolute-paths), next to a held job."""
    return ([("j1 on drive0", backup("j1"))], [
        ("drive-backup drive1 sync=none absolute-paths (j2)", [Qmp("drive-backup", {
            "job-id": "j2", "device": "drive1", "sync": "none", "format": "qcow2",
            "target": Img("none.qcow2")})]),
        ("job-cancel j2", [Qmp("job-cancel", {"id": "j2"})]),
        ("drive-backup drive1 raw absolute-paths (j3)", [Qmp("drive-backup", {
            "job-id": "j3", "device": "drive1", "sync": "full", "format": "raw",
            "target": Img("full.raw"), "speed": 1})]),
        ("job-cancel j3", [Qmp("job-cancel", {"id": "j3"})]),
        ("drive-backup drive1 qcow2 absolute-paths (j4)", [Qmp("drive-backup", {
            "job-id": "j4", "device": "drive1", "sync": "full", "format": "qcow2",
            "target": Img("full.qcow2"), "speed": 1})]),
        ("job-cancel j4", [Qmp("job-cancel", {"id": "j4"})]),
        ("blockdev-snapshot-sync drive1 absolute-paths", [Qmp("blockdev-snapshot-sync", {
            "node-name": "drive1", "snapshot-file": Img("snap.qcow2"), "format": "qcow2",
            "snapshot-node-name": "s1"})]),
    ])


@probe
def stacked_filters() -> tuple[Steps, Steps]:
    """Two backups of one node: the second filter goes below the first; dropping it drains it."""
    return ([("j4 on drive1", backup("j4", "drive1"))], [
        ("t5", [CreateImage(Img("j5.qcow2"))]),
        ("drive-backup drive1 sync=none (j5)", [Qmp("drive-backup", {
            "job-id": "j5", "device": "drive1", "sync": "none", "format": "qcow2",
            "mode": "existing", "target": Img("j5.qcow2")})]),
        ("job-cancel j5", [Qmp("job-cancel", {"id": "j5"})]),
        ("job-cancel j4", [Qmp("job-cancel", {"id": "j4"})]),
    ])


@probe
def target_open_failures() -> tuple[Steps, Steps]:
    """drive-backup targets that fail to open, next to a held job on another drive."""
    return ([("j1 on drive0", backup("j1"))], [
        ("missing file", [Qmp("drive-backup", {"job-id": "j2", "device": "drive1", "sync": "full",
                                               "format": "qcow2", "mode": "existing",
                                               "target": Img("missing.qcow2")})]),
        ("locked by j1", [Qmp("drive-backup", {"job-id": "j2", "device": "drive1", "sync": "full",
                                               "format": "qcow2", "mode": "existing",
                                               "target": Img("j1.qcow2")})]),
        ("locked by j1, raw", [Qmp("drive-backup", {"job-id": "j2", "device": "drive1", "sync": "full",
                                                    "format": "raw", "mode": "existing",
                                                    "target": Img("j1.qcow2")})]),
        ("source as target", [Qmp("drive-backup", {"job-id": "j2", "device": "drive1", "sync": "full",
                                                   "format": "qcow2", "mode": "existing",
                                                   "target": Img("drive1.qcow2")})]),
    ])


async def run_probe(target: Target, name: str, settle: float) -> list[tuple[str, list[str]]]:
    """Run one probe on one target: [(step label, ["job status", ...]), ...]."""
    held, steps = PROBES[name]()
    with tempfile.TemporaryDirectory(prefix="drain-probe-") as tmp:
        work, sock = Path(tmp, "work"), Path(tmp, "sock")
        work.mkdir()
        sock.mkdir()
        vm = VM(target, name, work, sock)
        try:
            await launch_scenario(vm)
            result: list[tuple[str, list[str]]] = []
            for index, (label, primitives) in enumerate([*held, *steps]):
                mark = len(vm.log.events())
                if primitives == [Qmp("quit")]:
                    await vm.shutdown()  # quit, then read on until the target has exited
                    replies: list[Any] = []
                else:
                    replies = [await run_primitive(vm, primitive) for primitive in primitives]
                if index < len(held):
                    await wait_first_chunk(vm, label.split()[0])
                await asyncio.sleep(settle)
                per_job: dict[str, list[str]] = {}
                for event in vm.log.events()[mark:]:
                    if event.get("event") == "JOB_STATUS_CHANGE":
                        data = event["data"]
                        per_job.setdefault(str(data["id"]), []).append(str(data["status"]))
                # per job, as the goldens compare them (rule O3): jobs interleave freely
                events = [f"{job}: {' '.join(statuses)};" for job, statuses in sorted(per_job.items())]
                errors = [r["error"]["desc"][:50] for r in replies
                          if isinstance(r, dict) and "error" in r]
                result.append((label + (f"  [error: {errors[0]}]" if errors else ""), events))
                if args_verbose():
                    print(f"    {target.name} {label}: {replies}", file=sys.stderr)
            await vm.shutdown()
            return result
        finally:
            vm.kill()


def args_verbose() -> bool:
    return "--verbose" in sys.argv


def _per_job(events: list[str]) -> dict[str, str]:
    """["j1: paused running;", ...] -> {"j1": "paused running"}."""
    return {item.split(":")[0]: item.split(":", 1)[1].strip(" ;") for item in events}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probes", nargs="*", help=f"default: all of {', '.join(PROBES)}")
    parser.add_argument("--qemu", action="append", default=[], help="a real qemu-system-x86_64")
    parser.add_argument("--emulator", action="append", default=[], metavar="VERSION",
                        help="an emulator profile (default: each --qemu's version)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each real QEMU")
    parser.add_argument("--verbose", action="store_true", help="print every reply (stderr)")
    parser.add_argument("--settle", type=float, default=0.15, help="seconds to wait after each step")
    args = parser.parse_args()
    qemus = [QemuTarget(QemuBinaries.find(system)) for system in args.qemu]
    versions = args.emulator or [q.version for q in qemus]
    emulators = [EmulatorTarget(v) for v in versions]
    differing = 0
    job_checks = [0, 0]  # (equal, all): per step and job, the emulator's statuses against QEMU's
    for name in args.probes or list(PROBES):
        print(f"== {name}")
        runs: dict[str, list[list[tuple[str, list[str]]]]] = {}
        for target in qemus:
            runs[target.name] = [asyncio.run(run_probe(target, name, args.settle))
                                 for _ in range(args.runs)]
        for target in emulators:
            runs[target.name] = [asyncio.run(run_probe(target, name, args.settle))]
        labels = [label for label, _ in next(iter(runs.values()))[0]]
        for index, label in enumerate(labels):
            print(f"  {label}")
            seen: dict[str, str] = {}
            for target_name, target_runs in runs.items():
                texts = sorted({" ".join(run[index][1]) or "-" for run in target_runs})
                seen[target_name] = " | ".join(texts)
                marker = "  VARIES" if len(texts) > 1 else ""
                print(f"      {target_name:14} {seen[target_name]}{marker}")
            for target in emulators:
                reference = [q for q in qemus if q.version == target.version]
                if not reference:
                    continue
                ref_jobs = _per_job(runs[reference[0].name][0][index][1])
                emu_jobs = _per_job(runs[target.name][0][index][1])
                for job in set(ref_jobs) | set(emu_jobs):
                    job_checks[1] += 1
                    job_checks[0] += ref_jobs.get(job) == emu_jobs.get(job)
            by_version: dict[str, set[str]] = {}
            for target_name, text in seen.items():
                by_version.setdefault(target_name.split("@")[1], set()).add(text)
            if any(len(texts) > 1 for texts in by_version.values()):
                differing += 1
                print("      ^^^ DIFFERS")
    print(f"{differing} step(s) differ; per-job status sequences of the emulator equal to QEMU's: "
          f"{job_checks[0]} of {job_checks[1]}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
