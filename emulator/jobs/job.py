"""Job: QEMU's generic background job (job.c) — state machine, verbs, pause/cancel, finalisation.

A job's work is a Python coroutine (`run()`) driven exactly the way QEMU drives a job
coroutine: it is *entered* synchronously (job_enter -> aio_co_enter), runs until it suspends
in one of the job helpers (`pause_point`, `sleep_ns`, `yield_`), and is re-entered by a
timer, by `enter()` or by a resume.  Timers and the completion bottom half (job_exit) are
callbacks on the emulator's asyncio loop.  Nothing depends on thread timing, so the event
order of a scenario is the same on every run.

Drivers may only suspend through the job helpers (QEMU's coroutine_fn rule: a job yields
only at a pause point, a sleep or an explicit yield); awaiting anything else is an error.
Block I/O in this emulator is synchronous, so a driver never needs to.

The grouped-completion logic (job_completed_txn_*) lives in txn.py; the job list and its id
checks in manager.py, which a job reaches through the JobList protocol below (a job does not
import its manager).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import os
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from emulator.error import QemuError

from .txn import JobTxn

if TYPE_CHECKING:
    from emulator.block.node import BlockNode


class JobStatus(str, enum.Enum):
    """QAPI JobStatus (qapi/job.json), in QEMU's enum order."""

    UNDEFINED = "undefined"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    READY = "ready"
    STANDBY = "standby"
    WAITING = "waiting"
    PENDING = "pending"
    ABORTING = "aborting"
    CONCLUDED = "concluded"
    NULL = "null"

    def __str__(self) -> str:
        return self.value


class JobVerb(str, enum.Enum):
    """QAPI JobVerb (`change` arrived in 8.2, for block-job-change)."""

    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    SET_SPEED = "set-speed"
    COMPLETE = "complete"
    FINALIZE = "finalize"
    DISMISS = "dismiss"
    CHANGE = "change"

    def __str__(self) -> str:
        return self.value


S = JobStatus

#: QEMU's JobSTT: the statuses each status may move to.  Anything else is an emulator bug.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.UNDEFINED: frozenset({S.CREATED}),
    S.CREATED: frozenset({S.RUNNING, S.ABORTING, S.NULL}),
    S.RUNNING: frozenset({S.PAUSED, S.READY, S.WAITING, S.ABORTING}),
    S.PAUSED: frozenset({S.RUNNING}),
    S.READY: frozenset({S.STANDBY, S.WAITING, S.ABORTING}),
    S.STANDBY: frozenset({S.READY}),
    S.WAITING: frozenset({S.PENDING, S.ABORTING}),
    S.PENDING: frozenset({S.ABORTING, S.CONCLUDED}),
    S.ABORTING: frozenset({S.ABORTING, S.CONCLUDED}),
    S.CONCLUDED: frozenset({S.NULL}),
    S.NULL: frozenset(),
}

_ACTIVE = frozenset({S.CREATED, S.RUNNING, S.PAUSED, S.READY, S.STANDBY})

#: QEMU 7.2's JobVerbTable: the statuses in which each verb is accepted.
VERBS: dict[JobVerb, frozenset[JobStatus]] = {
    JobVerb.CANCEL: _ACTIVE | {S.WAITING, S.PENDING},
    JobVerb.PAUSE: _ACTIVE,
    JobVerb.RESUME: _ACTIVE,
    JobVerb.SET_SPEED: _ACTIVE,
    JobVerb.COMPLETE: frozenset({S.READY, S.STANDBY}),
    JobVerb.FINALIZE: frozenset({S.PENDING}),
    JobVerb.DISMISS: frozenset({S.CONCLUDED}),
    JobVerb.CHANGE: _ACTIVE,
}

#: job_is_completed(): the job's own work is over (it may still wait for its txn).
COMPLETED_STATUSES = frozenset({S.WAITING, S.PENDING, S.ABORTING, S.CONCLUDED, S.NULL})


