"""The HTML report of a conformance run: a case x target matrix, golden diffs and job timelines.

Data flow, built to work under pytest-xdist: the worker that runs a case turns the case's
recorded QmpLog into a JSON-serializable CaseRecord (golden verdict and diff, the job timeline)
and the plugin attaches it to the call report as the ``blocktxn-record`` user property.  The
controller's ReportCollector receives every phase report (xdist forwards them), folds them into
one Cell per (case, target) and, at session end, renders ``report.html`` from
``templates/report.html.j2``: self-contained (inline CSS, inline SVG, no script, no external
assets).

Which upstream test a case ports: a ``@pytest.mark.upstream("iotest 124: test_x")`` marker
wins; otherwise the first line of the case's docstring is read when it follows the suite's
convention ``Ports [iotest] 124[''s] ``test_x`` ...`` (giving ``iotest 124: test_x``).  Cases
that pin QEMU behaviour without an upstream counterpart show none.

The timeline of one session: x is the index of an event in the recorded session (events only,
in arrival order), one lane per job id (jobs in order of their first event), a coloured segment
per JOB_STATUS_CHANGE status until the job's next status, a marker per BLOCK_JOB_* event, a
lane for other events, and a dashed line where a command was sent (labelled for job and
transaction commands; red when the command failed).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from conformance.compare.golden import Golden, golden_set, golden_versions
from conformance.compare.normalize import PathMap, dump, filter_value, job_id_of
from conformance.qmplog import QmpLog
from conformance.report.summary import (
    CASE_PROPERTY,
    EMULATOR_ONLY,
    EMULATOR_ONLY_PROPERTY,
    OUTCOME_ORDER,
    RECORD_PROPERTY,
    UPSTREAM_PROPERTY,
    fold_outcome,
    phase_outcome,
    property_of,
    skip_reason,
    target_of,
)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"
REPORT_NAME = "report.html"
JUNIT_NAME = "junit.xml"
#: Long texts are cut so that one runaway failure cannot make the report unreadable.
MAX_TEXT = 12000
MAX_DETAIL = 300

# ---- which upstream test a case ports --------------------------------------------------------

_PORTS = re.compile(r"^Ports (?:iotest )?(?P<number>\d+)(?:'s)? (?:``)?(?P<name>test_\w+)")


def docstring_summary(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    paragraph: list[str] = []
    for line in (doc or "").strip().splitlines():
        if not line.strip():
            break
        paragraph.append(line.strip())
    return " ".join(paragraph).replace("``", "")


def upstream_of(marker_value: str | None, doc: str | None) -> str | None:
    """The upstream case a conformance case ports: marker first, then the docstring convention."""
    if marker_value:
        return marker_value
    match = _PORTS.match(" ".join((doc or "").split()))
    return f"iotest {match['number']}: {match['name']}" if match else None


# ---- the job timeline of one recorded session -----------------------------------------------

#: Commands whose position is labelled on the timeline (others are unlabelled ticks).
_LABELLED = re.compile(r"^(transaction|drive-backup|blockdev-backup|block-job-.*|job-.*|quit)$")
_UNSHOWN_COMMANDS = frozenset({"qmp_capabilities"})


@dataclass
class TimelineEvent:
    """One received event: its index among the session's events, and its job (if a job event)."""

    index: int
    event: str
    job: str | None
    status: str | None
    detail: str


@dataclass
class TimelineCommand:
    """A command sent after `at` events had arrived; `error` is the error reply's desc."""

    at: int
    name: str
    detail: str
    error: str | None = None


@dataclass
class Timeline:
    events: list[TimelineEvent] = field(default_factory=list)
    commands: list[TimelineCommand] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timeline:
        return cls([TimelineEvent(**event) for event in data.get("events", [])],
                   [TimelineCommand(**command) for command in data.get("commands", [])])

    def jobs(self) -> list[str]:
        return list(dict.fromkeys(event.job for event in self.events if event.job is not None))


def _short(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 3] + "..."


def _command_detail(name: str, arguments: dict[str, Any]) -> str:
    if name == "transaction":
        actions = []
        for action in arguments.get("actions") or []:
            data = action.get("data") or {}
            subject = data.get("job-id") or data.get("device") or data.get("node") or ""
            actions.append(f"{action.get('type')} {subject}".strip())
        mode = (arguments.get("properties") or {}).get("completion-mode", "individual")
        return _short(f"transaction ({mode}): " + ", ".join(actions))
    if name == "human-monitor-command":
        return _short(f"HMP: {arguments.get('command-line', '')}")
    return _short(f"{name} {dump(arguments)}" if arguments else name)


