"""Background jobs (QEMU's job.c / blockjob.c): the state machine, JobTxn grouped completion,
block jobs with speed and error policy, and the per-emulator job list."""

from .blockjob import BLOCK_OP_TYPES, BlockJob
from .job import (
    TRANSITIONS,
    VERBS,
    Job,
    JobEventSink,
    JobStatus,
    JobVerb,
    NullJobEventSink,
    transition_allowed,
    verb_allowed,
)
from .manager import JobManager
from .ratelimit import BLOCK_JOB_SLICE_TIME_NS, RateLimit
from .txn import JobTxn

__all__ = [
    "BLOCK_JOB_SLICE_TIME_NS", "BLOCK_OP_TYPES", "TRANSITIONS", "VERBS", "BlockJob", "Job",
    "JobEventSink", "JobManager", "JobStatus", "JobTxn", "JobVerb", "NullJobEventSink",
    "RateLimit", "transition_allowed", "verb_allowed",
]
