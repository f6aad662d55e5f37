"""Job-control QMP commands (QEMU's job-qmp.c and the block-job-* half of blockdev.c) and the
QMP event sink for jobs (JOB_STATUS_CHANGE and the BLOCK_JOB_* events of blockjob.c).

job-* commands find any job by `id` (GenericError "Job not found"); block-job-* commands find
block jobs only, by `device` (or `id` for finalize/dismiss), failing with DeviceNotActive
"Block job '<id>' not found".  job-cancel is always a force-cancel.
"""

from __future__ import annotations

from typing import Any

from emulator.error import ErrorClass, QemuError
from emulator.jobs.blockjob import BlockJob
from emulator.jobs.job import Job, JobStatus, JobVerb
from emulator.machine import Machine

from .registry import qapi_types, qmp_command

qapi_types(
    {"enum": "JobType", "data": ["commit", "stream", "mirror", "backup", "create", "amend",
                                 "snapshot-load", "snapshot-save", "snapshot-delete"]},
    {"enum": "JobStatus", "data": [status.value for status in JobStatus]},
    {"enum": "JobVerb", "data": [verb.value for verb in JobVerb]},
    {"struct": "JobInfo", "data": {"id": "str", "type": "JobType", "status": "JobStatus",
                                   "current-progress": "int", "total-progress": "int",
                                   "*error": "str"}},
    # block-job-change (QEMU 8.2+; absent from the 7.2 profile)
    {"enum": "MirrorCopyMode", "data": ["background", "write-blocking"]},
    {"struct": "BlockJobChangeOptionsMirror", "data": {"copy-mode": "MirrorCopyMode"}},
    {"struct": "BlockJobChangeOptionsBase", "data": {"id": "str", "type": "JobType"}},
    {"union": "BlockJobChangeOptions", "base": "BlockJobChangeOptionsBase",
     "discriminator": "type", "data": {"mirror": "BlockJobChangeOptionsMirror"}},
)


# ---- events ------------------------------------------------------------------------------------
class QmpJobEvents:
    """The JobEventSink that turns job events into QMP events, with QEMU 7.2's data members."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def status_changed(self, job: Job) -> None:
        self.machine.emit_event("JOB_STATUS_CHANGE", {"id": job.id, "status": job.status.value})

    def pending(self, job: Job) -> None:
        if isinstance(job, BlockJob) and not job.is_internal:
            self.machine.emit_event("BLOCK_JOB_PENDING", {"type": job.job_type, "id": job.id})

    def ready(self, job: Job) -> None:
        if isinstance(job, BlockJob) and not job.is_internal:
            self.machine.emit_event("BLOCK_JOB_READY", _progress_data(job))

    def completed(self, job: Job) -> None:
        if isinstance(job, BlockJob) and not job.is_internal:
            data = _progress_data(job)
            if job.ret < 0:
                data["error"] = job.error
            self.machine.emit_event("BLOCK_JOB_COMPLETED", data)

    def cancelled(self, job: Job) -> None:
        if isinstance(job, BlockJob) and not job.is_internal:
            self.machine.emit_event("BLOCK_JOB_CANCELLED", _progress_data(job))

    def io_error(self, job: Job, operation: str, action: str) -> None:
        if not job.is_internal:
            self.machine.emit_event("BLOCK_JOB_ERROR",
                                    {"device": job.id, "operation": operation, "action": action})


def _progress_data(job: BlockJob) -> dict[str, Any]:
    return {"type": job.job_type, "device": job.id, "len": job.progress_total,
            "offset": job.progress_current, "speed": job.speed}


def install_job_events(machine: Machine) -> None:
    """Route the machine's job events to QMP (called when the Machine is built)."""
    machine.jobs.events = QmpJobEvents(machine)


# ---- lookups ------------------------------------------------------------------------------------
def find_job(machine: Machine, job_id: str) -> Job:
    """job-qmp.c find_job_locked."""
    job = machine.jobs.get(job_id)
    if job is None:
        raise QemuError("Job not found")
    return job


