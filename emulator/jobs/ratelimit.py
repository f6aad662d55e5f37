"""RateLimit: QEMU's slice-based throttle (include/qemu/ratelimit.h), used for a job's `speed`.

Time is cut into slices (100 ms for block jobs).  Each slice allows `speed * slice` bytes;
work past the quota is allowed but pays for it with a delay that stretches the slice until
the excess is covered.  speed 0 disables throttling.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: BLOCK_JOB_SLICE_TIME: 100 ms.
BLOCK_JOB_SLICE_TIME_NS = 100_000_000


class RateLimit:
    """One throttle; `clock` returns nanoseconds (QEMU_CLOCK_REALTIME), injectable for tests."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock = clock
        self.slice_start_time = 0
        self.slice_end_time = 0
        self.slice_quota = 0
        self.slice_ns = 0
        self.dispatched = 0

    def set_speed(self, speed: int, slice_ns: int = BLOCK_JOB_SLICE_TIME_NS) -> None:
        """ratelimit_set_speed: `speed` bytes per second; 0 disables the limit."""
        self.slice_ns = slice_ns
        if speed == 0:
            self.slice_quota = 0
        else:
            self.slice_quota = max(int(speed * slice_ns / 1_000_000_000), 1)

    def calculate_delay(self, n: int) -> int:
        """ratelimit_calculate_delay: account `n` bytes; return how many ns to wait (0 = go on)."""
        if not self.slice_quota:
            return 0
        now = self.clock()
        if self.slice_end_time < now:
            # The previous (possibly extended) slice is over: start a new one.
            self.slice_start_time = now
            self.slice_end_time = now + self.slice_ns
            self.dispatched = 0
        self.dispatched += n
        if self.dispatched < self.slice_quota:
            return 0
        # Quota used up or exceeded: stretch the slice to cover the excess and wait for its end.
        delay_slices = self.dispatched / self.slice_quota
        self.slice_end_time = self.slice_start_time + int(delay_slices * self.slice_ns)
        return self.slice_end_time - now