def transition_allowed(s0: JobStatus, s1: JobStatus) -> bool:
    return s1 in TRANSITIONS[s0]


def verb_allowed(verb: JobVerb, status: JobStatus) -> bool:
    return status in VERBS[verb]


class JobEventSink(Protocol):
    """Where a JobManager reports what QEMU turns into QMP events (the commands layer emits them)."""

    def status_changed(self, job: Job) -> None:
        """JOB_STATUS_CHANGE: `job.status` is the new status."""

    def pending(self, job: Job) -> None:
        """The job entered `pending` with auto-finalize off (BLOCK_JOB_PENDING)."""

    def ready(self, job: Job) -> None:
        """The job became ready (BLOCK_JOB_READY)."""

    def completed(self, job: Job) -> None:
        """A started job was finalised without being force-cancelled (BLOCK_JOB_COMPLETED)."""

    def cancelled(self, job: Job) -> None:
        """A started, force-cancelled job was finalised (BLOCK_JOB_CANCELLED)."""

    def io_error(self, job: Job, operation: str, action: str) -> None:
        """The job hit an I/O error ("read"/"write") and chose `action` (BLOCK_JOB_ERROR)."""


class JobList(Protocol):
    """What a job needs from the job list it belongs to (JobManager: QEMU's global `jobs` list
    with its id checks, event sink and loop)."""

    @property
    def events(self) -> JobEventSink: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def exiting(self) -> bool:
        """The emulator is exiting (job_cancel_sync_all): stopped I/O waits give up."""
        ...

    def check_new_job_id(self, job_id: str | None, internal: bool = False) -> None: ...

    def register(self, job: Job) -> None: ...

    def unregister(self, job: Job) -> None: ...

    def notify_change(self) -> None: ...


class NullJobEventSink:
    """The default sink: QEMU without a monitor."""

    def status_changed(self, job: Job) -> None:
        pass

    def pending(self, job: Job) -> None:
        pass

    def ready(self, job: Job) -> None:
        pass

    def completed(self, job: Job) -> None:
        pass

    def cancelled(self, job: Job) -> None:
        pass

    def io_error(self, job: Job, operation: str, action: str) -> None:
        pass


class _Suspend:
    """What a job coroutine yields to give control back to whoever entered it."""

    __slots__ = ()

    def __await__(self) -> Generator[_Suspend, None, None]:
        yield self


_SUSPEND = _Suspend()

#: How many times finish_sync() re-enters a job before declaring it stuck.
_FINISH_SYNC_LIMIT = 100_000

CompletionCallback = Callable[["Job", int], None]