def find_block_job(machine: Machine, job_id: str) -> BlockJob:
    """blockdev.c find_block_job_locked."""
    job = machine.jobs.get(job_id)
    if not isinstance(job, BlockJob):
        raise QemuError(f"Block job '{job_id}' not found", ErrorClass.DEVICE_NOT_ACTIVE)
    return job


# ---- queries ------------------------------------------------------------------------------------
@qmp_command("query-jobs")
def qmp_query_jobs(machine: Machine) -> list[dict[str, Any]]:
    return [job.job_info() for job in machine.jobs if not job.is_internal]


@qmp_command("query-block-jobs")
def qmp_query_block_jobs(machine: Machine) -> list[dict[str, Any]]:
    return [job.info() for job in machine.jobs.block_jobs() if not job.is_internal]


# ---- job-* --------------------------------------------------------------------------------------
@qmp_command("job-pause", {"id": "str"})
def qmp_job_pause(machine: Machine, id: str) -> None:
    find_job(machine, id).user_pause()


@qmp_command("job-resume", {"id": "str"})
def qmp_job_resume(machine: Machine, id: str) -> None:
    find_job(machine, id).user_resume()


@qmp_command("job-cancel", {"id": "str"})
def qmp_job_cancel(machine: Machine, id: str) -> None:
    find_job(machine, id).user_cancel(True)


@qmp_command("job-complete", {"id": "str"})
def qmp_job_complete(machine: Machine, id: str) -> None:
    find_job(machine, id).complete()


@qmp_command("job-finalize", {"id": "str"})
def qmp_job_finalize(machine: Machine, id: str) -> None:
    find_job(machine, id).finalize()


@qmp_command("job-dismiss", {"id": "str"})
def qmp_job_dismiss(machine: Machine, id: str) -> None:
    find_job(machine, id).dismiss()


# ---- block-job-* --------------------------------------------------------------------------------
@qmp_command("block-job-set-speed", {"device": "str", "speed": "int"})
def qmp_block_job_set_speed(machine: Machine, device: str, speed: int) -> None:
    find_block_job(machine, device).set_speed(speed)


@qmp_command("block-job-cancel", {"device": "str", "*force": "bool"})
def qmp_block_job_cancel(machine: Machine, device: str, force: bool = False) -> None:
    job = find_block_job(machine, device)
    if job.user_paused and not force:
        raise QemuError(f"The block job for device '{device}' is currently paused")
    job.user_cancel(force)


@qmp_command("block-job-pause", {"device": "str"})
def qmp_block_job_pause(machine: Machine, device: str) -> None:
    find_block_job(machine, device).user_pause()


@qmp_command("block-job-resume", {"device": "str"})
def qmp_block_job_resume(machine: Machine, device: str) -> None:
    find_block_job(machine, device).user_resume()


@qmp_command("block-job-complete", {"device": "str"})
def qmp_block_job_complete(machine: Machine, device: str) -> None:
    find_block_job(machine, device).complete()


@qmp_command("block-job-finalize", {"id": "str"})
def qmp_block_job_finalize(machine: Machine, id: str) -> None:
    find_block_job(machine, id).finalize()


@qmp_command("block-job-dismiss", {"id": "str"})
def qmp_block_job_dismiss(machine: Machine, id: str) -> None:
    find_block_job(machine, id).dismiss()


@qmp_command("block-job-change", "BlockJobChangeOptions")
def qmp_block_job_change(machine: Machine, id: str, type: str, copy_mode: str | None = None) -> None:
    """QEMU 8.2+'s block_job_change_locked: the `change` verb, then the driver's .change.

    Only mirror jobs have one (copy-mode); the emulator runs no mirror job, so every job it
    has refuses, as a backup job does in QEMU 10.0.
    """
    job = find_block_job(machine, id)
    job.apply_verb(JobVerb.CHANGE)
    raise QemuError(machine.profile.errors.JOB_CHANGE_UNSUPPORTED)
