"""What the differential fuzzer knows about a scenario: bitmaps, jobs, targets, blkdebug.

The model is not a second emulator.  It is updated from the *reference* target's replies (real
QEMU is the truth) and is used for two things only:

* generating steps that are deterministic on real QEMU and avoid its known crashes and hangs
  (grouped rollback of two backups, a failing ``block-dirty-bitmap-enable`` action, an empty
  merge list), and
* deciding when a target has *settled* after a step (`at_rest`): every job is in a state it
  cannot leave without a command.  Comparing the two targets only at such points is what makes
  the comparison independent of timing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Names a step may use for a drive's root node, and the node each one means.
NODE_OF = {"drive0": "node0", "node0": "node0", "drive1": "drive1"}

ENDED = "null"


@dataclass
class BitmapState:
    """A named dirty bitmap the reference reported as created."""

    node: str
    name: str
    enabled: bool = True


@dataclass
class JobState:
    """A backup job the reference accepted, with what the commands so far asked of it."""

    id: str
    node: str
    txn: int
    target: str
    speed: int = 0
    sync: str = "full"
    bitmap: str | None = None
    auto_finalize: bool = True
    auto_dismiss: bool = True
    #: job-pause (or block-job-pause) succeeded and no resume since.
    user_paused: bool = False
    #: a cancel, finalize or dismiss was accepted: it now only rests once ended.
    expect_end: bool = False


@dataclass
class Model:
    """The scenario as the reference reported it."""

    bitmaps: dict[tuple[str, str], BitmapState] = field(default_factory=dict)
    jobs: dict[str, JobState] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    next_job: int = 0
    next_target: int = 0
    next_txn: int = 0
    #: drive1 was flushed (blkdebug in state 2) and no EIO was seen since: a read may fail.
    blkdebug_armed: bool = False
    #: the reference's last status per job, refreshed after every settle.
    statuses: dict[str, str] = field(default_factory=dict)
    #: the reference's held jobs (speed-limited, with work left), from wait_first_chunk.
    held: dict[str, bool] = field(default_factory=dict)
    #: jobs stopped by on-source-error=stop (paused until resumed).
    error_stopped: set[str] = field(default_factory=set)
    #: Known divergences not to generate again (names in conformance.differential.gen.AVOIDABLE).
    avoid: frozenset[str] = frozenset()

    # ---- names ------------------------------------------------------------------------------
    def new_job_id(self) -> str:
        self.next_job += 1
        return f"j{self.next_job}"

    def new_target(self) -> str:
        self.next_target += 1
        return f"t{self.next_target}.qcow2"

    def note_target(self, name: str) -> None:
        """A backup named this target file (whether or not it was accepted)."""
        if name not in self.targets:
            self.targets.append(name)

    def new_txn(self) -> int:
        self.next_txn += 1
        return self.next_txn

    # ---- queries ----------------------------------------------------------------------------
    def status(self, job_id: str) -> str:
        return self.statuses.get(job_id, "created")

    def live_jobs(self) -> list[JobState]:
        """Jobs that still exist in the reference (status not null), in creation order."""
        return [job for job in self.jobs.values() if self.status(job.id) != ENDED]

    def busy_bitmaps(self) -> set[tuple[str, str]]:
        """Bitmaps a live job holds (busy until the job is finalized)."""
        return {(job.node, job.bitmap) for job in self.live_jobs()
                if job.bitmap is not None and self.status(job.id) not in ("concluded", ENDED)}

    def bitmap(self, node_name: str, name: str) -> BitmapState | None:
        node = NODE_OF.get(node_name)
        return self.bitmaps.get((node, name)) if node else None

    def node_has_job(self, node: str) -> bool:
        """A live, unfinalized job uses the node (a second backup of it is refused)."""
        return any(job.node == node and self.status(job.id) not in ("concluded", ENDED)
                   for job in self.live_jobs())

    def partners(self, job: JobState) -> list[JobState]:
        return [other for other in self.jobs.values() if other.txn == job.txn and other.id != job.id]

    def progress_is_timing_free(self) -> bool:
        """Job progress is deterministic unless a job stopped on an error (how far its parallel
        copy tasks got before the failure depends on timing)."""
        return not any(self.status(job_id) != ENDED for job_id in self.error_stopped)

    # ---- settling ---------------------------------------------------------------------------
    def at_rest(self, job: JobState, statuses: Mapping[str, str], held: Mapping[str, bool],
                error_stopped: set[str]) -> bool:
        """True when `job` (as one target reports it) cannot change state without a command."""
        status = statuses.get(job.id)
        if status == ENDED:
            return True
        if status == "concluded":
            return not job.auto_dismiss
        if job.expect_end or status is None:
            return False
        if status == "pending":
            members = [job, *self.partners(job)]
            return any(not member.auto_finalize and statuses.get(member.id) != ENDED
                       for member in members)
        if status == "waiting":
            return any(statuses.get(other.id) in ("running", "paused")
                       for other in self.partners(job))
        if status == "paused":
            return job.user_paused or job.id in error_stopped
        if status == "running":
            return bool(held.get(job.id)) and not job.user_paused
        return False  # created, aborting: always on the way somewhere

    # ---- effects of accepted commands (reference replies) -----------------------------------
    def add_job(self, arguments: Mapping[str, Any], txn: int) -> JobState:
        device = str(arguments["device"])
        job = JobState(
            id=str(arguments["job-id"]), node=NODE_OF[device], txn=txn,
            target=getattr(arguments["target"], "name", str(arguments["target"])),
            speed=int(arguments.get("speed", 0)),
            sync=str(arguments.get("sync")),
            bitmap=arguments.get("bitmap"),
            auto_finalize=bool(arguments.get("auto-finalize", True)),
            auto_dismiss=bool(arguments.get("auto-dismiss", True)),
        )
        self.jobs[job.id] = job
        self.statuses[job.id] = "created"
        return job

    def apply_bitmap_action(self, kind: str, data: Mapping[str, Any]) -> None:
        """The structural effect of an accepted block-dirty-bitmap-* command or action."""
        node = NODE_OF.get(str(data.get("node")))
        if node is None:
            return
        name = str(data.get("name", data.get("target", "")))
        if kind == "block-dirty-bitmap-add":
            self.bitmaps[(node, name)] = BitmapState(node, name, enabled=not data.get("disabled", False))
        elif kind == "block-dirty-bitmap-remove":
            self.bitmaps.pop((node, name), None)
        elif kind in ("block-dirty-bitmap-enable", "block-dirty-bitmap-disable"):
            bitmap = self.bitmaps.get((node, name))
            if bitmap is not None:
                bitmap.enabled = kind.endswith("enable")

    def apply_transaction(self, actions: Sequence[Mapping[str, Any]], grouped: bool) -> list[str]:
        """An accepted transaction: every action took effect.  Returns the new job ids."""
        shared = self.new_txn() if grouped else None
        started = []
        for action in actions:
            kind, data = str(action["type"]), action.get("data") or {}
            if kind == "drive-backup":
                started.append(self.add_job(data, shared if shared is not None else self.new_txn()).id)
            elif kind.startswith("block-dirty-bitmap-"):
                self.apply_bitmap_action(kind, data)
        return started

    def apply_job_verb(self, command: str, arguments: Mapping[str, Any]) -> None:
        """An accepted job command: record what the job now has to do before it rests."""
        job = self.jobs.get(str(arguments.get("id", arguments.get("device"))))
        if job is None:
            return
        if command in ("job-cancel", "block-job-cancel"):
            affected = [job] + (self.partners(job) if self._grouped(job) else [])
            for member in affected:
                member.expect_end = True
                member.user_paused = False
        elif command in ("job-pause", "block-job-pause"):
            job.user_paused = True
        elif command in ("job-resume", "block-job-resume"):
            job.user_paused = False
            self.error_stopped.discard(job.id)
        elif command == "block-job-set-speed":
            job.speed = int(arguments.get("speed", 0))
            if job.speed == 0 and job.sync != "none":
                self.held[job.id] = False
        elif command == "job-finalize":
            for member in [job, *self.partners(job)]:
                if self.status(member.id) == "pending":
                    member.expect_end = True
        elif command == "job-dismiss":
            job.expect_end = True

    def _grouped(self, job: JobState) -> bool:
        return bool(self.partners(job))