class Job:
    """One background job (QEMU's Job + JobDriver); subclasses implement the driver hooks."""

    #: QAPI JobType string ("backup", "mirror", ...).
    job_type: ClassVar[str] = ""
    #: Whether the driver implements .complete (mirror/commit do; backup does not).
    supports_complete: ClassVar[bool] = False

    def __init__(
        self,
        manager: JobList,
        job_id: str | None,
        *,
        txn: JobTxn | None = None,
        auto_finalize: bool = True,
        auto_dismiss: bool = True,
        internal: bool = False,
        cb: CompletionCallback | None = None,
    ) -> None:
        manager.check_new_job_id(job_id, internal)
        self.manager = manager
        self.id = job_id
        self.status = JobStatus.UNDEFINED
        self.txn: JobTxn | None = None
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self.cb = cb
        # Pause bookkeeping: a job is created paused (pause_count 1), job_start drops that.
        self.pause_count = 1
        self.paused = True
        self.user_paused = False
        self.busy = False
        #: Inside an I/O request stopped at a breakpoint (wait_io): busy as far as QEMU shows.
        self.io_blocked = False
        # Cancellation: `cancelled` = requested, `force_cancel` = job_is_cancelled().
        self.cancelled = False
        self.force_cancel = False
        #: The work function's result (0 or -errno) and the error text (QEMU's job->err).
        self.ret = 0
        self.error: str | None = None
        self.progress_current = 0
        self.progress_total = 0
        self.deferred_to_main_loop = False
        self._started = False
        self._coro: Coroutine[Any, Any, int] | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._exit_pending = False
        self._exit_handle: asyncio.Handle | None = None

        self._transition(JobStatus.CREATED)
        manager.register(self)
        # Single jobs are modeled as single-job transactions (job_create).
        if txn is None:
            private = JobTxn()
            private.add_job(self)
            private.unref()
        else:
            txn.add_job(self)

    # ---- driver hooks (JobDriver) ---------------------------------------------------------------
    async def run(self) -> int:
        """The job's work: return 0 or -errno; set `self.error` for a custom message."""
        raise NotImplementedError

    def prepare(self) -> int:
        """Called for every txn member before any commit/abort; non-zero fails the txn."""
        return 0

    def commit(self) -> None:
        """Finalisation of a job whose txn succeeded."""

    def abort(self) -> None:
        """Finalisation of a job whose txn failed or was cancelled."""

    def clean(self) -> None:
        """Called after commit() or abort()."""

    def driver_pause(self) -> None:
        """Called at a pause point before the job pauses."""

    def driver_resume(self) -> None:
        """Called at a pause point after the job resumed."""

    def driver_user_resume(self) -> None:
        """Called when a user pause ends (resume command or cancel)."""

    def driver_cancel(self, force: bool) -> bool:
        """Return whether a cancel is a force-cancel; QEMU's default (no .cancel) is always force."""
        return True

    def driver_complete(self) -> None:
        """job-complete for drivers with `supports_complete`."""

    def driver_free(self) -> None:
        """Release driver resources when the job is dismissed."""

    @property
    def nodes(self) -> tuple[BlockNode, ...]:
        """Block nodes the job is attached to (drained sections pause jobs through them)."""
        return ()

    # ---- properties -----------------------------------------------------------------------------
    @property
    def is_internal(self) -> bool:
        return self.id is None

    @property
    def started(self) -> bool:
        return self._started

    def is_cancelled(self) -> bool:
        """job_is_cancelled(): force-cancelled (the only kind that stops a job)."""
        assert self.cancelled or not self.force_cancel
        return self.force_cancel

    def cancel_requested(self) -> bool:
        return self.cancelled

    def is_ready(self) -> bool:
        return self.status in (JobStatus.READY, JobStatus.STANDBY)

    def is_completed(self) -> bool:
        return self.status in COMPLETED_STATUSES

    def should_pause(self) -> bool:
        return self.pause_count > 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r} {self.status.value}>"

    # ---- state machine --------------------------------------------------------------------------
    def _transition(self, s1: JobStatus) -> None:
        s0 = self.status
        assert transition_allowed(s0, s1), f"job {self.id!r}: illegal transition {s0.value} -> {s1.value}"
        self.status = s1
        if not self.is_internal and s1 != s0:
            self.manager.events.status_changed(self)
        self.manager.notify_change()

    def apply_verb(self, verb: JobVerb) -> None:
        """Raise QEMU's error if `verb` is not accepted in the current status."""
        if not verb_allowed(verb, self.status):
            raise QemuError(
                f"Job '{self.id}' in state '{self.status.value}' cannot accept command verb '{verb.value}'"
            )

    # ---- progress -------------------------------------------------------------------------------
    def progress_update(self, done: int) -> None:
        self.progress_current += done

    def progress_set_remaining(self, remaining: int) -> None:
        self.progress_total = self.progress_current + remaining

    # ---- coroutine plumbing ---------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.manager.loop

    def _call_soon(self, callback: Callable[[], None]) -> asyncio.Handle | None:
        try:
            return self.loop.call_soon(callback)
        except RuntimeError:  # loop closed (emulator shutting down): finish_sync runs it inline
            return None

    def _step(self) -> None:
        """Run the job coroutine until it suspends or returns (qemu_coroutine_enter)."""
        assert self._coro is not None and self.busy
        try:
            yielded = self._coro.send(None)
        except StopIteration as stop:
            self._coro = None
            self._run_returned(stop.value)
            return
        if yielded is not _SUSPEND:
            raise TypeError(f"job {self.id!r} awaited {yielded!r}; jobs may only suspend in Job helpers")

    async def _co_entry(self) -> int:
        """job_co_entry: a pause point before the work proper, so a job can start paused."""
        await self.pause_point()
        try:
            return await self.run()
        except OSError as exc:
            code = exc.errno or errno.EIO
            if self.error is None:
                self.error = exc.strerror or os.strerror(code)
            return -code
        except QemuError as exc:
            self.error = exc.desc
            return -errno.EIO
        except Exception as exc:  # noqa: BLE001  (a driver bug: fail the job rather than hang it)
            self.loop.call_exception_handler(
                {"message": f"job {self.id!r} crashed", "exception": exc}
            )
            self.error = f"internal emulator error: {exc!r}"
            return -errno.EIO

    def _run_returned(self, ret: int) -> None:
        self.ret = ret
        self.deferred_to_main_loop = True
        self.busy = True
        self._exit_pending = True
        self._exit_handle = self._call_soon(self._bh_exit)

    def _bh_exit(self) -> None:
        self._exit_handle = None
        if self._exit_pending:
            self._exit()

    def _run_exit_now(self) -> None:
        """Run the pending job_exit bottom half now, as an AIO_WAIT_WHILE poll would."""
        if self._exit_handle is not None:
            self._exit_handle.cancel()
            self._exit_handle = None
        self._exit()

    def _exit(self) -> None:
        """job_exit: the work is over; complete the job in the main loop."""
        assert self._exit_pending
        self._exit_pending = False
        self.busy = False
        self._completed()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        self.enter()

    def timer_pending(self) -> bool:
        return self._timer is not None

    def enter(self, cond: Callable[[Job], bool] | None = None) -> None:
        """job_enter_cond: re-enter a suspended job now (no-op if busy, not started or done)."""
        if not self._started or self.deferred_to_main_loop or self.busy:
            return
        if cond is not None and not cond(self):
            return
        self._cancel_timer()
        self.busy = True
        self._step()

    async def _do_yield(self, ns: int | None) -> None:
        if ns is not None:
            if ns <= 0:
                self._timer = self._call_soon(self._timer_fired)
            else:
                self._timer = self.loop.call_later(ns / 1e9, self._timer_fired)
        self.busy = False
        self.manager.notify_change()
        await _SUSPEND
        assert self.busy

    # ---- helpers for drivers (coroutine_fn) -----------------------------------------------------
    async def pause_point(self) -> None:
        """Pause here if a pause was requested (user, drain or error action)."""
        assert self._started
        if not self.should_pause() or self.is_cancelled():
            return
        self.driver_pause()
        if self.should_pause() and not self.is_cancelled():
            status = self.status
            self._transition(JobStatus.STANDBY if status is JobStatus.READY else JobStatus.PAUSED)
            self.paused = True
            await self._do_yield(None)
            self.paused = False
            self._transition(status)
        self.driver_resume()

    async def yield_(self) -> None:
        """Suspend until someone calls enter() (job_yield)."""
        assert self.busy
        if self.is_cancelled():
            return
        if not self.should_pause():
            await self._do_yield(None)
        await self.pause_point()

    async def wait_io(self, released: Callable[[], bool], poll_ns: int = 1_000_000) -> None:
        """Wait for an I/O request of ours that is stopped outside the job (at a blkdebug
        breakpoint) until `released()`.  QEMU's coroutine is then inside the request: not at a
        pause point, still busy, and neither pause nor cancel take effect before it returns."""
        self.io_blocked = True
        try:
            while not released() and not self.manager.exiting:
                await self._do_yield(poll_ns)
        finally:
            self.io_blocked = False

    async def sleep_ns(self, ns: int) -> None:
        """Sleep `ns` nanoseconds of wall-clock time; cut short by enter(), pause or cancel."""
        assert self.busy
        if self.is_cancelled():
            return
        if not self.should_pause():
            await self._do_yield(ns)
        await self.pause_point()

    def transition_to_ready(self) -> None:
        """For drivers with a ready phase (mirror): running -> ready + BLOCK_JOB_READY."""
        self._transition(JobStatus.READY)
        self.manager.events.ready(self)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """job_start: running, then enter the coroutine (it stops at once if pauses are pending)."""
        assert not self._started and self.paused
        self._coro = self._co_entry()
        self._started = True
        self.pause_count -= 1
        self.busy = True
        self.paused = False
        self._transition(JobStatus.RUNNING)
        self._step()

    def pause(self) -> None:
        """job_pause: one more reason to pause; a running job is kicked to its pause point."""
        self.pause_count += 1
        if not self.paused:
            self.enter()

    def resume(self) -> None:
        """job_resume: one reason less; the last one re-enters the job (unless it sleeps)."""
        assert self.pause_count > 0
        self.pause_count -= 1
        if self.pause_count:
            return
        self.enter(lambda job: not job.timer_pending())

    def drain_begin(self) -> None:
        """A drained section starts on a node the job uses (child_job_drained_begin + poll)."""
        self.pause()
        # bdrv_drained_begin polls until the job is quiescent: a job whose work just ended is
        # busy until its job_exit bottom half has run, so the drain runs it.
        if self._exit_pending:
            self._run_exit_now()

    def drain_end(self) -> None:
        """The drained section ends (child_job_drained_end)."""
        self.resume()

    # ---- user verbs -----------------------------------------------------------------------------
    def user_pause(self) -> None:
        self.apply_verb(JobVerb.PAUSE)
        if self.user_paused:
            raise QemuError("Job is already paused")
        self.user_paused = True
        self.pause()

    def user_resume(self) -> None:
        if not self.user_paused or self.pause_count <= 0:
            raise QemuError("Can't resume a job that was not paused")
        self.apply_verb(JobVerb.RESUME)
        self.driver_user_resume()
        self.user_paused = False
        self.resume()

    def user_cancel(self, force: bool) -> None:
        self.apply_verb(JobVerb.CANCEL)
        self.cancel(force)

    def complete(self) -> None:
        """job-complete (mirror/commit switch-over)."""
        assert not self.is_internal
        self.apply_verb(JobVerb.COMPLETE)
        if self.cancel_requested() or not self.supports_complete:
            raise QemuError(f"The active block job '{self.id}' cannot be completed")
        self.driver_complete()

    def finalize(self) -> None:
        """job-finalize: finalise the whole txn of a pending job."""
        assert not self.is_internal
        self.apply_verb(JobVerb.FINALIZE)
        assert self.txn is not None
        self.txn.do_finalize(self)

    def dismiss(self) -> None:
        """job-dismiss: drop a concluded job."""
        assert not self.is_internal
        self.apply_verb(JobVerb.DISMISS)
        self._do_dismiss()

    def early_fail(self) -> None:
        """Drop a job whose creation failed after job_create (created -> null)."""
        assert self.status is JobStatus.CREATED
        self._do_dismiss()

    # ---- cancellation ---------------------------------------------------------------------------
    def cancel(self, force: bool) -> None:
        """job_cancel (no verb check): ask the job to stop; finalises it if it never started."""
        if self.status is JobStatus.CONCLUDED:
            self._do_dismiss()
            return
        self._cancel_async(force)
        if not self._started:
            self._completed()
        elif self.deferred_to_main_loop:
            # Soft cancels of finished jobs are ignored; a force-cancel aborts the txn now.
            if self.is_cancelled():
                assert self.txn is not None
                self.txn.completed_abort(self)
        else:
            self.enter()

    def _cancel_async(self, force: bool) -> None:
        force = self.driver_cancel(force)
        if self.user_paused:
            # The caller enters the job; the user pause is simply dropped.
            self.driver_user_resume()
            self.user_paused = False
            assert self.pause_count > 0
            self.pause_count -= 1
        if force or not self.deferred_to_main_loop:
            self.cancelled = True
            self.force_cancel |= force

    def cancel_sync(self, force: bool = True) -> int:
        """job_cancel_sync: cancel and wait until the job's work is over; returns its result."""
        if self.status is JobStatus.NULL:
            return self.ret
        return self.finish_sync(lambda: self.cancel(force))

    def finish_sync(self, finish: Callable[[], None] | None = None) -> int:
        """job_finish_sync: run `finish`, then keep entering the job until its work is over.

        Runs the job's pending job_exit inline instead of waiting for the event loop, so it
        also works while the loop is busy with the calling command or already closed.
        """
        if finish is not None:
            finish()
        for _ in range(_FINISH_SYNC_LIMIT):
            if self.is_completed():
                break
            if not self._started:
                # QEMU 7.2 spins forever here (a never-started, cancel-requested sibling in an
                # aborting txn); the emulator completes it as the cancel meant to.
                self._completed()
                continue
            self.enter()
            if self._exit_pending:
                self._run_exit_now()
        else:
            raise RuntimeError(f"job {self.id!r} did not finish")
        return -errno.ECANCELED if self.is_cancelled() and self.ret == 0 else self.ret

    # ---- completion and finalisation (used by JobTxn) ------------------------------------------
    def _update_rc(self) -> None:
        if not self.ret and self.is_cancelled():
            self.ret = -errno.ECANCELED
        if self.ret:
            if self.error is None:
                self.error = os.strerror(-self.ret)
            self._transition(JobStatus.ABORTING)

    def _completed(self) -> None:
        """job_completed: the work is over; join the txn's success or abort path."""
        assert self.txn is not None and not self.is_completed()
        self._update_rc()
        if self.ret:
            self.txn.completed_abort(self)
        else:
            self.txn.completed_success(self)

    def _prepare(self) -> int:
        if self.ret == 0:
            self.ret = self.prepare()
            self._update_rc()
        return self.ret

    def _transition_to_waiting(self) -> None:
        """job_completed_txn_success: the work ended well; wait for the rest of the txn."""
        self._transition(JobStatus.WAITING)

    def _transition_to_pending(self) -> int:
        self._transition(JobStatus.PENDING)
        if not self.auto_finalize:
            self.manager.events.pending(self)
        return 0

    def _finalize_single(self) -> int:
        """job_finalize_single: commit or abort, clean, report, conclude."""
        assert self.is_completed()
        self._update_rc()  # late transactional failures must still abort
        ret = self.ret
        if not ret:
            self.commit()
        else:
            self.abort()
        self.clean()
        if self.cb is not None:
            self.cb(self, ret)
        if self._started:  # jobs that never ran report nothing
            if self.is_cancelled():
                self.manager.events.cancelled(self)
            else:
                self.manager.events.completed(self)
        if self.txn is not None:
            self.txn.del_job(self)
        self._conclude()
        return 0

    def _conclude(self) -> None:
        self._transition(JobStatus.CONCLUDED)
        if self.auto_dismiss or not self._started:
            self._do_dismiss()

    def _do_dismiss(self) -> None:
        self.busy = False
        self.paused = False
        self.deferred_to_main_loop = True
        self._cancel_timer()
        if self.txn is not None:
            self.txn.del_job(self)
        self._transition(JobStatus.NULL)
        self.manager.unregister(self)
        self.driver_free()

    # ---- queries --------------------------------------------------------------------------------
    def job_info(self) -> dict[str, Any]:
        """QAPI JobInfo (query-jobs)."""
        info: dict[str, Any] = {
            "id": self.id,
            "type": self.job_type,
            "status": self.status.value,
            "current-progress": self.progress_current,
            "total-progress": self.progress_total,
        }
        if self.error is not None:
            info["error"] = self.error
        return info
