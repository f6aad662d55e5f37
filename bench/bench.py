"""``blocktxn bench``: every benchmark of bench/, emulator and real QEMU side by side, in one table.

Measures (medians of --runs runs, the two sides interleaved so that a change of load on a shared
machine hits both alike):

- the conformance suite (bench_suite), serially and with ``-n auto``: the whole pytest process
  (wall), the sum of the cases' own times, and CPU time, each apart;
- full backup of a 1 GiB qcow2, half allocated, and incremental backup with 1 % dirty
  (bench_backup);
- differential fuzzing (bench_differential): scenarios per minute of the emulator's own time,
  and of QEMU's, apart;
- scale: suite time against the number of cases, backup time against the image size (sparse, up
  to 64 GiB), dirty-bitmap operations against the image size for the same dirty data
  (bench_bitmaps).

It prints the machine (CPU, count, kernel, Python, QEMU versions, load) and the table, and writes
OUT/bench.json, OUT/bench.svg (speed-ups against the goals, and the scale curves) and
OUT/report.html.  ``--quick`` runs everything small and once (a check that the bench works, not
a measurement).  Performance is never asserted: the goals are printed beside the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for folder in (ROOT, BENCH_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import bench_backup
import bench_bitmaps
import bench_differential
import bench_suite

from blocktxn_cli.main import CASES_DIR, discover_qemus
from conformance.targets import QemuBinaries

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_OUT = ROOT / "bench-out"


@dataclass(frozen=True)
class Sizes:
    """How big and how often: the full bench, or --quick."""

    runs: int
    suite_k: str | None
    backup: int
    sparse: tuple[int, ...]
    fuzz_seconds: float
    bitmap_writes: tuple[int, ...]
    bitmap_sizes: tuple[int, ...]
    workers: str

    @classmethod
    def choose(cls, quick: bool, runs: int | None) -> Sizes:
        if quick:
            return cls(runs or 1, "test_qmp_basics or test_bitmaps_basic", 64 * MiB,
                       (64 * MiB, 256 * MiB), 4.0, (200, 800), (GiB, 64 * GiB), "2")
        return cls(runs or 3, None, GiB, (GiB, 4 * GiB, 16 * GiB, 64 * GiB), 60.0, (1000, 10000),
                   (GiB, 64 * GiB, 1 << 40), "auto")


@dataclass
class Row:
    """One line of the table: a measure on both sides, their ratio and its goal."""

    name: str
    unit: str
    emulator: float | None
    qemu: float | None
    #: "lower" (times) or "higher" (throughputs, rates) is better.
    better: str
    goal: float | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """How many times better the emulator is (QEMU time / emulator time, or the reverse)."""
        if not self.emulator or not self.qemu:
            return None
        return self.qemu / self.emulator if self.better == "lower" else self.emulator / self.qemu

    @property
    def verdict(self) -> str:
        if self.goal is None or self.ratio is None:
            return ""
        return "meets" if self.ratio >= self.goal else "below"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "emulator": self.emulator, "qemu": self.qemu,
                "better": self.better, "ratio": self.ratio, "goal": self.goal, "verdict": self.verdict,
                "note": self.note, "samples": self.samples}


def describe_machine(qemus: Sequence[QemuBinaries]) -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "qemu": [f"{b.version} ({b.system})" for b in qemus],
        "load_average_at_start": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# ---- the measures -----------------------------------------------------------------------------

def measure_suite(sizes: Sizes, qemus: list[str]) -> tuple[list[Row], dict[str, Any]]:
    """Suite rows (serial and -n), and the raw runs."""
    extra = ["-k", sizes.suite_k] if sizes.suite_k else []
    sides = ["emulator", "qemu"] if qemus else ["emulator"]
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for mode, workers in (("serial", None), (f"-n {sizes.workers}", sizes.workers)):
        runs: dict[str, list[bench_suite.SuiteRun]] = {side: [] for side in sides}
        for index in range(sizes.runs):
            for side in sides:
                _progress(f"suite {mode}, {side}, run {index + 1} of {sizes.runs}")
                runs[side].append(bench_suite.run_suite(side, qemus, extra, workers=workers))
        raw[mode] = {side: [run.to_json() for run in side_runs] for side, side_runs in runs.items()}

        def pick(side: str, attribute: str, runs: dict[str, list[bench_suite.SuiteRun]] = runs) -> list[float]:
            return [getattr(run, attribute) for run in runs.get(side, [])]

        count = runs["emulator"][0].count
        qcount = runs["qemu"][0].count if "qemu" in runs else None
        note = f"{count} cases" + (f" ({qcount} on QEMU)" if qcount not in (None, count) else "")
        for attribute, label, goal in (("wall", "whole pytest process", 10.0),
                                       ("cases", "sum of per-case times", 10.0),
                                       ("cpu", "CPU time, pytest and children", None)):
            rows.append(Row(f"suite {mode}: {label}", "s", _median(pick("emulator", attribute)),
                            _median(pick("qemu", attribute)) if qemus else None, "lower", goal, note,
                            {side: pick(side, attribute) for side in sides}))
        if mode == "serial":
            per_case = [run.cases / max(run.count, 1) * 1000 for run in runs["emulator"]]
            qper_case = [run.cases / max(run.count, 1) * 1000 for run in runs.get("qemu", [])]
            rows.append(Row("suite serial: per case", "ms", _median(per_case),
                            _median(qper_case) if qper_case else None, "lower", None, note,
                            {"emulator": per_case, "qemu": qper_case}))
    return rows, raw


def measure_backup(sizes: Sizes, qemu: QemuBinaries | None) -> tuple[list[Row], dict[str, Any]]:
    sides = ["emulator", "qemu"] if qemu else ["emulator"]
    work = Path(tempfile.mkdtemp(prefix="btxbench"))
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    try:
        image = work / "half.qcow2"
        written = bench_backup.make_image(image, sizes.backup)
        label = f"{sizes.backup // MiB} MiB" if sizes.backup < GiB else f"{sizes.backup // GiB} GiB"
        for mode, name, goal in (("full", f"full backup, {label} half allocated", 1.0),
                                 ("incremental", f"incremental backup, {label}, 1% dirty", 1.0)):
            times: dict[str, list[float]] = {side: [] for side in sides}
            for index in range(sizes.runs):
                for side in sides:
                    _progress(f"{mode} backup, {side}, run {index + 1} of {sizes.runs}")
                    times[side].append(bench_backup.backup(side, qemu, work, image, sizes.backup,
                                                           mode=mode).seconds)
            raw[mode] = times
            if mode == "full":
                rates = {side: [sizes.backup / MiB / t for t in values] for side, values in times.items()}
                rows.append(Row(name, "MiB/s", _median(rates["emulator"]),
                                _median(rates["qemu"]) if qemu else None, "higher", goal,
                                f"virtual size / time; {written // MiB} MiB of data", rates))
            else:
                rows.append(Row(name, "s", _median(times["emulator"]),
                                _median(times["qemu"]) if qemu else None, "lower", goal,
                                "time from drive-backup to BLOCK_JOB_COMPLETED", times))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, raw


def measure_differential(sizes: Sizes, qemu: QemuBinaries | None) -> tuple[list[Row], dict[str, Any]]:
    if qemu is None:
        return [Row("differential: scenarios per minute", "/min", None, None, "higher", None,
                    "needs real QEMU")], {}
    _progress(f"differential fuzzing, {sizes.fuzz_seconds:.0f} s")
    result = bench_differential.measure(sizes.fuzz_seconds, qemu=str(qemu.system))
    if result is None:
        return [], {}
    rows = [
        Row("differential: each side's own time", "scenarios/min", result["emulator_per_min"],
            result["qemu_per_min"], "higher", None,
            "goal: emulator >= 1000/min; QEMU's start-up is its own cost"),
        Row("differential: the pair (wall time)", "scenarios/min", result["pair_per_min"], None,
            "higher", None, f"{result['scenarios']} scenarios, images compared with real qemu-img"),
    ]
    return rows, result


def measure_scale(sizes: Sizes, qemus: list[str], qemu: QemuBinaries | None) -> dict[str, Any]:
    """How costs grow: suite vs cases, backup vs image size, bitmap operations vs image size."""
    scale: dict[str, Any] = {}
    files = sorted(CASES_DIR.glob("test_*.py"))
    if sizes.suite_k:
        files = files[:2]
    points = sorted({max(1, len(files) * share // 4) for share in (1, 2, 4)})
    suite_points = []
    for count in points:
        for side in (["emulator", "qemu"] if qemus else ["emulator"]):
            _progress(f"scale: suite of {count} case files, {side}")
            run = bench_suite.run_suite(side, qemus, [], paths=files[:count])
            suite_points.append({"files": count, "side": side, **run.to_json()})
    scale["suite_vs_cases"] = suite_points
    work = Path(tempfile.mkdtemp(prefix="btxbench"))
    backup_points = []
    try:
        for size in sizes.sparse:
            image = work / "sparse.qcow2"
            data = bench_backup.make_sparse_image(image, size)
            for side in (["emulator", "qemu"] if qemu else ["emulator"]):
                _progress(f"scale: full backup of a sparse {size // MiB} MiB image, {side}")
                seconds = _median([bench_backup.backup(side, qemu, work, image, size).seconds
                                   for _ in range(min(sizes.runs, 3))])
                backup_points.append({"size": size, "data": data, "side": side, "seconds": seconds})
            image.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scale["backup_vs_size"] = backup_points
    bitmap_points = []
    for writes in sizes.bitmap_writes:
        for size in sizes.bitmap_sizes:
            _progress(f"scale: bitmap operations, {writes} writes, {size // GiB} GiB")
            bitmap_points.append({"writes": writes, "size": size,
                                  "us": bench_bitmaps.bench(size, 65536, writes)})
    scale["bitmaps_vs_size"] = bitmap_points
    return scale


# ---- output -----------------------------------------------------------------------------------

def _fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit in ("s",):
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:,.0f} {unit}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table."""
    header = ("measure", "emulator", "QEMU", "ratio", "goal", "")
    lines = [header]
    for row in rows:
        lines.append((row.name, _fmt(row.emulator, row.unit), _fmt(row.qemu, row.unit),
                      f"{row.ratio:.2f}x" if row.ratio is not None else "-",
                      f">= {row.goal:g}x" if row.goal is not None else "-", row.verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                             for i, cell in enumerate(line)).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def machine_text(machine: dict[str, Any]) -> str:
    return "\n".join([
        (f"machine: {machine['cpu']}, {machine['cpus']} CPUs ({machine['cpus_usable']} usable), "
         f"{machine['kernel']}, Python {machine['python']}"),
        "QEMU: " + ("; ".join(machine["qemu"]) or "not found"),
        "load average at start {:.2f} {:.2f} {:.2f}, at end {:.2f} {:.2f} {:.2f} (a shared machine "
        "makes every figure noisy: medians are given)".format(
            *machine["load_average_at_start"], *machine.get("load_average_at_end", [0, 0, 0])),
    ])


def _svg_text(x: float, y: float, text: str, size: int = 11, anchor: str = "start",
              weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}">{html.escape(text)}</text>')


def _line_chart(x0: float, y0: float, width: float, height: float, title: str,
                series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
                log_x: bool = False) -> list[str]:
    """A small line chart: one polyline per series, axes from 0 (x log when asked)."""
    parts = [_svg_text(x0, y0 - 6, title, 12, weight="bold"),
             f'<rect x="{x0}" y="{y0}" width="{width}" height="{height}" fill="none" stroke="#999"/>']
    points = [p for values in series.values() for p in values]
    if not points:
        return parts
    xs = [math.log10(x) if log_x else x for x, _ in points]
    xmin, xmax = (min(xs), max(xs)) if log_x else (0.0, max(xs))
    ymax = max(y for _, y in points) * 1.1 or 1.0
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]

    def place(x: float, y: float) -> tuple[float, float]:
        value = math.log10(x) if log_x else x
        fx = (value - xmin) / ((xmax - xmin) or 1.0)
        return x0 + 8 + fx * (width - 16), y0 + height - y / ymax * height

    for index, (name, values) in enumerate(series.items()):
        color = colors[index % len(colors)]
        coords = [place(x, y) for x, y in sorted(values)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in coords]
        parts.append(_svg_text(x0 + width - 4, y0 + 14 + 13 * index, name, 10, "end"))
        parts[-1] = parts[-1].replace("<text ", f'<text fill="{color}" ', 1)
    parts.append(_svg_text(x0 + width / 2, y0 + height + 14, xlabel, 10, "middle"))
    low, high = (10 ** xmin if log_x else xmin), max(x for x, _ in points)
    parts.append(_svg_text(x0 + 8, y0 + height + 14, f"{low:g}", 9, "middle"))
    parts.append(_svg_text(x0 + width - 8, y0 + height + 14, f"{high:g}", 9, "middle"))
    parts.append(_svg_text(x0 - 4, y0 + 10, f"{ymax / 1.1:.3g}", 9, "end"))
    parts.append(_svg_text(x0 - 4, y0 + height, "0", 9, "end"))
    parts.append(_svg_text(x0, y0 + height + 26, ylabel, 10))
    return parts


