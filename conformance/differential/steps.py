"""The vocabulary of differential scenarios: the fixed set-up, the steps, and the waits.

A step is plain data (QMP commands, HMP qemu-io commands, image creations) that can be both
*run* on a conformance ``vm`` and *rendered* as the Python source of a conformance case.  The
differential fuzzer (conformance.differential.fuzz) runs steps on two targets at once; when they
diverge, the same steps are rendered into an ``async def test_...(vm)`` that imports the helpers
of this module, so the committed case does exactly what the fuzzer did.

Every scenario starts the same way (`launch_scenario`): two 4 MiB qcow2 drives with a few
offline patterns, drive0 as ``-drive id=drive0,node-name=node0`` and drive1 added with
blockdev-add over blkdebug with iotest 124's rules (an HMP ``flush`` of drive1 arms a one-time
EIO on the next data read of drive1).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conformance.recipes import ImageRecipe
from conformance.vm import VM, VMError

IMAGE_FORMAT = "qcow2"
IMAGE_SIZE = "4M"
IMAGE_BYTES = 4 * 1024 * 1024

#: The two drives' images: qcow2, 4 MiB, a few offline patterns (the first cluster allocated).
DRIVE0_RECIPE = ImageRecipe("differential-drive0", IMAGE_FORMAT, IMAGE_SIZE,
                            (("0x41", "0", "512"), ("0xd5", "1M", "32k"), ("0xdc", "3M", "124k")))
DRIVE1_RECIPE = ImageRecipe("differential-drive1", IMAGE_FORMAT, IMAGE_SIZE,
                            (("0x14", "0", "512"), ("0x5d", "1M", "32k"), ("0xcd", "3M", "124k")))

#: Bound of the waits of this module (a step's jobs settle in milliseconds on both targets).
WAIT_TIMEOUT = 15.0
_POLL = 0.002


def blkdebug_drive1(image: str) -> dict[str, Any]:
    """blockdev-add arguments of drive1: qcow2 over blkdebug, iotest 124's rules (flush moves
    blkdebug from state 1 to 2; the first data read in state 2 fails once with EIO)."""
    return {
        "node-name": "drive1",
        "driver": IMAGE_FORMAT,
        "file": {
            "driver": "blkdebug",
            "image": {"driver": "file", "filename": image},
            "set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}],
            "inject-error": [{"event": "read_aio", "errno": 5, "state": 2,
                              "immediately": False, "once": True}],
        },
    }


def _build_images(vm: VM) -> None:
    DRIVE0_RECIPE.build(vm.tools, vm.path("drive0.qcow2"))
    DRIVE1_RECIPE.build(vm.tools, vm.path("drive1.qcow2"))


async def launch_scenario(vm: VM) -> None:
    """Build both drives' images, start the target with drive0, add drive1 over blkdebug.  The
    images are built in a worker thread: the tools run synchronously, and the other target of a
    differential pair (sharing this event loop) goes on meanwhile instead of waiting for them."""
    await asyncio.to_thread(_build_images, vm)
    vm.add_drive(vm.path("drive0.qcow2"), fmt=IMAGE_FORMAT, drive_id="drive0", node_name="node0")
    await vm.launch()
    reply = await vm.qmp("blockdev-add", blkdebug_drive1(str(vm.path("drive1.qcow2"))))
    if reply != {"return": {}}:
        raise VMError(f"blockdev-add of drive1 failed: {reply}")


# ---- step data ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Img:
    """A file in the scenario's private directory; becomes ``str(vm.path(name))``."""

    name: str


@dataclass(frozen=True)
class Qmp:
    """One QMP command, run with ``vm.qmp`` (an error reply is a result, not an exception)."""

    command: str
    arguments: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class HmpIo:
    """HMP ``qemu-io DEVICE "COMMAND"`` (its text goes to the target's stdout, which is logged)."""

    device: str
    command: str


