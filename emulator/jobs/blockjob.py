"""BlockJob: a job that works on block nodes (QEMU's blockjob.c).

Adds to Job what every block job has: the nodes it holds (with op blockers, and drained
sections on those nodes pause it), a `speed` with a rate limiter, the I/O status and
on-error policy (block_job_error_action), and the BlockJobInfo of query-block-jobs.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from emulator import qerror
from emulator.block.drain import attach_parent, detach_parent
from emulator.block.node import BLOCK_OP_TYPES
from emulator.block.permissions import PERM_ALL
from emulator.error import QemuError

from .job import CompletionCallback, Job, JobList, JobVerb
from .ratelimit import BLOCK_JOB_SLICE_TIME_NS, RateLimit
from .txn import JobTxn

if TYPE_CHECKING:
    from emulator.block.node import BlockNode


class BlockJob(Job):
    """A block job: a Job plus nodes, speed, iostatus and error policy."""

    def __init__(
        self,
        manager: JobList,
        job_id: str | None,
        node: BlockNode | None = None,
        *,
        txn: JobTxn | None = None,
        speed: int = 0,
        auto_finalize: bool = True,
        auto_dismiss: bool = True,
        internal: bool = False,
        cb: CompletionCallback | None = None,
    ) -> None:
        """block_job_create: a job on its main `node` (drivers add more with add_node()).

        Raises QemuError if it cannot be made; the job then has already gone `created`, `null`
        (QEMU 7.2 creates the job before it checks the speed: job_early_fail).
        """
        self._nodes: list[BlockNode] = []
        self._roles: dict[int, str] = {}
        self.speed = 0
        self.limit = RateLimit()
        self.iostatus = "ok"
        self.blocker = f"block device is in use by block job: {self.job_type}"
        super().__init__(manager, job_id, txn=txn, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss, internal=internal, cb=cb)
        try:
            if node is not None:
                self.add_node(node)
                node.op_unblock("dataplane", self.blocker)
            self.set_speed(speed)
        except QemuError:
            self.early_fail()
            raise

    # ---- nodes ----------------------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[BlockNode, ...]:
        return tuple(self._nodes)

    def perm_edge(self, node: BlockNode) -> tuple[str, int, int]:
        """The job's use of a node for the permission system: it needs nothing and shares all
        (block_job_add_bdrv(..., 0, BLK_PERM_ALL)); its drivers' filters take the real perms."""
        return self._roles.get(id(node), "main node"), 0, PERM_ALL

    def parent_desc(self) -> str:
        """child_job_get_parent_desc."""
        return f"{self.job_type} job '{self.id}'"

    def add_node(self, node: BlockNode, *, block_ops: bool = True, role: str = "main node") -> None:
        """block_job_add_bdrv: hold `node` (drains of it pause the job) and block every operation
        on it until the job releases its nodes.

        block_ops=False attaches without op blockers: QEMU 7.2's backup holds its source only
        through the copy-before-write filter, so the source stays usable (a second backup of the
        same node is allowed) while drains of it still reach the job.
        """
        self._nodes.insert(0, node)
        self._roles[id(node)] = role
        if block_ops:
            for op in BLOCK_OP_TYPES:
                node.op_block(op, self.blocker)
        attach_parent(node, self)  # a drained node pauses the job at once (drain saldo)

    def remove_all_nodes(self) -> None:
        """block_job_remove_all_bdrv: release every node and its op blockers."""
        while self._nodes:
            node = self._nodes.pop(0)
            for op in BLOCK_OP_TYPES:
                node.op_unblock(op, self.blocker)
            detach_parent(node, self)

    # ---- drained sections (child_job's BdrvChildClass callbacks) -------------------------------
    def child_drained_begin(self, node: BlockNode) -> None:
        """child_job_drained_begin: a drained section reached the job through `node`."""
        self.drain_begin()

    def child_drained_end(self, node: BlockNode) -> None:
        """child_job_drained_end."""
        self.drain_end()

    def clean(self) -> None:
        """Release the nodes at finalisation (as backup_clean does); subclasses call super()."""
        self.remove_all_nodes()

    def driver_free(self) -> None:
        self.remove_all_nodes()

    # ---- speed ----------------------------------------------------------------------------------
    def set_speed(self, speed: int) -> None:
        """block_job_set_speed: verb check, then the value check, then kick a sleeping job."""
        old_speed = self.speed
        self.apply_verb(JobVerb.SET_SPEED)
        if speed < 0:
            raise QemuError(qerror.INVALID_PARAMETER_VALUE % ("speed", "a non-negative value"))
        self.limit.set_speed(speed, BLOCK_JOB_SLICE_TIME_NS)
        self.speed = speed
        self.driver_set_speed(speed)
        if speed and speed <= old_speed:
            return
        # A faster (or unlimited) job should not sit out a sleep computed for the old speed.
        self.enter(lambda job: job.timer_pending())

    def driver_set_speed(self, speed: int) -> None:
        """Hook for drivers with their own throttle (backup's block-copy)."""

    # ---- errors ---------------------------------------------------------------------------------
    def error_action(self, on_error: str, is_read: bool, error: int) -> str:
        """block_job_error_action: choose and announce what to do about I/O error `error` (errno).

        Returns the BlockErrorAction: "report" (fail with it), "ignore" (go on) or "stop"
        (the job is now user-paused with io-status failed/nospace until block-job-resume).
        """
        if on_error in ("enospc", "auto"):
            action = "stop" if error == errno.ENOSPC else "report"
        elif on_error in ("stop", "report", "ignore"):
            action = on_error
        else:
            raise ValueError(f"unknown on-error policy {on_error!r}")
        if not self.is_internal:
            self.manager.events.io_error(self, "read" if is_read else "write", action)
        if action == "stop":
            if not self.user_paused:
                self.pause()
                self.user_paused = True  # made user-visible: resumed from QMP
            if self.iostatus == "ok":
                self.iostatus = "nospace" if error == errno.ENOSPC else "failed"
        return action

    def driver_user_resume(self) -> None:
        """block_job_user_resume: a resume (or cancel) clears the I/O status."""
        if self.iostatus == "ok":
            return
        assert self.user_paused and self.pause_count > 0
        self.iostatus = "ok"

    # ---- queries --------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """QAPI BlockJobInfo (query-block-jobs), in QEMU's member order."""
        info: dict[str, Any] = {
            "type": self.job_type,
            "device": self.id,
            "len": self.progress_total,
            "offset": self.progress_current,
            "busy": self.busy or self.io_blocked,
            "paused": self.pause_count > 0,
            "speed": self.speed,
            "io-status": self.iostatus,
            "ready": self.is_ready(),
            "status": self.status.value,
            "auto-finalize": self.auto_finalize,
            "auto-dismiss": self.auto_dismiss,
        }
        if self.ret:
            info["error"] = self.error if self.error is not None else os.strerror(-self.ret)
        return info

