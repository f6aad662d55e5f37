"""The conformance HTML report, JUnit XML, emulator-only cases and normalized-log dumps.

The end-to-end tests run pytest in a subprocess over a synthetic case file that uses the
plugin.  Its cases write their sessions straight into ``vm.log`` (no target is started), so the
run is fast and its outcome is known exactly: the qemu target is pointed at a missing binary,
which makes its cells deterministic skips.  One test drives real QEMU (skipped without it) to
check the timeline of a real session, and one opens the report in headless Chromium.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conformance.compare.normalize import PathMap, normalize
from conformance.qmplog import QmpLog
from conformance.report.html import (
    STATUS_COLOURS,
    Timeline,
    picture_of,
    timeline_from_log,
    upstream_of,
)
from conformance.report.summary import EMULATOR_ONLY, Tally
from conformance.targets import QemuBinaries

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 180

# ---- a synthetic session: a grouped transaction whose drive1 job fails -------------------------


def _jsc(job: str, status: str) -> dict[str, object]:
    return {"event": "JOB_STATUS_CHANGE", "data": {"id": job, "status": status},
            "timestamp": {"seconds": 1, "microseconds": 2}}


def grouped_failure_log() -> QmpLog:
    """The event order QEMU 7.2 shows when drive1 fails in a grouped transaction
    (docs/upstream-cases.md A.2, transaction_failure)."""
    log = QmpLog("synthetic/grouped_failure")
    log.add("greeting", {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                             "package": ""}, "capabilities": ["oob"]}})
    log.add("command", {"execute": "transaction", "id": "__qmp#00001", "arguments": {
        "actions": [{"type": "drive-backup", "data": {"device": "drive0", "sync": "full",
                                                      "target": "/tmp/x/t0.img"}},
                    {"type": "drive-backup", "data": {"device": "drive1", "sync": "full",
                                                      "target": "/tmp/x/t1.img"}}],
        "properties": {"completion-mode": "grouped"}}})
    for job, status in (("drive0", "created"), ("drive1", "created"), ("drive1", "running"),
                        ("drive0", "running")):
        log.add("event", _jsc(job, status))
    log.add("reply", {"return": {}, "id": "__qmp#00001"})
    log.add("event", {"event": "BLOCK_JOB_ERROR", "data": {"device": "drive1", "action": "report",
                                                            "operation": "read"}})
    log.add("event", _jsc("drive1", "aborting"))
    log.add("event", {"event": "BLOCK_JOB_COMPLETED", "data": {
        "device": "drive1", "type": "backup", "len": 65536, "offset": 0, "speed": 0,
        "error": "Input/output error"}})
    log.add("event", _jsc("drive1", "concluded"))
    log.add("event", _jsc("drive1", "null"))
    log.add("event", _jsc("drive0", "aborting"))
    log.add("event", {"event": "BLOCK_JOB_CANCELLED", "data": {
        "device": "drive0", "type": "backup", "len": 65536, "offset": 0, "speed": 0}})
    log.add("event", _jsc("drive0", "concluded"))
    log.add("event", _jsc("drive0", "null"))
    log.add("command", {"execute": "block-job-cancel", "id": "__qmp#00002",
                        "arguments": {"device": "drive0"}})
    log.add("reply", {"error": {"class": "DeviceNotActive", "desc": "Block job 'drive0' not found"},
                      "id": "__qmp#00002"})
    log.add("command", {"execute": "query-block-jobs", "id": "__qmp#00003"})
    log.add("reply", {"return": [], "id": "__qmp#00003"})
    log.add("command", {"execute": "quit", "id": "__qmp#00004"})
    log.add("reply", {"return": {}, "id": "__qmp#00004"})
    log.add("event", {"event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"}})
    return log


# ---- unit tests of the pieces -------------------------------------------------------------------

def test_timeline_follows_each_job_and_marks_commands() -> None:
    timeline = timeline_from_log(grouped_failure_log(), PathMap.of(TEST_DIR="/tmp/x"))
    assert timeline.jobs() == ["drive0", "drive1"]
    assert len(timeline.events) == 14
    assert [c.name for c in timeline.commands] == ["transaction", "block-job-cancel", "quit"]
    transaction, cancel, quit_ = timeline.commands
    assert transaction.at == 0 and cancel.at == 13 and quit_.at == 13
    assert transaction.detail == "transaction (grouped): drive-backup drive0, drive-backup drive1"
    assert cancel.error == "DeviceNotActive: Block job 'drive0' not found" and quit_.error is None
    # JSON round trip (what crosses the xdist boundary)
    assert Timeline.from_json(timeline.to_json()) == timeline

    picture = picture_of(timeline)
    lanes = {lane.name: lane for lane in picture.lanes}
    assert list(lanes) == ["job drive0", "job drive1", "other events"]
    drive0, drive1 = lanes["job drive0"], lanes["job drive1"]
    assert [s.status for s in drive0.segments] == ["created", "running", "aborting", "concluded"]
    assert [s.status for s in drive1.segments] == ["created", "running", "aborting", "concluded"]
    assert len(drive0.ends) == len(drive1.ends) == 1  # each job's null
    assert all(s.colour == STATUS_COLOURS[s.status] for s in drive0.segments)
    # drive1: BLOCK_JOB_ERROR, then COMPLETED carrying an error (drawn red); drive0: CANCELLED
    assert [(m.shape, m.colour) for m in drive1.markers] == [("triangle", "#d50000"),
                                                            ("circle", "#b71c1c")]
    assert [m.shape for m in drive0.markers] == ["cross"]
    assert [m.shape for m in lanes["other events"].markers] == ["square"]
    # segments follow the event order: drive1 aborts before drive0 does
    aborting = {name: next(s.x for s in lane.segments if s.status == "aborting")
                for name, lane in (("drive0", drive0), ("drive1", drive1))}
    assert aborting["drive1"] < aborting["drive0"]
    assert picture.event_count == 14 and picture.ticks[0].label == "0"
    # block-job-cancel and quit were sent between the same two events: one line, both labels
    assert [(c.label, c.error) for c in picture.commands] == [("transaction", False),
                                                            ("block-job-cancel, quit", True)]
    assert picture.width > picture.commands[-1].x + 100


def test_upstream_comes_from_the_marker_or_the_docstring() -> None:
    assert upstream_of("iotest 124: test_x", "Ports 124 ``test_y``: z") == "iotest 124: test_x"
    assert upstream_of(None, "Ports 124 ``test_incremental_simple``: three") == \
        "iotest 124: test_incremental_simple"
    assert upstream_of(None, "Ports iotest 124's test_transaction_failure: drive1 is") == \
        "iotest 124: test_transaction_failure"
    assert upstream_of(None, "Pins ``sync=top`` over a backing chain") is None
    assert upstream_of(None, None) is None


@dataclass
class _Report:
    when: str
    outcome: str
    nodeid: str
    user_properties: list[tuple[str, object]] = field(default_factory=list)
    longrepr: object = None

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"

    @property
    def skipped(self) -> bool:
        return self.outcome == "skipped"


def test_tally_counts_emulator_only_apart_from_skips() -> None:
    tally = Tally()
    only = [("blocktxn-emulator-only", "needs internals"), ("blocktxn-case", "m::test_a")]
    tally.record(_Report("setup", "skipped", "m::test_a[qemu]", [("blocktxn-target", "qemu"), *only],
                         ("m.py", 1, "Skipped: emulator-only: needs internals")))
    tally.record(_Report("call", "passed", "m::test_a[emulator]", [("blocktxn-target", "emulator"),
                                                                   *only]))
    tally.record(_Report("setup", "skipped", "m::test_b[qemu]", [("blocktxn-target", "qemu")],
                         ("m.py", 1, "Skipped: QEMU not found")))
    assert tally.counts("qemu") == {EMULATOR_ONLY: 1, "skipped": 1}
    assert tally.counts("emulator") == {"passed": 1}
    assert tally.emulator_only == {"m::test_a": "needs internals"}
    assert tally.skip_reasons == {"m::test_b[qemu]": "QEMU not found"}


# ---- end to end: a synthetic run through the plugin ---------------------------------------------

SYNTHETIC_CASES = '''
"""Synthetic conformance cases: each writes its session straight into vm.log."""

import pytest

from conformance.vm import VM
from synthetic_sessions import grouped_failure_log


def _replay(vm: VM) -> None:
    for entry in grouped_failure_log().entries:
        vm.log.add(entry.kind, entry.message)


async def test_grouped_failure(vm: VM) -> None:
    """Ports iotest 124 ``test_transaction_failure``: a grouped transaction unwinds."""
    _replay(vm)


async def test_golden_mismatch(vm: VM) -> None:
    """Its golden says the transaction was individual."""
    _replay(vm)


@pytest.mark.upstream("iotest 124: test_incremental_simple")
async def test_assertion_fails(vm: VM) -> None:
    """A case whose own assertion fails."""
    _replay(vm)
    assert vm.log.events()[0]["data"]["status"] == "running", "deliberate failure"


@pytest.mark.emulator_only(reason="checks emulator-side bookkeeping")
async def test_emulator_side(vm: VM) -> None:
    """No golden exists for this case; it passes by its own assertions."""
    _replay(vm)
    assert len(vm.log.events()) == 14


async def test_not_applicable(vm: VM) -> None:
    """Skips itself."""
    pytest.skip("not applicable to this machine")
'''

#: The synthetic run's expected outcome per (case, target).
EXPECTED = {
    ("test_grouped_failure", "emulator@10.0"): "passed",
    ("test_golden_mismatch", "emulator@10.0"): "failed",
    ("test_assertion_fails", "emulator@10.0"): "failed",
    ("test_emulator_side", "emulator@10.0"): "passed",
    ("test_not_applicable", "emulator@10.0"): "skipped",
    ("test_grouped_failure", "qemu"): "skipped",
    ("test_golden_mismatch", "qemu"): "skipped",
    ("test_assertion_fails", "qemu"): "skipped",
    ("test_emulator_side", "qemu"): EMULATOR_ONLY,
    ("test_not_applicable", "qemu"): "skipped",
}
EXPECTED_TOTALS = {
    "emulator@10.0": {"passed": 2, "failed": 2, "error": 0, "emulator-only": 0, "skipped": 1},
    "qemu": {"passed": 0, "failed": 0, "error": 0, "emulator-only": 1, "skipped": 4},
}


def _run_pytest(workdir: Path, *args: str, without_qemu: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(workdir),
                                                      env.get("PYTHONPATH")]))
    if without_qemu:  # the run's PATH is an empty folder: no QEMU is found
        (workdir / "empty-path").mkdir(exist_ok=True)
        env["PATH"] = str(workdir / "empty-path")
    argv = [sys.executable, "-m", "pytest", "--rootdir", str(workdir), "-c", os.devnull,
            "-p", "no:blocktxn", "-p", "conformance.plugin", "-p", "no:cacheprovider",
            "-o", "console_output_style=classic", *args]
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)


def _write_synthetic_suite(workdir: Path) -> None:
    builder = "\n\n".join(["from conformance.qmplog import QmpLog", inspect.getsource(_jsc),
                            inspect.getsource(grouped_failure_log)])
    (workdir / "synthetic_sessions.py").write_text(builder, encoding="utf-8")
    (workdir / "test_synthetic.py").write_text(textwrap.dedent(SYNTHETIC_CASES), encoding="utf-8")


@dataclass
class SyntheticRun:
    workdir: Path
    serial: Path
    parallel: Path
    serial_output: str
    dumped: Path


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    """Goldens for two cases, then the suite run serially (dumping logs) and with -n 2."""
    workdir = tmp_path_factory.mktemp("synthetic")
    _write_synthetic_suite(workdir)
    golden = workdir / "golden"
    # no QEMU on PATH (the run's PATH is an empty folder): the qemu target is skipped
    common = ["--target", "emulator@10.0", "--target", "qemu", "--golden-dir", str(golden),
              "test_synthetic.py"]
    # the sessions hold no host paths, so their normalized form is known here
    session = grouped_failure_log()
    session.case = "test_synthetic/test_grouped_failure"
    normalized = normalize(session, PathMap()).render()
    (golden / "qemu-10.0" / "test_synthetic").mkdir(parents=True)
    (golden / "qemu-10.0" / "test_synthetic" / "test_grouped_failure.log").write_text(
        "# synthetic golden\n" + normalized)
    (golden / "qemu-10.0" / "test_synthetic" / "test_golden_mismatch.log").write_text(
        normalized.replace('"completion-mode": "grouped"', '"completion-mode": "individual"')
        .replace("test_grouped_failure", "test_golden_mismatch"))
    dumped = workdir / "dump"
    serial = workdir / "serial"
    run = _run_pytest(workdir, *common, "--blocktxn-report", str(serial),
                      "--blocktxn-dump-logs", str(dumped), without_qemu=True)
    assert run.returncode == 1, run.stdout + run.stderr
    parallel = workdir / "parallel"
    xdist = _run_pytest(workdir, *common, "--blocktxn-report", str(parallel), "-n", "2", without_qemu=True)
    assert xdist.returncode == 1, xdist.stdout + xdist.stderr
    return SyntheticRun(workdir, serial, parallel, run.stdout, dumped)


class _Dom(HTMLParser):
    """Elements (tag, attributes) and the text of each element with an id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open_ids: list[tuple[str, str]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.elements.append((tag, attributes))
        if "id" in attributes:
            self._open_ids.append((tag, attributes["id"]))
            self.text_by_id.setdefault(attributes["id"], "")

    def handle_endtag(self, tag: str) -> None:
        if self._open_ids and self._open_ids[-1][0] == tag:
            self._open_ids.pop()

    def handle_data(self, data: str) -> None:
        for _, ident in self._open_ids:
            self.text_by_id[ident] += data

    def having(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [a for t, a in self.elements
                if t == tag and all(a.get(name) == value for name, value in wanted.items())]


def _matrix(dom: _Dom) -> dict[tuple[str, str], str]:
    """(case name, target) -> outcome, from the matrix cells' data attributes."""
    result = {}
    rows = [(i, a) for i, (t, a) in enumerate(dom.elements) if t == "tr" and "data-case" in a]
    for index, row in rows:
        name = row["data-case"].split("::", 1)[1]
        for tag, attributes in dom.elements[index + 1:]:
            if tag == "tr":
                break
            if tag == "td" and "data-outcome" in attributes:
                result[(name, attributes["data-target"])] = attributes["data-outcome"]
    return result


def _totals(dom: _Dom) -> dict[str, dict[str, int]]:
    return {row["data-target"]: {key: int(row[f"data-{key}"]) for key in EXPECTED_TOTALS["qemu"]}
            for row in dom.having("tr", **{"class": "totals"})}


def _check_report(dom: _Dom) -> None:
    assert _matrix(dom) == EXPECTED
    assert _totals(dom) == EXPECTED_TOTALS
    summary = " ".join(dom.text_by_id["summary"].split())
    assert summary.startswith("5 cases × 2 targets: emulator@10.0 2 passed, 2 failed, 1 skipped; "
                              "qemu 1 emulator-only, 4 skipped"), summary
    rows = {row["data-case"]: row for row in dom.having("tr", **{"class": "case-row"})}
    assert rows["test_synthetic::test_emulator_side"].get("data-emulator-only") == "true"
    # one timeline per run case and target: the four cases that ran on the emulator
    timelines = dom.having("svg", **{"class": "timeline"})
    assert len(timelines) == 4
    assert {t["data-target"] for t in timelines} == {"emulator@10.0"}
    assert {(t["data-lanes"], t["data-events"]) for t in timelines} == {("3", "14")}
    statuses = [a["data-status"] for a in dom.having("rect", **{"class": "segment"})]
    assert statuses.count("aborting") == 8 and "running" in statuses
    assert dom.having("g", data_lane="job drive1")


def test_report_matrix_counts_and_timelines(synthetic_run: SyntheticRun) -> None:
    raw = (synthetic_run.serial / "report.html").read_text()
    _check_report(_Dom(raw))
    html = unescape(raw)
    # self-contained: no scripts, no external resources
    assert "<script" not in html and "<link" not in html and 'src="http' not in html
    # upstream column: from the docstring convention and from the marker
    assert "iotest 124: test_transaction_failure" in html
    assert "iotest 124: test_incremental_simple" in html
    # the golden diff of the mismatching case, with +/- lines marked
    dom = _Dom(raw)
    assert dom.having("pre", **{"class": "diff"})
    assert '"completion-mode": "individual"' in html and 'class="d-del"' in html
    assert 'class="d-add"' in html
    assert "deliberate failure" in html
    assert "not applicable to this machine" in html
    assert "emulator-only: checks emulator-side bookkeeping" in html
    assert "not compared with a golden" in html
    assert "QEMU not found" in html


def test_report_is_the_same_under_xdist(synthetic_run: SyntheticRun) -> None:
    serial = _Dom((synthetic_run.serial / "report.html").read_text())
    parallel = _Dom((synthetic_run.parallel / "report.html").read_text())
    _check_report(parallel)
    assert _matrix(parallel) == _matrix(serial)
    assert parallel.having("rect", **{"class": "segment"}) == serial.having("rect", **{"class": "segment"})


def test_junit_xml_is_written_next_to_the_report(synthetic_run: SyntheticRun) -> None:
    for directory in (synthetic_run.serial, synthetic_run.parallel):
        root = ET.parse(directory / "junit.xml").getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        assert suite is not None
        assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("10", "2", "6")
        cases = {case.get("name"): case for case in suite.iter("testcase")}
        assert cases["test_golden_mismatch[emulator@10.0]"].find("failure") is not None
        skipped = cases["test_emulator_side[qemu]"].find("skipped")
        assert skipped is not None and "emulator-only" in (skipped.get("message") or "")
        assert "blocktxn-record" not in (directory / "junit.xml").read_text()


def test_terminal_summary_lists_emulator_only_and_skips(synthetic_run: SyntheticRun) -> None:
    out = synthetic_run.serial_output
    summary = out[out.index("blocktxn conformance summary"):]
    assert "targets:\n  emulator@10.0: blocktxn emulator (in-process) in its QEMU 10.0 profile\n" in summary
    assert "  qemu: QEMU not found (qemu-system-x86_64, qemu-img, qemu-io): apt-get update && " \
           "apt-get install qemu-system-x86 qemu-utils" in summary
    assert "  emulator@10.0: 2 passed, 2 failed, 1 skipped" in summary
    assert "  qemu: 1 emulator-only, 4 skipped" in summary
    assert "  test_synthetic::test_emulator_side: checks emulator-side bookkeeping" in summary
    assert "test_synthetic.py::test_not_applicable[emulator@10.0]: not applicable to this machine" in summary
    assert f"report: {synthetic_run.serial / 'report.html'}" in summary


def test_dumped_logs_are_the_normalized_sessions(synthetic_run: SyntheticRun) -> None:
    logs = sorted(str(p.relative_to(synthetic_run.dumped)) for p in synthetic_run.dumped.rglob("*.log"))
    assert logs == [f"emulator@10.0/test_synthetic/{name}.log" for name in
                    ("test_assertion_fails", "test_emulator_side", "test_golden_mismatch",
                     "test_grouped_failure", "test_not_applicable")]
    text = (synthetic_run.dumped / "emulator@10.0/test_synthetic/test_grouped_failure.log").read_text()
    assert text.startswith("case: test_synthetic/test_grouped_failure\n")
    assert "== events of job drive1" in text and "timestamp" not in text
    golden = synthetic_run.workdir / "golden/qemu-10.0/test_synthetic/test_grouped_failure.log"
    assert "# synthetic golden\n" + text == golden.read_text()


# ---- the report in a real browser ---------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium_argv(binary: str, profile: str) -> list[str]:
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}"]


def test_report_renders_in_headless_chromium(synthetic_run: SyntheticRun) -> None:
    binary = _chromium()
    if binary is None:
        reason = "chromium not found: apt-get install -y --no-install-recommends chromium"
        print(reason)
        pytest.skip(reason)
    profile = tempfile.mkdtemp(prefix="btxchrome")
    try:
        done = subprocess.run(
            [*_chromium_argv(binary, profile), "--dump-dom",
             (synthetic_run.serial / "report.html").as_uri()],
            capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Dom(done.stdout)
    _check_report(dom)
    assert "<svg" in done.stdout and 'class="timeline"' in done.stdout


# ---- a real session's timeline (real QEMU) ------------------------------------------------------

REAL_CASE = '''
"""A grouped transaction of two full backups on real QEMU."""

from conformance.vm import VM


async def test_two_backups(vm: VM) -> None:
    """Two drive-backups in one grouped transaction both complete."""
    for name in ("a", "b"):
        for suffix in ("", ".target"):
            vm.tools.create(vm.path(f"{name}{suffix}.img"), "raw", 1 << 20).check()
    vm.add_drive(vm.path("a.img"), fmt="raw", drive_id="drive0")
    vm.add_drive(vm.path("b.img"), fmt="raw", drive_id="drive1")
    await vm.launch()
    actions = [{"type": "drive-backup", "data": {"device": device, "sync": "full",
                "mode": "existing", "format": "raw", "target": str(vm.path(target))}}
               for device, target in (("drive0", "a.target.img"), ("drive1", "b.target.img"))]
    await vm.cmd("transaction", actions=actions, properties={"completion-mode": "grouped"})
    await vm.wait_job_end("drive0")
    await vm.wait_job_end("drive1")
'''


def test_timeline_of_a_real_qemu_session(tmp_path: Path) -> None:
    qemu = QemuBinaries.find()
    if not qemu.complete:
        pytest.skip("QEMU not found: apt-get install qemu-system-x86 qemu-utils")
    target = f"qemu@{qemu.major_minor}"
    (tmp_path / "test_real.py").write_text(textwrap.dedent(REAL_CASE), encoding="utf-8")
    run = _run_pytest(tmp_path, "--target", "qemu", "--update-golden", "--golden-dir",
                      str(tmp_path / "golden"), "--blocktxn-report", str(tmp_path / "out"),
                      "test_real.py")
    assert run.returncode == 0, run.stdout + run.stderr
    html = unescape((tmp_path / "out" / "report.html").read_text())
    dom = _Dom(html)
    assert _matrix(dom) == {("test_two_backups", target): "passed"}
    assert "golden: recorded" in html
    (svg,) = dom.having("svg", **{"class": "timeline"})
    assert svg["data-target"] == target
    lanes = [a["data-lane"] for t, a in dom.elements if t == "g" and "data-lane" in a]
    assert lanes[:2] == ["job drive0", "job drive1"]
    statuses = {a["data-status"] for a in dom.having("rect", **{"class": "segment"})}
    # a grouped job waits for its partner, then both go pending and conclude
    assert {"created", "running", "pending", "concluded"} <= statuses
    assert html.count("BLOCK_JOB_COMPLETED {") >= 2


# ---- scripts/repeat_runs.py ---------------------------------------------------------------------

REPEAT_CASES = '''
"""Cases for the repeat-run script: one stable, one with a changing log, one flip-flopping."""

import os
import random
from pathlib import Path

import pytest

from conformance.vm import VM
from synthetic_sessions import grouped_failure_log


@pytest.mark.emulator_only(reason="repeat-run fixture")
async def test_deterministic(vm: VM) -> None:
    for entry in grouped_failure_log().entries:
        vm.log.add(entry.kind, entry.message)


@pytest.mark.emulator_only(reason="repeat-run fixture")
async def test_changing_log(vm: VM) -> None:
    vm.log.add("command", {"execute": "query-status", "arguments": {"n": random.random()}})


@pytest.mark.emulator_only(reason="repeat-run fixture")
def test_flip_flop() -> None:
    counter = Path(os.environ["REPEAT_COUNTER"])
    count = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(count))
    assert count % 2 == 1, "fails on every second run"
'''


def _repeat_runs(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["REPEAT_COUNTER"] = str(workdir / "counter")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "repeat_runs.py"),
                           "--cases", str(workdir / "test_repeat.py"), "--target", "emulator@10.0", *args],
                          cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)