def timeline_from_log(log: QmpLog, paths: PathMap) -> Timeline:
    """Extract the events and the (non-query) commands of a session, paths filtered (F3)."""
    timeline = Timeline()
    last: TimelineCommand | None = None
    for entry in log.entries:
        message = entry.message
        if not isinstance(message, dict):
            continue
        if entry.kind == "event":
            name = str(message.get("event"))
            data = filter_value(dict(message.get("data") or {}), paths)
            status = str(data.get("status")) if name == "JOB_STATUS_CHANGE" else None
            timeline.events.append(TimelineEvent(len(timeline.events), name, job_id_of(message),
                                                 status, _short(f"{name} {dump(data)}")))
        elif entry.kind == "command":
            name = str(message.get("execute"))
            last = None
            if name.startswith("query-") or name in _UNSHOWN_COMMANDS:
                continue
            arguments = filter_value(dict(message.get("arguments") or {}), paths)
            last = TimelineCommand(len(timeline.events), name, _command_detail(name, arguments))
            timeline.commands.append(last)
        elif entry.kind == "reply" and last is not None:
            error = message.get("error")
            if isinstance(error, dict):
                last.error = _short(f"{error.get('class')}: {error.get('desc')}")
            last = None
    return timeline


# ---- the timeline picture (geometry; the template draws it) ---------------------------------

STATUS_COLOURS = {
    "created": "#9e9e9e", "running": "#2e7d32", "paused": "#f9a825", "ready": "#0277bd",
    "standby": "#4fc3f7", "waiting": "#7e57c2", "pending": "#c2185b", "aborting": "#d32f2f",
    "concluded": "#455a64", "undefined": "#000000",
}
#: Marker shape and colour per BLOCK_JOB_* event (COMPLETED with an error is drawn as "failed").
MARKERS = {
    "BLOCK_JOB_COMPLETED": ("circle", "#1b5e20"),
    "BLOCK_JOB_COMPLETED (error)": ("circle", "#b71c1c"),
    "BLOCK_JOB_CANCELLED": ("cross", "#e65100"),
    "BLOCK_JOB_ERROR": ("triangle", "#d50000"),
    "BLOCK_JOB_READY": ("diamond", "#0277bd"),
    "BLOCK_JOB_PENDING": ("diamond", "#c2185b"),
    "other event": ("square", "#757575"),
}
LABEL_WIDTH = 150
TOP = 84
LANE_HEIGHT = 28
BAR_HEIGHT = 16
RIGHT_PAD = 24
AXIS_HEIGHT = 26
CHAR_WIDTH = 6.2
#: Width of one event's cell: spread over PLOT_WIDTH, but never narrower than MIN_STEP (the
#: picture then scrolls sideways) nor wider than MAX_STEP.
PLOT_WIDTH = 1050.0
MIN_STEP = 15.0
MAX_STEP = 36.0


@dataclass
class Segment:
    x: float
    width: float
    colour: str
    status: str
    label: bool
    title: str


@dataclass
class Marker:
    x: float
    shape: str
    colour: str
    title: str


@dataclass
class Lane:
    name: str
    y: float
    segments: list[Segment] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)


@dataclass
class CommandLine:
    x: float
    label: str | None
    title: str
    error: bool


@dataclass
class Tick:
    x: float
    label: str


@dataclass
class Picture:
    width: float
    height: float
    plot_left: float
    plot_right: float
    lanes: list[Lane]
    commands: list[CommandLine]
    ticks: list[Tick]
    axis_y: float
    event_count: int


def _tick_every(count: int) -> int:
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 500):
        if count / step <= 25:
            return step
    return 1000


