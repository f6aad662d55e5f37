"""Named image recipes (fixtures/images.json) built with a target's own image tools.

A recipe gives a format, a virtual size and offline pattern writes; building it runs
``qemu-img create`` and one ``qemu-io -c 'write -P ...'`` per write, so the tool runs are part of
the case's log like any other.

The emulator's tools are deterministic, so on the emulator target a recipe is built once per
process (RecipeCache) and copied, holes kept, into each case that asks for it; the case's log
still gets the tool runs, as they ran for the first copy with the case's own path in them.
Real QEMU's tools run for every case: they are what the goldens come from.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from conformance.imagetools import ImageTools, ToolResult

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
        if tools.deterministic:
            return RECIPE_CACHE.copy(self, tools, Path(path))
        return self.run_tools(tools, path)

    def run_tools(self, tools: ImageTools, path: Path) -> Path:
        """Run the recipe's qemu-img and qemu-io commands on `path`."""
        tools.create(path, self.format, self.size).check()
        if self.writes:
            commands = [f"write -P {pattern} {offset} {length}"
                        for pattern, offset, length in self.writes]
            tools.qemu_io(path, self.format, commands).check()
        return path


def copy_sparse(source: Path, destination: Path) -> None:
    """Copy a file's data extents (SEEK_DATA/SEEK_HOLE, copied in the kernel) and keep its holes,
    so that block status of a copied raw image says what it said of the original."""
    with open(source, "rb") as src, open(destination, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as error:
                if error.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            position = start
            while position < end:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), end - position, position, position)
                if copied == 0:
                    raise OSError(f"copy_file_range copied nothing at {position} of {source}")
                position += copied
            offset = end
        os.ftruncate(dst.fileno(), size)


class RecipeCache:
    """Recipes built once per process and tools version; each build is copied per case."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the two sides of a differential pair build at once
        self._directory: Path | None = None
        self._built: dict[tuple[str, str | None, ImageRecipe], tuple[Path, list[ToolResult]]] = {}

    def _scratch(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="btxrecipes"))
            atexit.register(shutil.rmtree, self._directory, True)
        return self._directory

    def copy(self, recipe: ImageRecipe, tools: ImageTools, path: Path) -> Path:
        """`recipe` at `path`, and its tool runs told to `tools.observer` with `path` in them."""
        key = (type(tools).__name__, tools.version, recipe)
        with self._lock:
            if key not in self._built:
                built = self._scratch() / f"{len(self._built)}-{recipe.name}.{recipe.format}"
                results: list[ToolResult] = []
                observer, tools.observer = tools.observer, results.append
                try:
                    recipe.run_tools(tools, built)
                finally:
                    tools.observer = observer
                self._built[key] = (built, results)
            built, results = self._built[key]
        copy_sparse(built, path)
        if tools.observer is not None:
            for result in results:
                tools.observer(result.moved(str(built), str(path)))
        return path


RECIPE_CACHE = RecipeCache()


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