@dataclass(frozen=True)
class CreateImage:
    """``qemu-img create -f qcow2 IMG SIZE`` with the target's own tools (a mode=existing target)."""

    image: Img
    size: str = IMAGE_SIZE


Primitive = Qmp | HmpIo | CreateImage


@dataclass(frozen=True)
class Step:
    """One generated step: primitives run in order; `label` says what it exercises."""

    label: str
    primitives: tuple[Primitive, ...]
    #: The generator rule that drew it (conformance.differential.plan.RULES); "" for teardown.
    rule: str = ""


@dataclass
class StepWaits:
    """What the reference target did during a step that a replay must wait for: the jobs it
    started (wait until their first copy task is done) and the resting status each job whose
    status changed reached."""

    started: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)


# ---- running --------------------------------------------------------------------------------

def resolve(vm: VM, value: Any) -> Any:
    """Replace every Img in a JSON-like value by the absolute path in the vm's directory."""
    if isinstance(value, Img):
        return str(vm.path(value.name))
    if isinstance(value, Mapping):
        return {key: resolve(vm, item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve(vm, item) for item in value]
    return value


async def run_primitive(vm: VM, primitive: Primitive) -> Any:
    """Run one primitive; returns the QMP reply, the HMP text, or the tool's exit status."""
    if isinstance(primitive, Qmp):
        arguments = resolve(vm, primitive.arguments) if primitive.arguments is not None else None
        return await vm.qmp(primitive.command, arguments)
    if isinstance(primitive, HmpIo):
        return await vm.hmp_qemu_io(primitive.device, primitive.command)
    # In a worker thread, as launch_scenario's images: the pair's other target goes on meanwhile.
    result = await asyncio.to_thread(vm.tools.create, vm.path(primitive.image.name), IMAGE_FORMAT,
                                     primitive.size)
    return result.check().returncode


async def run_step(vm: VM, step: Step) -> list[Any]:
    """Run a step's primitives in order; their results in the same order."""
    return [await run_primitive(vm, primitive) for primitive in step.primitives]


# ---- observing jobs -------------------------------------------------------------------------

def job_events(vm: VM) -> dict[str, list[dict[str, Any]]]:
    """Every job event received so far, per job id (rule O3's grouping), in arrival order."""
    from conformance.compare.normalize import job_id_of

    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in vm.log.events():
        job = job_id_of(event)
        if job is not None:
            grouped.setdefault(job, []).append(event)
    return grouped


def job_statuses(vm: VM) -> dict[str, str]:
    """The last JOB_STATUS_CHANGE status of every job seen so far."""
    statuses: dict[str, str] = {}
    for event in vm.log.events():
        if event.get("event") == "JOB_STATUS_CHANGE":
            data = event.get("data") or {}
            statuses[str(data.get("id"))] = str(data.get("status"))
    return statuses


async def wait_for_status_change(vm: VM, timeout: float) -> None:
    """Block until a JOB_STATUS_CHANGE arrives (or `timeout` passes).  It consumes pending
    status events one at a time: the helpers here read the recorded log, not the pending list,
    so a stale pending event only makes the caller look at the log once more."""
    try:
        await vm.event_wait("JOB_STATUS_CHANGE", timeout=max(timeout, 0.001))
    except VMError:
        if vm.instance is not None and not vm.instance.alive():
            raise


async def execute_unlogged(vm: VM, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
    """Run a probe command that is not part of the recorded conversation (how often it runs
    depends on timing, so it must not appear in a compared log)."""
    client = getattr(vm, "_client", None)
    if client is None:
        raise VMError("the vm is not launched")
    return await asyncio.wait_for(client.execute(command, dict(arguments) if arguments else None),
                                  vm.timeout)


async def wait_first_chunk(vm: VM, *job_ids: str, timeout: float = WAIT_TIMEOUT) -> dict[str, bool]:
    """Wait until each job has finished its first copy task (progress > 0) or left ``running``;
    returns, per job, whether it is *held*: running with work left (a speed-limited backup then
    sleeps for hours, so it stays exactly there until a command moves it)."""
    deadline = time.monotonic() + timeout
    held: dict[str, bool] = {}
    pending = list(job_ids)
    while pending:
        jobs = {job["id"]: job for job in await execute_unlogged(vm, "query-jobs")}
        for job_id in list(pending):
            job = jobs.get(job_id)
            status = job["status"] if job is not None else "null"
            if status in ("created", "paused") and not _stopped_on_error(vm, job_id):
                continue  # still starting, or in the start's drain: not conclusive yet
            if status != "running":
                held[job_id] = False
            elif job is not None and job["current-progress"] > 0:
                # (total-progress is 0 both for an empty incremental and for a job that has not
                # counted its work yet; an empty one leaves "running" by itself.)
                held[job_id] = job["current-progress"] < job["total-progress"]
            else:
                continue
            pending.remove(job_id)
        if pending:
            if time.monotonic() > deadline:
                raise VMError(f"jobs {pending} made no progress within {timeout}s")
            await asyncio.sleep(_POLL)
    return held


def _stopped_on_error(vm: VM, job_id: str) -> bool:
    """The job reported BLOCK_JOB_ERROR with action stop (it stays paused until resumed)."""
    return any(event.get("event") == "BLOCK_JOB_ERROR"
               and (event.get("data") or {}).get("device") == job_id
               and (event.get("data") or {}).get("action") == "stop"
               for event in vm.log.events())


async def wait_statuses(vm: VM, statuses: Mapping[str, str], timeout: float = WAIT_TIMEOUT) -> None:
    """Wait until each job's last JOB_STATUS_CHANGE status is the given one."""
    deadline = time.monotonic() + timeout
    while True:
        current = job_statuses(vm)
        missing = {job: status for job, status in statuses.items() if current.get(job) != status}
        if not missing:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            seen = {job: current.get(job) for job in missing}
            raise VMError(f"jobs did not reach {missing} within {timeout}s (last seen: {seen})")
        await wait_for_status_change(vm, min(remaining, 0.25))


# ---- rendering ------------------------------------------------------------------------------

def render_value(value: Any) -> str:
    """Python source of a JSON-like value, with Img as ``str(vm.path("NAME"))``."""
    if isinstance(value, Img):
        return f"str(vm.path({value.name!r}))"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key!r}: {render_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(item) for item in value) + "]"
    return repr(value)


def render_primitive(primitive: Primitive) -> str:
    """One line of case source doing what run_primitive does."""
    if isinstance(primitive, Qmp):
        if primitive.arguments is None:
            return f"await vm.qmp({primitive.command!r})"
        return f"await vm.qmp({primitive.command!r}, {render_value(primitive.arguments)})"
    if isinstance(primitive, HmpIo):
        return f"await vm.hmp_qemu_io({primitive.device!r}, {primitive.command!r})"
    return (f"vm.tools.create(vm.path({primitive.image.name!r}), {IMAGE_FORMAT!r}, "
            f"{primitive.size!r}).check()")


def render_step(step: Step, waits: StepWaits | None) -> list[str]:
    """Case source lines of a step and the waits the reference needed after it."""
    lines = [f"# {step.label}"] + [render_primitive(primitive) for primitive in step.primitives]
    if waits is not None and waits.started:
        lines.append("await wait_first_chunk(vm, " + ", ".join(map(repr, waits.started)) + ")")
    if waits is not None and waits.statuses:
        lines.append(f"await wait_statuses(vm, {waits.statuses!r})")
    return lines


def render_steps(steps: Sequence[Step], waits: Sequence[StepWaits | None]) -> list[str]:
    lines: list[str] = []
    for index, step in enumerate(steps):
        lines += render_step(step, waits[index] if index < len(waits) else None)
    return lines
