"""`blocktxn bench --quick` end to end: a real run at small sizes that must print the table and
write the JSON, the SVG chart and the report.  Nothing here looks at how fast anything was."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_bench_quick_prints_the_table_and_writes_json_and_svg(tmp_path: Path) -> None:
    out = tmp_path / "bench-out"
    done = subprocess.run([sys.executable, "-m", "blocktxn_cli.main", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=850, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    text = done.stdout
    for expected in ("machine: ", "measure", "suite serial: whole pytest process",
                     "suite serial: sum of per-case times", "full backup", "incremental backup",
                     "scale: suite", "scale: sparse full backup", "scale: bitmap"):
        assert expected in text, f"{expected!r} not in the output:\n{text}"
    document = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert document["quick"] is True
    assert {"cpu", "cpus", "kernel", "python", "qemu"} <= set(document["machine"])
    names = [row["name"] for row in document["rows"]]
    assert any(name.startswith("suite -n") for name in names), names
    for row in document["rows"]:
        if row["emulator"] is not None:
            assert row["emulator"] > 0, row
    root = ET.parse(out / "bench.svg").getroot()
    assert root.tag.endswith("svg") and len(root) > 10
    assert "<svg" in (out / "report.html").read_text(encoding="utf-8")
