"""The job-control QMP handlers, called directly on a Machine: lookups and error classes, verb
errors, query-jobs / query-block-jobs output, and the QMP events of the job event sink —
all checked against what a real QEMU 7.2 answered (see docs/qemu-7.2-observations.md, section 4).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import qmp_cmd

from emulator.block.drivers import NullCoNode
from emulator.commands.jobs import install_job_events
from emulator.error import QemuError
from emulator.jobs import BlockJob, Job, JobStatus
from emulator.machine import Machine

BLOCK_JOB_INFO_KEYS = {"auto-dismiss", "auto-finalize", "busy", "device", "io-status", "len",
                       "offset", "paused", "ready", "speed", "status", "type"}
JOB_INFO_KEYS = {"current-progress", "id", "status", "total-progress", "type"}


class CopyJob(BlockJob):
    """A backup-like block job: `chunks` units of work, one per enter() (or per 0 ns sleep)."""

    job_type = "backup"

    def __init__(self, machine: Machine, job_id: str, *, chunks: int = 4, chunk: int = 65536,
                 use_timer: bool = False, fail_read: bool = False, on_error: str = "report",
                 **kwargs: Any) -> None:
        super().__init__(machine.jobs, job_id, NullCoNode(f"src-{job_id}"), **kwargs)
        self.chunks = chunks
        self.chunk = chunk
        self.use_timer = use_timer
        self.fail_read = fail_read
        self.on_error = on_error

    async def run(self) -> int:
        self.progress_set_remaining(self.chunks * self.chunk)
        for _ in range(self.chunks):
            if self.use_timer:
                await self.sleep_ns(0)
            else:
                await self.yield_()
            if self.is_cancelled():
                return 0
            if self.fail_read:
                self.fail_read = False
                if self.error_action(self.on_error, True, errno.EIO) == "report":
                    return -errno.EIO
                await self.pause_point()
            self.progress_update(self.chunk)
        return 0


class Env:
    """A Machine with the QMP job events installed and recorded."""

    def __init__(self) -> None:
        self.machine = Machine()
        install_job_events(self.machine)
        self.events: list[tuple[str, dict[str, Any] | None]] = []
        self.machine.subscribe(lambda name, data, _stamp: self.events.append((name, data)))

    def qmp(self, command: str, /, **arguments: Any) -> Any:
        """Run a command through the QMP dispatcher (argument names in Python spelling)."""
        return qmp_cmd(self.machine, command, **arguments)

    def error(self, command: str, **arguments: Any) -> tuple[str, str]:
        with pytest.raises(QemuError) as info:
            self.qmp(command, **arguments)
        return info.value.error_class, info.value.desc

    def statuses(self, job_id: str) -> list[str]:
        return [data["status"] for name, data in self.events
                if name == "JOB_STATUS_CHANGE" and data is not None and data["id"] == job_id]

    def named(self, name: str) -> list[dict[str, Any] | None]:
        return [data for event, data in self.events if event == name]

    async def until(self, predicate: Callable[[], bool]) -> None:
        await self.machine.jobs.wait_until(predicate, timeout=5)


def run(scenario: Callable[[Env], Coroutine[Any, Any, None]]) -> Env:
    env = Env()
    asyncio.run(asyncio.wait_for(scenario(env), 10))
    return env


# ---- lookups -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, arguments", [
    ("job-pause", {"id": "nosuch"}), ("job-resume", {"id": "nosuch"}),
    ("job-cancel", {"id": "nosuch"}), ("job-complete", {"id": "nosuch"}),
    ("job-finalize", {"id": "nosuch"}), ("job-dismiss", {"id": "nosuch"}),
])
def test_job_commands_unknown_id(command: str, arguments: dict[str, Any]) -> None:
    assert Env().error(command, **arguments) == ("GenericError", "Job not found")


@pytest.mark.parametrize("command, arguments", [
    ("block-job-set-speed", {"device": "nosuch", "speed": 0}),
    ("block-job-cancel", {"device": "nosuch"}), ("block-job-pause", {"device": "nosuch"}),
    ("block-job-resume", {"device": "nosuch"}), ("block-job-complete", {"device": "nosuch"}),
    ("block-job-finalize", {"id": "nosuch"}), ("block-job-dismiss", {"id": "nosuch"}),
])
def test_block_job_commands_unknown_id(command: str, arguments: dict[str, Any]) -> None:
    assert Env().error(command, **arguments) == ("DeviceNotActive", "Block job 'nosuch' not found")


def test_block_job_commands_ignore_non_block_jobs() -> None:
    class Plain(Job):
        job_type = "create"

    env = Env()
    Plain(env.machine.jobs, "plain")
    assert env.error("block-job-pause", device="plain") == ("DeviceNotActive",
                                                            "Block job 'plain' not found")
    assert env.qmp("query-block-jobs") == []
    assert [info["id"] for info in env.qmp("query-jobs")] == ["plain"]


# ---- verbs and messages (as real QEMU 7.2 answered) ------------------------------------------------
def test_verbs_on_running_and_paused_jobs() -> None:
    async def scenario(env: Env) -> None:
        CopyJob(env.machine, "j0", auto_finalize=False, auto_dismiss=False).start()
        CopyJob(env.machine, "j1").start()
        assert [info["id"] for info in env.qmp("query-jobs")] == ["j1", "j0"]  # newest first
        assert env.error("job-resume", id="j1") == ("GenericError",
                                                    "Can't resume a job that was not paused")
        assert env.error("block-job-resume", device="j1")[1] == "Can't resume a job that was not paused"
        for command, verb in (("job-complete", "complete"), ("job-finalize", "finalize"),
                              ("job-dismiss", "dismiss")):
            assert env.error(command, id="j1") == (
                "GenericError", f"Job 'j1' in state 'running' cannot accept command verb '{verb}'")
        assert env.error("block-job-complete", device="j1")[1] == (
            "Job 'j1' in state 'running' cannot accept command verb 'complete'")
        assert env.error("block-job-set-speed", device="j1", speed=-1) == (
            "GenericError", "Parameter 'speed' expects a non-negative value")
        assert env.qmp("job-pause", id="j0") == {}  # a command without a return value answers {"return": {}}
        assert env.error("job-pause", id="j0")[1] == "Job is already paused"
        assert env.error("block-job-pause", device="j0")[1] == "Job is already paused"
        assert env.error("block-job-cancel", device="j0") == (
            "GenericError", "The block job for device 'j0' is currently paused")
        j0 = next(i for i in env.qmp("query-block-jobs") if i["device"] == "j0")
        assert (j0["paused"], j0["status"]) == (True, "paused")
        env.qmp("block-job-resume", device="j0")
        env.machine.jobs.cancel_all_sync()

    env = run(scenario)
    assert env.statuses("j0")[:4] == ["created", "running", "paused", "running"]


def test_query_output_fields() -> None:
    async def scenario(env: Env) -> None:
        job = CopyJob(env.machine, "j0", chunks=2, auto_dismiss=False, speed=1)
        assert env.qmp("query-block-jobs") == [{
            "type": "backup", "device": "j0", "len": 0, "offset": 0, "busy": False,
            "paused": True, "speed": 1, "io-status": "ok", "ready": False, "status": "created",
            "auto-finalize": True, "auto-dismiss": False}]
        job.start()
        job.enter()
        (info,) = env.qmp("query-block-jobs")
        assert set(info) == BLOCK_JOB_INFO_KEYS
        assert (info["len"], info["offset"], info["paused"]) == (131072, 65536, False)
        (jinfo,) = env.qmp("query-jobs")
        assert jinfo == {"id": "j0", "type": "backup", "status": "running",
                         "current-progress": 65536, "total-progress": 131072}
        env.qmp("block-job-cancel", device="j0")
        await env.until(lambda: job.status is JobStatus.CONCLUDED)
        (info,) = env.qmp("query-block-jobs")
        assert set(info) == BLOCK_JOB_INFO_KEYS | {"error"}
        assert (info["error"], info["status"]) == ("Operation canceled", "concluded")
        (jinfo,) = env.qmp("query-jobs")
        assert set(jinfo) == JOB_INFO_KEYS | {"error"} and jinfo["error"] == "Operation canceled"
        assert env.error("block-job-cancel", device="j0", force=True)[1] == (
            "Job 'j0' in state 'concluded' cannot accept command verb 'cancel'")
        env.qmp("block-job-dismiss", id="j0")
        assert env.qmp("query-jobs") == [] and env.qmp("query-block-jobs") == []

    env = run(scenario)
    assert env.named("BLOCK_JOB_CANCELLED") == [
        {"type": "backup", "device": "j0", "len": 131072, "offset": 65536, "speed": 1}]
    assert env.statuses("j0") == ["created", "running", "aborting", "concluded", "null"]


# ---- QMP events ------------------------------------------------------------------------------------
def test_events_success_and_manual_finalize() -> None:
    async def scenario(env: Env) -> None:
        job = CopyJob(env.machine, "job0", chunks=1, use_timer=True, auto_finalize=False,
                      auto_dismiss=False)
        job.start()
        await env.until(lambda: job.status is JobStatus.PENDING)
        assert env.qmp("query-jobs") == [{"current-progress": 65536, "id": "job0",
                                          "status": "pending", "total-progress": 65536,
                                          "type": "backup"}]
        assert env.error("job-pause", id="job0")[1] == (
            "Job 'job0' in state 'pending' cannot accept command verb 'pause'")
        env.qmp("job-finalize", id="job0")
        assert env.qmp("query-jobs")[0]["status"] == "concluded"
        env.qmp("job-dismiss", id="job0")
        assert env.qmp("query-jobs") == []

    env = run(scenario)
    assert env.events == [
        ("JOB_STATUS_CHANGE", {"id": "job0", "status": "created"}),
        ("JOB_STATUS_CHANGE", {"id": "job0", "status": "running"}),
        ("JOB_STATUS_CHANGE", {"id": "job0", "status": "waiting"}),
        ("JOB_STATUS_CHANGE", {"id": "job0", "status": "pending"}),
        ("BLOCK_JOB_PENDING", {"type": "backup", "id": "job0"}),
        ("BLOCK_JOB_COMPLETED", {"type": "backup", "device": "job0", "len": 65536,
                                 "offset": 65536, "speed": 0}),
        ("JOB_STATUS_CHANGE", {"id": "job0", "status": "concluded"}),
        ("JOB_STATUS_CHANGE", {"id": "job0", "status": "null"}),
    ]


def test_events_failure_report() -> None:
    async def scenario(env: Env) -> None:
        job = CopyJob(env.machine, "job0", chunks=2, use_timer=True, fail_read=True)
        job.start()
        await env.until(lambda: job.status is JobStatus.NULL)

    env = run(scenario)
    assert env.named("BLOCK_JOB_ERROR") == [{"device": "job0", "operation": "read",
                                             "action": "report"}]
    assert env.named("BLOCK_JOB_COMPLETED") == [{"type": "backup", "device": "job0",
                                                 "len": 131072, "offset": 0, "speed": 0,
                                                 "error": "Input/output error"}]
    assert env.statuses("job0") == ["created", "running", "aborting", "concluded", "null"]


def test_events_stop_and_resume() -> None:
    async def scenario(env: Env) -> None:
        job = CopyJob(env.machine, "job0", chunks=2, use_timer=True, fail_read=True,
                      on_error="stop")
        job.start()
        await env.until(lambda: job.status is JobStatus.PAUSED)
        (info,) = env.qmp("query-block-jobs")
        assert (info["io-status"], info["paused"], info["status"]) == ("failed", True, "paused")
        env.qmp("block-job-resume", device="job0")
        assert env.qmp("query-block-jobs")[0]["io-status"] == "ok"
        await env.until(lambda: job.status is JobStatus.NULL)

    env = run(scenario)
    assert env.named("BLOCK_JOB_ERROR") == [{"device": "job0", "operation": "read",
                                             "action": "stop"}]
    assert env.statuses("job0") == ["created", "running", "paused", "running", "waiting",
                                    "pending", "concluded", "null"]
    assert env.named("BLOCK_JOB_COMPLETED")[0] == {"type": "backup", "device": "job0",
                                                   "len": 131072, "offset": 131072, "speed": 0}


def test_job_cancel_of_user_paused_job() -> None:
    """job-cancel (always force) of a user-paused job: running aborting CANCELLED (as QEMU 7.2)."""
    async def scenario(env: Env) -> None:
        job = CopyJob(env.machine, "j1", chunks=8)
        job.start()
        env.qmp("job-pause", id="j1")
        env.qmp("job-cancel", id="j1")
        await env.until(lambda: job.status is JobStatus.NULL)

    env = run(scenario)
    assert env.statuses("j1") == ["created", "running", "paused", "running", "aborting",
                                  "concluded", "null"]
    assert [name for name, _ in env.events if name.startswith("BLOCK_JOB")] == ["BLOCK_JOB_CANCELLED"]


def test_set_speed_updates_query_and_events() -> None:
    async def scenario(env: Env) -> None:
        job = CopyJob(env.machine, "j0", chunks=1, speed=1)
        job.start()
        env.qmp("block-job-set-speed", device="j0", speed=0)
        assert env.qmp("query-block-jobs")[0]["speed"] == 0
        job.enter()
        await env.until(lambda: job.status is JobStatus.NULL)

    env = run(scenario)
    (completed,) = env.named("BLOCK_JOB_COMPLETED")
    assert completed is not None and completed["speed"] == 0


def test_early_fail_on_negative_speed_emits_created_null() -> None:
    """QEMU 7.2 creates the job before checking the speed (`created`, `null`, then the error)."""
    env = Env()
    with pytest.raises(QemuError, match="^Parameter 'speed' expects a non-negative value$"):
        CopyJob(env.machine, "j4", speed=-1)
    assert env.statuses("j4") == ["created", "null"]
    assert env.qmp("query-jobs") == []


def test_machine_close_cancels_jobs_after_loop_ended() -> None:
    """QEMU's exit path (job_cancel_sync_all) also works once the event loop is gone."""
    env = Env()

    async def scenario() -> None:
        CopyJob(env.machine, "j0", chunks=100, use_timer=True).start()
        CopyJob(env.machine, "j1", chunks=100, auto_dismiss=False).start()
        env.qmp("job-pause", id="j1")

    asyncio.run(scenario())
    env.machine.close()
    assert len(env.machine.jobs) == 0
    assert env.statuses("j0")[-4:] == ["running", "aborting", "concluded", "null"]
    assert env.statuses("j1") == ["created", "running", "paused", "running", "aborting",
                                  "concluded", "null"]  # kept concluded, then dismissed
    assert [data["device"] for data in env.named("BLOCK_JOB_CANCELLED") if data] == ["j1", "j0"]
