"""Named image recipes (fixtures/images.json) built with a target's own image tools.

A recipe gives a format, a virtual size and offline pattern writes; building it runs
``qemu-img create`` and one ``qemu-io -c 'write -P ...'`` per write, so the tool runs are part of
the case's log like any other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from conformance.imagetools import ImageTools

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"


@dataclass(frozen=True)
class ImageRecipe:
    """How to make one test image."""

    name: str
    format: str
    size: str
    writes: tuple[tuple[str, str, str], ...] = ()

    def build(self, tools: ImageTools, path: Path) -> Path:
        """Create the image at `path` and write its patterns; raises if a tool fails."""
        tools.create(path, self.format, self.size).check()
        if self.writes:
            commands = [f"write -P {pattern} {offset} {length}"
                        for pattern, offset, length in self.writes]
            tools.qemu_io(path, self.format, commands).check()
        return path


@cache
def _load(fixtures_dir: Path) -> dict[str, ImageRecipe]:
    raw = json.loads((fixtures_dir / "images.json").read_text(encoding="utf-8"))
    return {
        name: ImageRecipe(name, spec["format"], spec["size"],
                          tuple(tuple(write) for write in spec.get("writes", ())))
        for name, spec in raw.items() if not name.startswith("_")
    }


def recipe(name: str, fixtures_dir: Path = FIXTURES_DIR) -> ImageRecipe:
    """The recipe called `name` in fixtures/images.json."""
    recipes = _load(fixtures_dir)
    if name not in recipes:
        raise KeyError(f"no image recipe {name!r} in {fixtures_dir / 'images.json'}")
    return recipes[name]
