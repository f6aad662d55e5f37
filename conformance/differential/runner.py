"""Runs one differential scenario on two targets in lockstep and compares them after each step.

The *reference* (real QEMU) and the *candidate* (the emulator, or a second QEMU when checking
QEMU's own determinism) each get a conformance VM on the same set-up.  A step runs on both at
once; then, in this order:

1. the step's conversation (commands, replies, stdout text, tool runs) is normalized with
   conformance.compare.normalize and compared;
2. the model is updated from the reference's replies;
3. both targets *settle*: new jobs finish their first copy task, and every job reaches a state
   it cannot leave without a command (Model.at_rest); the job states are compared;
4. the normalized events of every job that has ended on both targets are compared.

At the end (`finish`) every job is cancelled or dismissed, the bitmaps are queried, both
targets quit, all job and other events are compared, and every image is compared with real
``qemu-img compare`` (and checked with ``qemu-img check``).  The first difference raises
Divergence; a reference that misbehaves (a hang, a crash, a wait the model got wrong) raises
ReferenceFailure instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.compare.normalize import drains_vary, normalize, normalize_job_events
from conformance.differential.model import ENDED, Model
from conformance.differential.steps import (
    WAIT_TIMEOUT,
    HmpIo,
    Img,
    Qmp,
    Step,
    StepWaits,
    job_events,
    job_statuses,
    launch_scenario,
    run_step,
    wait_first_chunk,
    wait_for_status_change,
)
from conformance.imagetools import QemuImageTools
from conformance.qmplog import QmpLog
from conformance.targets import QemuBinaries, Target
from conformance.vm import VM, VMError

IO_ERROR = "Input/output error"
NODE_DRIVE1 = "drive1"
CASE_NAME = "differential"
#: Bound of one QMP exchange on either target.
QMP_TIMEOUT = 15.0


class Divergence(AssertionError):
    """The two targets differ.  `kind` names what was compared; `detail` shows both sides."""

    def __init__(self, kind: str, step_index: int, detail: str) -> None:
        super().__init__(f"divergence ({kind}) at step {step_index}:\n{detail}")
        self.kind = kind
        self.step_index = step_index
        self.detail = detail
        #: Filled in by DifferentialRun: the steps so far and the waits the reference needed.
        self.run: DifferentialRun | None = None


class ReferenceFailure(AssertionError):
    """The reference target itself failed (died, hung, or never settled)."""


@dataclass
class Side:
    """One target of the pair, with its VM and what its probes found."""

    label: str
    target: Target
    vm: VM
    sockdir: Path
    held: dict[str, bool] = field(default_factory=dict)
    #: Seconds this side's own part of the scenario took: from the start to the end of each of
    #: its coroutines in the lockstep (set-up, steps, settling, quit).  The two sides overlap, so
    #: each side's rate can be told apart from the pair's (the images' comparison is neither's).
    seconds: float = 0.0

    async def timed(self, coroutine: Any) -> Any:
        """Await `coroutine`, adding its duration to `seconds`."""
        start = time.perf_counter()
        try:
            return await coroutine
        finally:
            self.seconds += time.perf_counter() - start

    @classmethod
    def create(cls, label: str, target: Target, workdir: Path) -> Side:
        workdir.mkdir(parents=True, exist_ok=True)
        sockdir = Path(tempfile.mkdtemp(prefix="btx"))
        vm = VM(target, CASE_NAME, workdir, sockdir, timeout=QMP_TIMEOUT)
        return cls(label, target, vm, sockdir)

    def statuses(self) -> dict[str, str]:
        return job_statuses(self.vm)

    def error_stopped(self) -> set[str]:
        """Jobs whose last BLOCK_JOB_ERROR (action stop) came after their last ``running``."""
        stopped: set[str] = set()
        for job_id, events in job_events(self.vm).items():
            for event in events:
                data = event.get("data") or {}
                if event["event"] == "BLOCK_JOB_ERROR" and data.get("action") == "stop":
                    stopped.add(job_id)
                elif event["event"] == "JOB_STATUS_CHANGE" and data.get("status") == "running":
                    stopped.discard(job_id)
        return stopped

    async def settle(self, model: Model, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait until every job of the model rests on this target (VMError on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            statuses, stopped = self.statuses(), self.error_stopped()
            restless = [job.id for job in model.jobs.values()
                        if not model.at_rest(job, statuses, self.held, stopped)]
            if not restless:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise VMError(f"{self.label}: jobs never settled: "
                              f"{ {job: statuses.get(job) for job in restless} }")
            await wait_for_status_change(self.vm, min(remaining, 0.25))

    def normalized_slice(self, start: int, stop: int | None = None) -> list[str]:
        """The normalized conversation of log entries [start, stop)."""
        entries = [entry for entry in self.vm.log.entries[start:stop] if entry.kind != "event"]
        return normalize(QmpLog(CASE_NAME, entries), self.vm.paths).conversation

    def kill(self) -> None:
        self.vm.kill()
        shutil.rmtree(self.sockdir, ignore_errors=True)


def _backup_targets(primitive: Qmp) -> list[str]:
    """Target file names of a drive-backup command or of a transaction's backup actions."""
    arguments = primitive.arguments or {}
    if primitive.command == "drive-backup":
        backups = [arguments]
    elif primitive.command == "transaction":
        backups = [action.get("data") or {} for action in arguments.get("actions", [])
                   if action.get("type") == "drive-backup"]
    else:
        return []
    return [target.name for target in (backup.get("target") for backup in backups)
            if isinstance(target, Img)]