@pytest.fixture
def repeat_suite(tmp_path: Path) -> Path:
    _write_synthetic_suite(tmp_path)
    (tmp_path / "test_repeat.py").write_text(textwrap.dedent(REPEAT_CASES), encoding="utf-8")
    return tmp_path


def test_repeat_runs_finds_changing_logs_and_flip_flopping_outcomes(repeat_suite: Path) -> None:
    # one run per mode: the serial run passes test_flip_flop, the xdist run fails it
    done = _repeat_runs(repeat_suite, "--runs", "1", "--workers", "2")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "2 runs (1 serial, 1 xdist); 1 failed" in out
    assert "  failed run xdist#1: test_flip_flop\n" in out
    assert "FLAKY outcomes (1 tests):\n  test_flip_flop: 1 failed, 1 passed\n" in out
    assert "NOT identical: 1 of 2 normalized logs differ between runs:" in out
    assert "emulator@10.0/test_repeat/test_changing_log.log: 2 variants" in out
    assert "test_deterministic.log:" not in out
    for label in ("serial#1", "xdist#1"):
        assert f"\n{label} " in out


def test_repeat_runs_passes_a_stable_suite(repeat_suite: Path) -> None:
    done = _repeat_runs(repeat_suite, "--runs", "2", "--serial-only", "--", "-k", "deterministic")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical: all 1 normalized logs are the same in every run" in done.stdout
    assert "2 runs (2 serial); 0 failed" in done.stdout


