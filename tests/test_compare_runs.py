"""`img compare` remembers the last block-status run of each image; it must say exactly what it
says when it asks the images again at every chunk."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from emulator.tools import img as img_tool
from emulator.tools import io as io_tool


class _Unremembered(img_tool._StatusRuns):
    def __call__(self, offset: int, length: int) -> tuple[int, int]:
        return self.image.status_above(offset, length)


def _compare(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = img_tool.main(["compare", *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _write(path: Path, rng: random.Random, count: int, size: int) -> None:
    commands = []
    for _ in range(count):
        length = rng.choice([512, 4096, 65536, 1 << 20, 3 << 20])
        offset = rng.randrange(0, size - length) // 512 * 512
        verb = rng.choice(["write -P 0x11", "write -P 0x22", "write -z", "discard"])
        commands += ["-c", f"{verb} {offset} {length}"]
    assert io_tool.main(["-f", "qcow2", *commands, str(path)], out=io.StringIO(), err=io.StringIO()) == 0


@pytest.mark.parametrize("seed", range(12))
def test_remembered_runs_give_the_same_verdict(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    size = 16 << 20
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    for path in (a, b):
        assert img_tool.main(["create", "-f", "qcow2", str(path), str(size)], out=io.StringIO(),
                             err=io.StringIO()) == 0
    _write(a, random.Random(seed * 7), rng.randrange(0, 20), size)
    _write(b, random.Random(seed * 7 if rng.random() < 0.5 else seed * 11), rng.randrange(0, 20), size)
    for strict in ([], ["-s"]):
        args = [*strict, "-f", "qcow2", "-F", "qcow2", str(a), str(b)]
        remembered = _compare(args)
        monkeypatch.setattr(img_tool, "_StatusRuns", _Unremembered)
        assert _compare(args) == remembered
        monkeypatch.undo()
