"""I/O throttling: throttle groups (QEMU's util/throttle.c leaky buckets) and the "throttle"
filter driver (block/throttle.c).

A group holds one leaky bucket per limit (bps-total/read/write, iops-total/read/write).  Before
a request the buckets leak for the time elapsed on the group's clock (QEMU_CLOCK_VIRTUAL: under
qtest it only moves when the qtest client steps it), then the request must wait until every
relevant bucket is below its size (throttle_compute_wait); once let through it is accounted.

The emulator's I/O is synchronous, so a wait is either slept (a running clock) or, when the
caller set an I/O deadline (copy-before-write's cbw-timeout) that the wait would pass, turned
into ETIMEDOUT at once: what QEMU's timed-out block_copy reports.  A frozen clock never lets a
throttled request through, so it always times out when a deadline is set.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from emulator import qerror
from emulator.error import QemuError

from .node import BlockNode, NodeOpener, block_driver
from .permissions import ROLE_FILTERED

NS = 1_000_000_000

#: ThrottleLimits members that set a bucket's average rate, by bucket.
_AVG_KEYS = {"bps-total": "bps-total", "bps-read": "bps-read", "bps-write": "bps-write",
             "iops-total": "iops-total", "iops-read": "iops-read", "iops-write": "iops-write"}

#: Realtime deadline (time.monotonic_ns) of the I/O now running, or None (no timeout).
IO_DEADLINE: contextvars.ContextVar[int | None] = contextvars.ContextVar("io_deadline",
                                                                       default=None)


#: Set while finishing work QEMU would finish in the background (a timed-out block-copy):
#: throttling then accounts the request without waiting.
IO_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("io_background",
                                                                     default=False)


@contextlib.contextmanager
def io_background() -> Iterator[None]:
    """Run the I/O of the block as background work nobody waits for (no throttling delay)."""
    token = IO_BACKGROUND.set(True)
    try:
        yield
    finally:
        IO_BACKGROUND.reset(token)


@contextlib.contextmanager
def io_deadline(timeout_ns: int) -> Iterator[None]:
    """Run the I/O of the block with a timeout (0: none), as qemu_co_timeout does."""
    token = IO_DEADLINE.set(time.monotonic_ns() + timeout_ns if timeout_ns else None)
    try:
        yield
    finally:
        IO_DEADLINE.reset(token)


@dataclass
class LeakyBucket:
    """One limit: average rate, burst rate/length, and the current fill levels."""

    avg: float = 0.0
    max: float = 0.0
    burst_length: int = 1
    level: float = 0.0
    burst_level: float = 0.0

    def leak(self, delta_ns: int) -> None:
        """throttle_leak_bucket."""
        leak = self.avg * delta_ns / NS
        self.level = max(self.level - leak, 0.0)
        if self.burst_length > 1:
            leak = self.max * delta_ns / NS
            self.burst_level = max(self.burst_level - leak, 0.0)

    def compute_wait(self) -> int:
        """throttle_compute_wait: ns until this bucket lets a request through."""
        if not self.avg:
            return 0
        if not self.max:
            bucket_size, burst_bucket_size = self.avg / 10, 0.0
        else:
            bucket_size, burst_bucket_size = self.max * self.burst_length, self.max / 10
        extra = self.level - bucket_size
        if extra > 0:
            return int(extra * NS / self.avg)
        if self.burst_length > 1:
            extra = self.burst_level - burst_bucket_size
            if extra > 0:
                return int(extra * NS / self.max)
        return 0


class ThrottleGroup:
    """A throttle-group object: shared limits for every throttle node that names it."""

    def __init__(self, name: str, limits: dict[str, Any], clock_ns: Callable[[], int],
                 frozen: Callable[[], bool] = lambda: False) -> None:
        self.name = name
        self.clock_ns = clock_ns
        self.frozen = frozen
        self.buckets: dict[str, LeakyBucket] = {}
        self.iops_size = int(limits.get("iops-size", 0))
        for key in _AVG_KEYS:
            bucket = LeakyBucket(avg=float(limits.get(key, 0)), max=float(limits.get(f"{key}-max", 0)),
                                 burst_length=int(limits.get(f"{key}-max-length", 1)))
            self.buckets[key] = bucket
        self._previous_leak = clock_ns()
        self.users = 0

    def _relevant(self, is_write: bool) -> list[tuple[str, LeakyBucket]]:
        kind = "write" if is_write else "read"
        return [(key, bucket) for key, bucket in self.buckets.items()
                if key.endswith(("-total", f"-{kind}"))]

    def _leak(self) -> None:
        """throttle_do_leak: every bucket loses what flowed out since the previous leak."""
        now = self.clock_ns()
        delta = now - self._previous_leak
        if delta <= 0:
            return
        self._previous_leak = now
        for bucket in self.buckets.values():
            bucket.leak(delta)

    def wait_ns(self, is_write: bool) -> int:
        """throttle_schedule_timer's wait for the next request of this direction."""
        self._leak()
        return max((bucket.compute_wait() for _, bucket in self._relevant(is_write)), default=0)

    def account(self, is_write: bool, size: int) -> None:
        """throttle_account: bytes into the bps buckets, requests into the iops ones."""
        units = size / self.iops_size if self.iops_size and size > self.iops_size else 1.0
        for key, bucket in self._relevant(is_write):
            amount = float(size) if key.startswith("bps") else units
            bucket.level += amount
            if bucket.burst_length > 1:
                bucket.burst_level += amount

    def admit(self, is_write: bool, size: int) -> None:
        """Let one request through: wait (sleep) while throttled, or time out (ETIMEDOUT)."""
        while True:
            wait = self.wait_ns(is_write)
            if wait <= 0 or IO_BACKGROUND.get():
                self.account(is_write, size)
                return
            deadline = IO_DEADLINE.get()
            if deadline is not None and (self.frozen() or
                                         time.monotonic_ns() + wait > deadline):
                # qemu_co_timeout gives up when the (realtime) timeout expires, not before.
                time.sleep(max(0, deadline - time.monotonic_ns()) / NS)
                raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
            if self.frozen():
                # Virtual time stands still and nobody will time this request out: QEMU would
                # wait for a qtest clock_step; the emulator lets it through (documented gap).
                self.account(is_write, size)
                return
            time.sleep(wait / NS)


