"""Recipes are built once per process on the emulator target and copied: each copy must be the
image the tools would have made at that path, and the case's log must show the same tool runs."""

from __future__ import annotations

import os
from pathlib import Path

from conformance.imagetools import EmulatorImageTools, ToolResult
from conformance.recipes import ImageRecipe, RecipeCache, copy_sparse


def _runs(tools: EmulatorImageTools, build: object) -> list[ToolResult]:
    """The tool runs `build` logs, without qemu-io's timing lines (they vary run to run)."""
    seen: list[ToolResult] = []
    tools.observer = seen.append
    build()  # type: ignore[operator]
    return [ToolResult(r.program, r.args, r.returncode,
                       "".join(line for line in r.stdout.splitlines(True) if "ops/sec" not in line),
                       r.stderr) for r in seen]


def test_a_copied_recipe_is_what_the_tools_make_and_logs_the_same_runs(tmp_path: Path) -> None:
    recipe = ImageRecipe("r", "qcow2", "4M", (("0x11", "0", "64k"), ("0x22", "1M", "4k")))
    tools = EmulatorImageTools(cwd=tmp_path, version="7.2")
    cache = RecipeCache()
    direct = _runs(tools, lambda: recipe.run_tools(tools, tmp_path / "direct.qcow2"))
    for name in ("first.qcow2", "second.qcow2"):
        copied = _runs(tools, lambda name=name: cache.copy(recipe, tools, tmp_path / name))
        assert [r.moved(name, "direct.qcow2") for r in copied] == direct
        assert (tmp_path / name).read_bytes() == (tmp_path / "direct.qcow2").read_bytes()
    assert len(direct) == 2 and "first" not in repr(direct)


def test_copy_sparse_keeps_holes(tmp_path: Path) -> None:
    source, copy = tmp_path / "s.raw", tmp_path / "c.raw"
    with open(source, "wb") as out:
        out.truncate(8 << 20)
        out.seek(4 << 20)
        out.write(b"x" * 4096)
    copy_sparse(source, copy)
    assert copy.read_bytes() == source.read_bytes()
    assert os.stat(copy).st_blocks * 512 < (1 << 20)  # the 8 MiB file is not filled in