def picture_of(timeline: Timeline) -> Picture:
    """Lay out a timeline: x = event index (cell centres), one lane per job, then other events."""
    count = len(timeline.events)
    step = max(MIN_STEP, min(MAX_STEP, PLOT_WIDTH / max(count, 1)))
    left = float(LABEL_WIDTH)
    right = left + step * max(count, 1)

    def centre(index: int) -> float:
        return left + (index + 0.5) * step

    names = timeline.jobs()
    others = [event for event in timeline.events if event.job is None]
    lanes = {name: Lane(f"job {name}", TOP + i * LANE_HEIGHT) for i, name in enumerate(names)}
    other_lane = Lane("other events", TOP + len(names) * LANE_HEIGHT) if others else None
    for name, lane in lanes.items():
        mine = [event for event in timeline.events if event.job == name]
        statuses = [event for event in mine if event.status is not None]
        for position, event in enumerate(statuses):
            status = str(event.status)
            if status == "null":
                lane.ends.append(centre(event.index))
                continue
            start = centre(event.index)
            end = centre(statuses[position + 1].index) if position + 1 < len(statuses) else right
            width = max(end - start, 2.0)
            lane.segments.append(Segment(
                start, width, STATUS_COLOURS.get(status, "#000000"), status,
                width >= CHAR_WIDTH * len(status) + 6,
                f"{name}: {status} (from event #{event.index})"))
        for event in mine:
            if event.status is None:
                key = event.event
                if key == "BLOCK_JOB_COMPLETED" and '"error"' in event.detail:
                    key = "BLOCK_JOB_COMPLETED (error)"
                shape, colour = MARKERS.get(key, MARKERS["other event"])
                lane.markers.append(Marker(centre(event.index), shape, colour,
                                           f"#{event.index} {event.detail}"))
    if other_lane is not None:
        for event in others:
            shape, colour = MARKERS["other event"]
            other_lane.markers.append(Marker(centre(event.index), shape, colour,
                                             f"#{event.index} {event.detail}"))
    all_lanes = [*lanes.values(), *([other_lane] if other_lane else [])]
    axis_y = TOP + len(all_lanes) * LANE_HEIGHT + 4
    commands: list[CommandLine] = []
    for command in timeline.commands:  # commands sent between the same two events share a line
        x = left + command.at * step
        label = command.name if _LABELLED.match(command.name) else None
        title = command.detail + (f" -> error {command.error}" if command.error else "")
        if commands and commands[-1].x == x:
            merged = commands[-1]
            merged.label = ", ".join(filter(None, [merged.label, label])) or None
            merged.title += "\n" + title
            merged.error = merged.error or command.error is not None
        else:
            commands.append(CommandLine(x, label, title, command.error is not None))
    width = right + RIGHT_PAD
    for line in commands:  # room for the rotated labels (35 degrees)
        if line.label:
            width = max(width, line.x + 0.82 * CHAR_WIDTH * len(line.label) + 12)
    every = _tick_every(count)
    ticks = [Tick(centre(index), str(index)) for index in range(0, count, every)]
    return Picture(width, axis_y + AXIS_HEIGHT, left, right, all_lanes, commands,
                   ticks, axis_y, count)


# ---- per-case records (made on the worker) and cells (folded on the controller) -------------

@dataclass
class CaseRecord:
    """What the worker knows about one case run and the report needs (JSON-serializable).

    `golden` is one of: "equal", "mismatch", "missing", "recorded", "not compared"
    (emulator-only), "not reached" (the case failed before the comparison).
    """

    golden: str
    golden_text: str = ""
    timeline: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    module: str = ""
    line: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseRecord:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass
class Cell:
    """One case on one target: the folded outcome of its phase reports."""

    outcome: str | None = None
    durations: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    failure: str = ""
    record: CaseRecord | None = None
    picture: Picture | None = None

    @property
    def duration(self) -> float:
        return sum(self.durations.values())


@dataclass
class Case:
    """A conformance case (one row of the matrix) and its result on each target."""

    key: str
    module: str
    name: str
    line: int = 0
    upstream: str | None = None
    doc: str = ""
    emulator_only: str | None = None
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def anchor(self) -> str:
        return "case-" + re.sub(r"[^A-Za-z0-9_-]+", "-", self.key).strip("-")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"\n... ({len(text) - MAX_TEXT} more)"


@dataclass
class TargetInfo:
    name: str
    description: str


# ---- what changed between QEMU versions --------------------------------------------------------

@dataclass
class CaseChange:
    """One case whose golden differs between two QEMU versions: the unified diff of the bodies."""

    case: str
    diff: str
    changed_lines: int


@dataclass
class VersionChange:
    """What changed from one recorded QEMU version to the next, computed from the golden sets."""

    old: str
    new: str
    root: str
    compared: int
    cases: list[CaseChange]
    only_old: list[str]
    only_new: list[str]


_VERSION_MEMBER = re.compile(r'("(?:major|minor)": )\d+')


def _golden_bodies(directory: Path) -> dict[str, str]:
    """Each case's golden body, with the version number itself (greeting, query-version) left
    out: that it changes between two versions is no news."""
    bodies = {}
    for path in sorted(directory.glob("*/*.log")):
        case = f"{path.parent.name}/{path.stem}"
        bodies[case] = _VERSION_MEMBER.sub(r"\1N", Golden(path, case).body())
    return bodies


