"""Turn a divergence found by the differential fuzzer into a ready-to-commit conformance case.

The case replays the scenario's steps with the waits the reference (real QEMU) needed, then
quits.  When an image's contents differed, the case also rebuilds the reference's contents of
that image as a fresh image (one ``write -P`` per run of equal bytes, read from QEMU's copy)
and compares the image with it, so that the golden (recorded from QEMU) says
"Images are identical." where the emulator's run will not.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

from conformance.differential.runner import DifferentialRun, Divergence
from conformance.differential.steps import IMAGE_BYTES, render_steps

RECORD_COMMAND = "./blocktxn record-golden -k {name}"
MAX_RUNS = 64


def case_name(divergence: Divergence, steps_source: str) -> str:
    """``test_divergence_<kind>_<hash>``: stable for the same minimal scenario."""
    digest = hashlib.sha1(steps_source.encode()).hexdigest()[:8]
    kind = re.sub(r"[^a-z0-9]+", "_", divergence.kind.lower()).strip("_")
    return f"test_divergence_{kind}_{digest}"


def content_runs(qemu_img: str, image: Path) -> list[tuple[int, int, int]]:
    """(offset, length, byte) for every run of equal nonzero bytes of the image's guest view."""
    with tempfile.TemporaryDirectory(prefix="btxraw") as scratch:
        raw = Path(scratch) / "image.raw"
        subprocess.run([qemu_img, "convert", "-U", "-O", "raw", str(image), str(raw)], check=True,
                       capture_output=True, timeout=60)
        data = raw.read_bytes()
    runs: list[tuple[int, int, int]] = []
    start = 0
    while start < len(data):
        value = data[start]
        end = start + 1
        while end < len(data) and data[end] == value:
            end += 1
        if value:
            runs.append((start, end - start, value))
        start = end
    return runs


def _image_epilogue(run: DifferentialRun, qemu_img: str) -> tuple[list[str], list[str]]:
    """Case lines rebuilding the reference's contents of every differing image, and notes for
    images whose contents are too fragmented to rebuild."""
    lines: list[str] = []
    notes: list[str] = []
    for name in run.existence_differs:
        lines += [f"# {name} exists on one target only.",
                  f"vm.tools.info(vm.path({name!r}), 'qcow2')"]
    for name in run.differing_images:
        runs = content_runs(qemu_img, run.reference.vm.path(name))
        if len(runs) > MAX_RUNS:
            notes.append(f"{name}: {len(runs)} runs of equal bytes, too many to rebuild here")
            continue
        reference = name.replace(".qcow2", ".expected.qcow2")
        writes = [f"write -P {value:#04x} {offset} {length}" for offset, length, value in runs]
        lines += [
            f"# What real QEMU left in {name}, rebuilt byte run by byte run.",
            f"vm.tools.create(vm.path({reference!r}), 'qcow2', '{IMAGE_BYTES}').check()",
        ]
        if writes:
            lines.append(f"vm.tools.qemu_io(vm.path({reference!r}), 'qcow2', {writes!r}).check()")
        lines.append(f"vm.tools.compare(vm.path({name!r}), vm.path({reference!r}), 'qcow2')")
    return lines, notes


def render_case(divergence: Divergence, run: DifferentialRun, qemu_img: str,
                name: str | None = None, summary_text: str = "") -> tuple[str, str]:
    """(name, source of conformance/cases/<name>.py) for a divergence of `run`; `name` and a
    human summary (first in the docstring) may be given when a person curates the case."""
    body = render_steps(run.steps, run.waits)
    if run.shut_down:
        body.append("await vm.shutdown()")
        epilogue, notes = _image_epilogue(run, qemu_img)
        body += epilogue
    else:
        notes = []
    name = name or case_name(divergence, "\n".join(body))
    summary = divergence.detail.strip().splitlines()
    shown = "\n".join(f"    {line}" for line in summary[:40]).replace('"""', "'''")
    note_text = "".join(f"\n    Note: {note}" for note in notes)
    indented = "\n".join(f"    {line}" if line else "" for line in body)
    helpers = ["launch_scenario"] + [helper for helper in ("wait_first_chunk", "wait_statuses")
                                     if any(line.startswith(f"await {helper}(") for line in body)]
    imports = "".join(f"    {helper},\n" for helper in helpers)
    reference = run.reference.target.describe() or "real QEMU"
    source = f'''r"""{summary_text}Found by the differential fuzzer (``blocktxn fuzz``): {reference} and the emulator
diverged ({divergence.kind}) at step {divergence.step_index} of this scenario.

What differed when it was found (reference = real QEMU, candidate = emulator):

{shown}
{note_text}
Record the golden from real QEMU with ``{RECORD_COMMAND.format(name=name)}``.
"""

from __future__ import annotations

from conformance.differential.steps import (
{imports})
from conformance.vm import VM


async def {name}(vm: VM) -> None:
    """Replays the minimal scenario on the drives of conformance.differential.steps."""
    await launch_scenario(vm)
{indented}
'''
    return name, source