def svg(rows: Sequence[Row], scale: dict[str, Any], title: str) -> str:
    """Speed-ups against their goals (log scale), then the scale curves."""
    ratio_rows = [row for row in rows if row.ratio is not None]
    bar_height, left, plot = 22, 330, 440
    top = 50
    height = top + bar_height * len(ratio_rows) + 40 + 230
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + plot + 60}" height="{height}" '
              'font-family="sans-serif">'), '<rect width="100%" height="100%" fill="white"/>',
             _svg_text(10, 20, title, 14, weight="bold"),
             _svg_text(10, 38, "emulator speed-up over real QEMU (log scale; | = goal, 1x = as fast)", 11)]
    lo, hi = math.log10(0.1), math.log10(100.0)

    def x_of(ratio: float) -> float:
        value = min(max(math.log10(max(ratio, 1e-3)), lo), hi)
        return left + (value - lo) / (hi - lo) * plot

    for tick in (0.1, 1, 10, 100):
        x = x_of(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" '
                     f'y2="{top + bar_height * len(ratio_rows)}" stroke="#ddd"/>')
        parts.append(_svg_text(x, top + bar_height * len(ratio_rows) + 14, f"{tick:g}x", 10, "middle"))
    for index, row in enumerate(ratio_rows):
        y = top + index * bar_height
        ratio = row.ratio or 0.0
        color = "#2ca02c" if row.goal is None or ratio >= row.goal else "#d62728"
        if row.goal is None:
            color = "#1f77b4"
        x1 = x_of(1.0)
        x2 = x_of(ratio)
        parts.append(f'<rect x="{min(x1, x2):.1f}" y="{y + 3}" width="{abs(x2 - x1):.1f}" '
                     f'height="{bar_height - 6}" fill="{color}"/>')
        parts.append(_svg_text(left - 6, y + bar_height - 7, row.name, 11, "end"))
        parts.append(_svg_text(max(x1, x2) + 4, y + bar_height - 7, f"{ratio:.2f}x", 10))
        if row.goal is not None:
            gx = x_of(row.goal)
            parts.append(f'<line x1="{gx:.1f}" y1="{y + 1}" x2="{gx:.1f}" y2="{y + bar_height - 1}" '
                         'stroke="black" stroke-width="2"/>')
    y0 = top + bar_height * len(ratio_rows) + 60
    suite = scale.get("suite_vs_cases", [])
    series = {f"{side} wall": [(p["count"], p["wall"]) for p in suite if p["side"] == side]
              for side in sorted({p["side"] for p in suite})}
    parts += _line_chart(60, y0, 200, 150, "suite time vs cases", series, "cases", "seconds")
    backup = scale.get("backup_vs_size", [])
    series = {side: [(p["size"] / GiB, p["seconds"]) for p in backup if p["side"] == side]
              for side in sorted({p["side"] for p in backup})}
    parts += _line_chart(320, y0, 200, 150, "sparse full backup vs size", series, "GiB (log)",
                         "seconds", log_x=True)
    bitmaps = scale.get("bitmaps_vs_size", [])
    series = {f"{w} writes": [(p["size"] / GiB, p["us"]["iterate extents"]) for p in bitmaps
                              if p["writes"] == w] for w in sorted({p["writes"] for p in bitmaps})}
    parts += _line_chart(580, y0, 200, 150, "bitmap: iterate extents", series, "GiB (log)",
                         "microseconds", log_x=True)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def report_html(text: str, chart: str) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>blocktxn bench</title></head>"
            f"<body><h1>blocktxn bench</h1>\n{chart}\n<pre>{html.escape(text)}</pre></body></html>\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen measures; the JSON document."""
    sizes = Sizes.choose(args.quick, args.runs)
    qemu_binaries = [QemuBinaries.named(path) for path in args.qemu] if args.qemu else discover_qemus()
    if args.no_qemu:
        qemu_binaries = []
    qemus = [str(b.system) for b in qemu_binaries]
    backup_qemu = qemu_binaries[0] if qemu_binaries else None
    machine = describe_machine(qemu_binaries)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    steps: dict[str, Callable[[], None]] = {}

    def suite() -> None:
        found, raw["suite"] = measure_suite(sizes, qemus)
        rows.extend(found)

    def backup() -> None:
        found, raw["backup"] = measure_backup(sizes, backup_qemu)
        rows.extend(found)

    def differential() -> None:
        found, raw["differential"] = measure_differential(sizes, backup_qemu)
        rows.extend(found)

    def scale() -> None:
        raw["scale"] = measure_scale(sizes, qemus, backup_qemu)

    steps.update(suite=suite, backup=backup, differential=differential, scale=scale)
    started = time.monotonic()
    for name in args.only or list(steps):
        steps[name]()
    machine["load_average_at_end"] = list(os.getloadavg())
    return {"machine": machine, "quick": args.quick, "runs": sizes.runs,
            "seconds": time.monotonic() - started, "backup_qemu": backup_qemu.version if backup_qemu else None,
            "rows": [row.to_json() for row in rows], "raw": raw, "_rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blocktxn bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (checks the bench)")
    parser.add_argument("--runs", type=int, default=None, help="runs per measure (default 3; quick 1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where bench.json, bench.svg and report.html go (default {DEFAULT_OUT})")
    parser.add_argument("--qemu", action="append", metavar="BIN",
                        help="real qemu-system-x86_64 (repeatable; default: 7.2 on PATH and 10.0 from "
                             "scripts/setup-qemu-10.sh); the first is the backup's and fuzzing's")
    parser.add_argument("--no-qemu", action="store_true", help="the emulator side only")
    parser.add_argument("--only", action="append", choices=["suite", "backup", "differential", "scale"],
                        help="run only these measures (repeatable)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    document = run(args)
    rows: list[Row] = document.pop("_rows")
    title = "blocktxn bench" + (" (quick: a check of the bench, not a measurement)" if args.quick else "")
    text = "\n".join([title, machine_text(document["machine"]),
                      (f"medians of {document['runs']} run(s); backups against "
                       f"{document['backup_qemu'] or 'no QEMU'}"), "", table(rows), ""])
    scale = document["raw"].get("scale", {})
    for point in scale.get("suite_vs_cases", []):
        text += (f"scale: suite, {point['files']} case files, {point['side']}: {point['count']} cases, "
                 f"wall {point['wall']:.2f} s, cases {point['cases']:.2f} s\n")
    for point in scale.get("backup_vs_size", []):
        text += (f"scale: sparse full backup, {point['size'] / GiB:g} GiB ({point['data'] // MiB} MiB "
                 f"of data), {point['side']}: {point['seconds']:.3f} s\n")
    for point in scale.get("bitmaps_vs_size", []):
        us = point["us"]
        text += (f"scale: bitmap, {point['writes']} writes, {point['size'] / GiB:g} GiB: mark "
                 f"{us['mark (per write)']:.2f} us/write, count {us['count']:.0f} us, iterate "
                 f"{us['iterate extents']:.0f} us, merge {us['merge (same gran)']:.0f} us\n")
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    chart = svg(rows, scale, title)
    (args.out / "bench.svg").write_text(chart, encoding="utf-8")
    (args.out / "report.html").write_text(report_html(text, chart), encoding="utf-8")
    print(f"wrote {args.out / 'bench.json'}, {args.out / 'bench.svg'}, {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