@block_driver
class ThrottleNode(BlockNode):
    """Filter driver "throttle": requests pass to `file` once the group admits them."""

    driver = "throttle"
    is_filter = True
    strong_runtime_opts = ("throttle-group",)

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        group_name = options.get("throttle-group")
        group = graph.throttle_groups.get(group_name or "")
        if group is None:
            raise QemuError(f"Throttle group '{group_name}' does not exist")
        file = graph.open_child(options["file"], read_only=read_only)
        return graph.register_opened(cls(name, file, group, auto_named=auto_named), options)

    def __init__(self, node_name: str, file: BlockNode, group: ThrottleGroup, *,
                 auto_named: bool = False) -> None:
        super().__init__(node_name, read_only=file.read_only, auto_named=auto_named)
        self.group = group
        group.users += 1
        self.attach_child("file", file)

    def child_role(self, role: str) -> int:
        return ROLE_FILTERED

    @property
    def child(self) -> BlockNode:
        return self.children["file"]

    can_compress = True  # throttle forwards compressed writes

    def _length(self) -> int:
        return self.child.length()

    def _pread(self, offset: int, length: int) -> bytes:
        self.group.admit(False, length)
        return self.child.pread(offset, length)

    def _pwrite(self, offset: int, data: bytes) -> None:
        self.group.admit(True, len(data))
        self.child.pwrite(offset, data)

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self.group.admit(True, length)
        self.child.pwrite_zeroes(offset, length, may_unmap)

    def _pwrite_compressed(self, offset: int, data: bytes) -> None:
        self.group.admit(True, len(data))
        self.child.pwrite_compressed(offset, data)

    def _discard(self, offset: int, length: int) -> None:
        self.child.discard(offset, length)

    def _truncate(self, size: int) -> None:
        self.child.truncate(size)

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        return self.child.block_status(offset, length)

    def flush(self) -> None:
        self.child.flush()

    def close(self) -> None:
        self.group.users -= 1
        super().close()


def throttle_limits_check(limits: dict[str, Any]) -> None:
    """A few of throttle_is_valid's rules, with QEMU's texts."""
    for key, value in limits.items():
        if key != "iops-size" and isinstance(value, (int, float)) and value < 0:
            raise QemuError("bps/iops/max values must be within [0, 1000000000000000]")
    if limits.get("bps-total") and (limits.get("bps-read") or limits.get("bps-write")):
        raise QemuError(qerror.THROTTLE_BPS_CONFLICT)
    if limits.get("iops-total") and (limits.get("iops-read") or limits.get("iops-write")):
        raise QemuError(qerror.THROTTLE_BPS_CONFLICT)