def _diff(reference: Sequence[str], candidate: Sequence[str], labels: tuple[str, str]) -> str:
    return "\n".join(difflib.unified_diff(list(reference), list(candidate), *labels, lineterm=""))


class DifferentialRun:
    """One scenario on a (reference, candidate) pair."""

    def __init__(self, reference: Target, candidate: Target, workdir: Path,
                 binaries: QemuBinaries, avoid: frozenset[str] = frozenset()) -> None:
        self.workdir = workdir
        self.reference = Side.create(f"{reference.name} (reference)", reference, workdir / "ref")
        self.candidate = Side.create(f"{candidate.name} (candidate)", candidate, workdir / "cand")
        self.images = QemuImageTools(str(binaries.img), str(binaries.io), cwd=workdir)
        self.model = Model(avoid=avoid)
        self.steps: list[Step] = []
        self.waits: list[StepWaits | None] = []
        #: Images whose contents differ, with the reference's copy (for the generated case).
        self.differing_images: list[str] = []
        #: Images that exist on one target only.
        self.existence_differs: list[str] = []
        self.shut_down = False
        self._compared_jobs: set[str] = set()
        #: With keep_going, comparisons record divergences here instead of raising (used to
        #: render a curated case that goes on past the first difference).
        self.keep_going = False
        self.collected: list[Divergence] = []

    def _diverge(self, divergence: Divergence) -> None:
        if not self.keep_going:
            raise divergence
        self.collected.append(divergence)

    @property
    def sides(self) -> tuple[Side, Side]:
        return (self.reference, self.candidate)

    # ---- running ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._both("set-up", launch_scenario(self.reference.vm), launch_scenario(self.candidate.vm))
        self._compare_conversation(-1, 0, 0)

    async def _both(self, what: str, reference: Any, candidate: Any) -> tuple[Any, Any]:
        """Await both coroutines; a reference failure wins over a candidate failure."""
        results: list[Any] = list(await asyncio.gather(self.reference.timed(reference),
                                                       self.candidate.timed(candidate),
                                                       return_exceptions=True))
        ref_result, cand_result = results
        if isinstance(ref_result, BaseException):
            if not isinstance(ref_result, Exception) or isinstance(ref_result, Divergence):
                raise ref_result
            stderr = self.reference.vm.instance.stderr_text() if self.reference.vm.instance else ""
            raise ReferenceFailure(f"{self.reference.label} failed during {what}: {ref_result!r}"
                                   + (f"; its stderr: {stderr.strip()[-500:]}" if stderr.strip() else "")
                                   ) from ref_result
        if isinstance(cand_result, BaseException):
            if not isinstance(cand_result, Exception) or isinstance(cand_result, Divergence):
                raise cand_result
            raise Divergence("failure", len(self.steps) - 1,
                             f"{self.candidate.label} failed during {what} where "
                             f"{self.reference.label} did not: {cand_result!r}")
        return ref_result, cand_result

    async def apply(self, step: Step) -> None:
        """Run one step on both targets, settle them, and compare (raises Divergence)."""
        index = len(self.steps)
        self.steps.append(step)
        self.waits.append(None)
        marks = (len(self.reference.vm.log.entries), len(self.candidate.vm.log.entries))
        before = dict(self.reference.statuses())
        ref_results, _ = await self._both(step.label, run_step(self.reference.vm, step),
                                          run_step(self.candidate.vm, step))
        self._compare_conversation(index, *marks)
        started = self._update_model(step, ref_results)
        # Only a speed-limited job can be held after its first copy task (an unlimited one just
        # runs to its end, which the settle waits for); a sync=none job copies nothing by
        # itself and runs until cancelled.
        jobs = [self.model.jobs[job] for job in started]
        copying = [job.id for job in jobs if job.sync != "none" and job.speed > 0]
        idle = {job.id: job.sync == "none" for job in jobs if job.id not in copying}
        ref_held, cand_held = await self._both(
            "the first copy task", wait_first_chunk(self.reference.vm, *copying),
            wait_first_chunk(self.candidate.vm, *copying))
        ref_held, cand_held = {**idle, **ref_held}, {**idle, **cand_held}
        self.reference.held.update(ref_held)
        self.candidate.held.update(cand_held)
        if ref_held != cand_held:
            self._diverge(Divergence("job-state", index, "after the first copy task, held (speed-limited "
                             f"with work left): {self.reference.label} {ref_held}, "
                             f"{self.candidate.label} {cand_held}"))
        await self._both("settling", self.reference.settle(self.model),
                         self.candidate.settle(self.model))
        self._compare_jobs(index)
        self._learn_from_reference()
        after = self.reference.statuses()
        self.waits[index] = StepWaits(
            started=copying,
            statuses={job: status for job, status in after.items()
                      if status != before.get(job) and job in self.model.jobs},
        )

    # ---- model ----------------------------------------------------------------------------------
    def _update_model(self, step: Step, results: Sequence[Any]) -> list[str]:
        """Apply the effects the reference accepted; return the ids of the jobs started."""
        started: list[str] = []
        model = self.model
        for primitive, result in zip(step.primitives, results, strict=True):
            if isinstance(primitive, HmpIo):
                if NODE_DRIVE1 == primitive.device and isinstance(result, str):
                    if IO_ERROR in result:
                        model.blkdebug_armed = False
                    elif primitive.command == "flush":
                        model.blkdebug_armed = True
                continue
            if not isinstance(primitive, Qmp):
                continue
            for target in _backup_targets(primitive):
                model.note_target(target)
            if not isinstance(result, dict) or "return" not in result:
                continue
            arguments = dict(primitive.arguments or {})
            command = primitive.command
            if command.startswith("block-dirty-bitmap-"):
                model.apply_bitmap_action(command, arguments)
            elif command == "drive-backup":
                started.append(model.add_job(arguments, model.new_txn()).id)
            elif command == "transaction":
                grouped = (arguments.get("properties") or {}).get("completion-mode") == "grouped"
                started += model.apply_transaction(arguments["actions"], grouped)
            elif command.startswith(("job-", "block-job-")):
                model.apply_job_verb(command, arguments)
                job = model.jobs.get(str(arguments.get("device")))
                if (command == "block-job-set-speed" and arguments.get("speed") == 0
                        and job is not None and job.sync != "none"):
                    for side in self.sides:
                        side.held[str(arguments.get("device"))] = False
        return started

    def _learn_from_reference(self) -> None:
        """After a settle: the reference's statuses, held jobs, stops and blkdebug state."""
        model = self.model
        model.statuses = self.reference.statuses()
        model.held = dict(self.reference.held)
        model.error_stopped = self.reference.error_stopped()
        for job_id, events in job_events(self.reference.vm).items():
            job = model.jobs.get(job_id)
            if job is None or job.node != NODE_DRIVE1:
                continue
            if any(event["event"] == "BLOCK_JOB_ERROR" or (event.get("data") or {}).get("error")
                   for event in events):
                model.blkdebug_armed = False

    # ---- comparisons ------------------------------------------------------------------------------
    def _compare_conversation(self, index: int, ref_mark: int, cand_mark: int) -> None:
        reference = self.reference.normalized_slice(ref_mark)
        candidate = self.candidate.normalized_slice(cand_mark)
        if reference != candidate:
            self._diverge(Divergence("reply", index, _diff(reference, candidate,
                                                   (self.reference.label, self.candidate.label))))

    def _job_lines(self, side: Side, job_id: str) -> list[str]:
        # J3 too: a randomly timed cancel stops the copy wherever it got
        return normalize_job_events(job_events(side.vm).get(job_id, []), side.vm.paths,
                                    mask_failed_offsets=True,
                                    drop_drain_pairs=drains_vary(side.vm.target.version))

    def _compare_jobs(self, index: int) -> None:
        ref_status, cand_status = self.reference.statuses(), self.candidate.statuses()
        states = {job: (ref_status.get(job), cand_status.get(job)) for job in self.model.jobs}
        differing = {job: pair for job, pair in states.items() if pair[0] != pair[1]}
        ref_stopped, cand_stopped = self.reference.error_stopped(), self.candidate.error_stopped()
        if differing or ref_stopped != cand_stopped:
            lines = [f"job {job}: {self.reference.label} {pair[0]!r}, {self.candidate.label} "
                     f"{pair[1]!r}" for job, pair in sorted(differing.items())]
            if ref_stopped != cand_stopped:
                lines.append(f"stopped on error: {sorted(ref_stopped)} vs {sorted(cand_stopped)}")
            lines += self._event_diffs(sorted(differing))
            self._diverge(Divergence("job-state", index, "\n".join(lines)))
        ended = [job for job, (status, _) in states.items()
                 if status == ENDED and job not in self._compared_jobs]
        diffs = self._event_diffs(ended)
        if diffs:
            self._diverge(Divergence("job-events", index, "\n".join(diffs)))
        self._compared_jobs.update(ended)

    def _event_diffs(self, jobs: Sequence[str]) -> list[str]:
        diffs = []
        for job in jobs:
            reference, candidate = self._job_lines(self.reference, job), self._job_lines(self.candidate, job)
            if reference != candidate:
                diffs.append(_diff(reference, candidate, (f"{self.reference.label} job {job}",
                                                          f"{self.candidate.label} job {job}")))
        return diffs

    # ---- the end ----------------------------------------------------------------------------------
    async def finish(self) -> None:
        """Cancel or dismiss every job, query the bitmaps, quit, compare events and images."""
        for _ in range(4 * len(self.model.jobs) + 1):
            live = self.model.live_jobs()
            if not live:
                break
            job = live[0]
            verb = "job-dismiss" if self.model.status(job.id) == "concluded" else "job-cancel"
            await self.apply(Step(f"teardown: {verb} {job.id}", (Qmp(verb, {"id": job.id}),)))
        else:
            raise ReferenceFailure(f"jobs left after the teardown: {self.model.live_jobs()}")
        await self.apply(Step("teardown: every bitmap", (
            Qmp("query-block"), Qmp("query-named-block-nodes", {"flat": True}))))
        index = len(self.steps)
        marks = (len(self.reference.vm.log.entries), len(self.candidate.vm.log.entries))
        self.shut_down = True
        await self._both("quit", self.reference.vm.shutdown(), self.candidate.vm.shutdown())
        self._compare_conversation(index, *marks)
        diffs = self._event_diffs(sorted(set(self.model.jobs) - self._compared_jobs))
        if diffs:
            self._diverge(Divergence("job-events", index, "\n".join(diffs)))
        others = [normalize(side.vm.log, side.vm.paths).other_events for side in self.sides]
        if others[0] != others[1]:
            self._diverge(Divergence("events", index, _diff(others[0], others[1],
                                                    (self.reference.label, self.candidate.label))))
        self._compare_images(index)

    def comparable_images(self) -> list[str]:
        """The drives, and the targets of backups that completed successfully on the reference
        (a failed or cancelled job's target holds whatever its parallel copy tasks got to)."""
        names = ["drive0.qcow2", "drive1.qcow2"]
        events = job_events(self.reference.vm)
        for job in self.model.jobs.values():
            completed = [event for event in events.get(job.id, [])
                         if event["event"] == "BLOCK_JOB_COMPLETED"]
            if completed and "error" not in (completed[-1].get("data") or {}):
                names.append(job.target)
        return list(dict.fromkeys(names))

    def _compare_images(self, index: int) -> None:
        problems = []
        for name in ["drive0.qcow2", "drive1.qcow2", *self.model.targets]:
            exists = [(side.vm.path(name)).exists() for side in self.sides]
            if exists[0] != exists[1]:
                self.existence_differs.append(name)
                problems.append(f"{name}: exists on {self.reference.label}: {exists[0]}, "
                                f"on {self.candidate.label}: {exists[1]}")
        for name in self.comparable_images():
            first, second = (side.vm.path(name) for side in self.sides)
            if not (first.exists() and second.exists()):
                continue
            result = self.images.compare(first, second, "qcow2")
            if result.returncode != 0:
                self.differing_images.append(name)
                problems.append(f"{name}: qemu-img compare {self.reference.label} "
                                f"{self.candidate.label}: exit {result.returncode}: "
                                f"{result.output.strip()}")
        for name in ["drive0.qcow2", "drive1.qcow2", *self.model.targets]:
            path = self.candidate.vm.path(name)
            if path.exists():
                check = self.images.check(path, "qcow2")
                if check.returncode != 0:
                    problems.append(f"{name}: qemu-img check of the {self.candidate.label} copy: "
                                    f"exit {check.returncode}: {check.output.strip()}")
        if problems:
            self._diverge(Divergence("image", index, "\n".join(problems)))

    async def aclose(self) -> None:
        """Disconnect both QMP clients (on the loop they run on), then stop both targets."""
        for side in self.sides:
            client = getattr(side.vm, "_client", None)
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), 5)
        self.close()

    def close(self) -> None:
        for side in self.sides:
            side.kill()

    # ---- reporting ----------------------------------------------------------------------------------
    def raw_logs(self) -> str:
        return "\n".join(f"==== {side.label} ====\n{side.vm.log.raw_text()}" for side in self.sides)