def test_rule_evidence_splits_varied_from_constant(tmp_path: Path) -> None:
    """repeat_runs' evidence per rule: a place whose hidden value differs between runs is
    'varied'; one that is the same in every run (or absent from a run that has the log) counts
    as such too, so a rule that hides only constant values shows up as 'constant'."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("repeat_runs", ROOT / "scripts" / "repeat_runs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("repeat_runs", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    log = "qemu@7.2/test_m/test_c.log"
    other = "qemu@10.0/test_m/test_c.log"
    runs = []
    for number, (j1, j3) in enumerate([(2, [65536]), (2, [131072]), (2, [65536])], 1):
        run = module.Run(number, "serial", tmp_path)
        run.logs = {log: "h", other: "h"}
        run.hidden = {log: {"drive0": {"J1": j1, "J3": j3}}, other: {"drive0": {"J1": number}}}
        runs.append(run)
    assert module.rule_evidence(runs) == {
        ("qemu@7.2", "J1"): {"constant": 1}, ("qemu@7.2", "J3"): {"varied": 1},
        ("qemu@10.0", "J1"): {"varied": 1}}


def test_normalize_reports_what_the_job_rules_took_out() -> None:
    """normalize() keeps, per job, what J1 (pairs) and J2 (waitings) removed; goldens keep
    offsets (J3 is for the live fuzzer only)."""
    log = QmpLog("m/c")
    for status in ("created", "running", "paused", "running", "waiting", "aborting"):
        log.add("event", {"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": status}})
    log.add("event", {"event": "BLOCK_JOB_CANCELLED",
                      "data": {"device": "j", "len": 4, "offset": 2, "speed": 0, "type": "backup"}})
    assert normalize(log, PathMap()).hidden == {"j": {"J1": 1, "J2": 1}}
