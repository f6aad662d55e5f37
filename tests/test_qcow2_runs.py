"""qcow2 mapping reads a run of one repeated L2 entry at once: the runs it reports must be those
the entry-by-entry walk reports."""

from __future__ import annotations

import random
from array import array

import pytest

from emulator.block import qcow2
from emulator.block.qcow2 import _same_entries_end


def test_same_entries_end_is_the_linear_scan() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        n = rng.randrange(1, 300)
        table = array("Q", [rng.choice([0, 0, 0, 1, 1, 5 << 16]) for _ in range(n)])
        i = rng.randrange(n)
        limit = rng.randrange(i + 1, n + 1)
        expected = next((j for j in range(i + 1, limit) if table[j] != table[i]), limit)
        assert _same_entries_end(table.tobytes(), i, limit, table.itemsize) == expected


@pytest.mark.parametrize("seed", range(40))
def test_extents_are_those_of_the_entry_by_entry_walk(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    cs, bits = 65536, 16
    image = qcow2.Qcow2Image.__new__(qcow2.Qcow2Image)
    image.cluster_size, image.cluster_bits, image.l2_entries = cs, bits, 64
    image.size = 64 * 64 * cs
    tables = {}
    host = 1 << 30
    for l1 in range(64):
        if rng.random() < 0.3:
            continue
        entries = []
        for _ in range(64):
            kind = rng.choice(["unalloc"] * 4 + ["zero"] * 3 + ["normal"] * 2 + ["zero_alloc"])
            if kind == "unalloc":
                entries.append(0)
            elif kind == "zero":
                entries.append(qcow2.QCOW_OFLAG_ZERO)
            else:
                host += cs * rng.choice([1, 1, 2])
                entries.append(host | (qcow2.QCOW_OFLAG_ZERO if kind == "zero_alloc" else 0))
        tables[l1] = array("Q", entries)
    monkeypatch.setattr(image, "_l2_table", tables.get, raising=False)
    for _ in range(30):
        offset = rng.randrange(0, image.size)
        length = rng.randrange(1, image.size - offset + 1)
        fast = list(image._extents(offset, length))
        monkeypatch.setattr(qcow2, "_same_entries_end", lambda raw, i, limit, size: i + 1)
        slow = list(image._extents(offset, length))
        monkeypatch.undo()
        monkeypatch.setattr(image, "_l2_table", tables.get, raising=False)
        assert fast == slow
