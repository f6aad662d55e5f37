"""QEMU_CLOCK_VIRTUAL for a machine without a guest.

Under the qtest accelerator the virtual clock stands still until the qtest client moves it
(`clock_step`, `clock_set`), so timers on it (throttle groups under qtest) fire only then; without
qtest it follows the host's monotonic clock.  Job rate limits use QEMU_CLOCK_REALTIME and never
come here.  Timers are kept in deadline order and run by warp() on the thread that moves the clock.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

Callback = Callable[[], None]


class VirtualClock:
    """Nanoseconds since machine start, frozen under qtest; timers fire when it passes them."""

    def __init__(self, qtest: bool = False) -> None:
        self.qtest = qtest
        self._base = time.monotonic_ns()
        self._ns = 0
        self._timers: list[tuple[int, int, Callback]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        """qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)."""
        if self.qtest:
            return self._ns
        return time.monotonic_ns() - self._base

    def add_timer(self, deadline_ns: int, callback: Callback) -> None:
        """Run `callback` once the clock reaches `deadline_ns` (under qtest: at the next warp)."""
        with self._lock:
            heapq.heappush(self._timers, (deadline_ns, next(self._seq), callback))

    def deadline_ns(self) -> int:
        """Nanoseconds until the next timer, or -1 if none (qemu_clock_deadline_ns_all)."""
        with self._lock:
            if not self._timers:
                return -1
            return max(0, self._timers[0][0] - self.now_ns())

    def warp(self, target_ns: int) -> int:
        """qtest_clock_warp: move to `target_ns`, running each timer due on the way; the new time."""
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > target_ns:
                    break
                deadline, _, callback = heapq.heappop(self._timers)
                if self.qtest:
                    self._ns = max(self._ns, deadline)
            callback()
        if self.qtest:
            self._ns = max(self._ns, target_ns)
        return self.now_ns()