def version_changes(root: Path) -> list[VersionChange]:
    """For each pair of consecutive versions with a golden set under `root`, the cases whose
    normalized behaviour differs (what a client of the newer QEMU sees differently)."""
    versions = golden_versions(root)
    changes = []
    for old, new in itertools.pairwise(versions):
        before, after = _golden_bodies(golden_set(root, old)), _golden_bodies(golden_set(root, new))
        cases = []
        for case in sorted(set(before) & set(after)):
            if before[case] == after[case]:
                continue
            lines = list(difflib.unified_diff(before[case].splitlines(keepends=True),
                                              after[case].splitlines(keepends=True),
                                              fromfile=f"qemu-{old}/{case}.log",
                                              tofile=f"qemu-{new}/{case}.log", n=2))
            changed = sum(1 for line in lines if line[:1] in "+-" and line[:3] not in ("+++", "---"))
            cases.append(CaseChange(case, _cut("".join(lines)), changed))
        changes.append(VersionChange(old, new, str(root), len(set(before) & set(after)), cases,
                                     sorted(set(before) - set(after)), sorted(set(after) - set(before))))
    return changes


class ReportCollector:
    """Folds phase reports into Cases (controller side) and writes report.html at session end.

    Registered as a pytest plugin by conformance.plugin when ``--blocktxn-report DIR`` is given.
    """

    def __init__(self, directory: Path, targets: list[TargetInfo], golden_root: Path | None = None) -> None:
        self.directory = directory
        self.targets = targets
        self.golden_root = golden_root
        self.cases: dict[str, Case] = {}
        self.unit_tests = 0
        self.written: Path | None = None

    def add(self, report: Any) -> None:
        """Fold one phase report (any phase, any test) into the collection."""
        target = target_of(report)
        key = property_of(report, CASE_PROPERTY)
        if key is None:
            if report.when == "call":
                self.unit_tests += 1
            return
        case = self.cases.get(key)
        if case is None:
            module, _, name = str(key).partition("::")
            case = self.cases[key] = Case(str(key), module, name)
        case.upstream = property_of(report, UPSTREAM_PROPERTY) or case.upstream
        case.emulator_only = property_of(report, EMULATOR_ONLY_PROPERTY) or case.emulator_only
        if not case.line and getattr(report, "location", None):
            case.line = int(report.location[1] or 0)
        cell = case.cells.setdefault(target, Cell())
        cell.durations[report.when] = cell.durations.get(report.when, 0.0) + float(report.duration)
        outcome = phase_outcome(report)
        cell.outcome = fold_outcome(cell.outcome, outcome)
        if outcome in ("skipped", EMULATOR_ONLY):
            cell.reason = skip_reason(report)
        elif outcome in ("failed", "error"):
            text = str(getattr(report, "longreprtext", "") or report.longrepr or "")
            cell.failure = _cut((cell.failure + "\n" if cell.failure else "")
                                + (f"[{report.when}] " if report.when != "call" else "") + text)
        data = property_of(report, RECORD_PROPERTY)
        if isinstance(data, dict):
            cell.record = CaseRecord.from_json(data)
            case.doc = cell.record.doc or case.doc
            if cell.record.timeline:
                cell.picture = picture_of(Timeline.from_json(cell.record.timeline))

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.add(report)

    @property
    def sorted_cases(self) -> list[Case]:
        return sorted(self.cases.values(), key=lambda case: (case.module, case.line, case.key))

    def write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / REPORT_NAME
        changes = version_changes(self.golden_root) if self.golden_root is not None else []
        path.write_text(render_report(self.sorted_cases, self.targets, self.unit_tests, changes),
                        encoding="utf-8")
        self.written = path
        return path


# ---- rendering ------------------------------------------------------------------------------

def totals(cases: Iterable[Case], targets: Iterable[TargetInfo]) -> dict[str, dict[str, int]]:
    """Outcome counts per target (a case not run on a target counts as "not run")."""
    result: dict[str, dict[str, int]] = {}
    cases = list(cases)
    for target in targets:
        counts = dict.fromkeys([*OUTCOME_ORDER, "not run"], 0)
        for case in cases:
            cell = case.cells.get(target.name)
            counts[cell.outcome if cell and cell.outcome else "not run"] += 1
        result[target.name] = counts
    return result


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["seconds"] = lambda value: f"{value:.2f} s"
    env.filters["num"] = lambda value: f"{value:.1f}".rstrip("0").rstrip(".")
    env.globals["math"] = math
    return env


def render_report(cases: list[Case], targets: list[TargetInfo], unit_tests: int = 0,
                  changes: list[VersionChange] | None = None) -> str:
    """The whole report page as one self-contained HTML string."""
    template = _environment().get_template(TEMPLATE_NAME)
    return template.render(
        version_changes=changes or [],
        cases=cases,
        targets=targets,
        totals=totals(cases, targets),
        outcome_order=[*OUTCOME_ORDER, "not run"],
        unit_tests=unit_tests,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        status_colours=STATUS_COLOURS,
        markers=MARKERS,
        lane_height=LANE_HEIGHT,
        bar_height=BAR_HEIGHT,
        top=TOP,
    )
