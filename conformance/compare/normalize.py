"""Turn a recorded QMP session into the stable text that goldens store and compare.

Real QEMU is not deterministic across independent jobs, so a golden may only contain what QEMU
guarantees.  This module is the one place where that rule is written down.  The rules, and why:

Every rule states its evidence.  F1-F3 and F7 mask values that change in every run by
construction (wall clock, client counters, per-run directories, elapsed time); F4, F5 and F8 mask
what differs between QEMU builds or between implementations, not between runs; the others cite
real runs.

Filters (applied to every message, tool line and output line; modelled on iotests' filters):

F1. Event ``timestamp`` members are removed: host wall-clock time.
F2. The ``id`` that qemu.qmp attaches to each command (``__qmp#00003``) and QEMU echoes in the
    reply is removed: it is client bookkeeping, not behaviour.
F3. Paths: the case's private directory becomes ``TEST_DIR`` and the socket directory becomes
    ``SOCK_DIR``, wherever they occur inside a string.
F4. The QEMU version (greeting and ``query-version``): ``micro`` becomes ``"MICRO"`` and
    ``package`` becomes ``"PACKAGE"``.  Major and minor stay: each golden set describes one
    MAJOR.MINOR (``golden/qemu-7.2``, ``golden/qemu-10.0``).  The exact version and binary of the
    recording QEMU go in the golden's header comment only.
F5. Auto-generated node names (``#block123``) become ``#blockNNN``: the number is a counter of
    internal allocations that differs between QEMU builds.
F6. Host-dependent fields are masked: ``actual-size`` (the file system's allocation) becomes
    ``"MASKED"`` — in QMP replies and in ``qemu-img info --output=json`` lines alike (real QEMU's
    value for the same writes was seen to differ run to run) — as does qemu-img's human
    ``disk size:`` line, also where qemu-img 10.0 indents it under ``Child node '/file':``.
F8. The ``virtual-size`` of a protocol node's image info (``"format": "file"``) is masked: it is
    the host file's length, which depends on where the qcow2 driver placed its clusters and
    metadata — an implementation choice, not behaviour (the format node above reports the guest
    size, which is compared).
F7. qemu-io's timing line (``64 KiB, 1 ops; 00.00 sec (387 MiB/sec and 6192 ops/sec)``) keeps
    the size and op count and masks the time and rates, as iotests' filter_qemu_io does.
    A rate under 1 KiB/s is printed in plain bytes (``865.664458 bytes/sec``).

Layout (not a filter: nothing is dropped):

L1. A message (command, reply, greeting, event data) is one line of compact key-sorted JSON when
    it fits in 100 characters with its prefix, else key-sorted JSON indented by two spaces, so
    that a golden diff points at the member that changed.

Ordering (what is compared, and in which order):

O1. The conversation is compared in order: the greeting, every command (``->``), its reply
    (``<-``), text QEMU printed on stdout while the command ran (``..``, e.g. HMP qemu-io output),
    and image-tool runs (``$``).  Commands run strictly in order, so this order is guaranteed.
O2. Events are not interleaved with the conversation: whether an event is sent before or after
    a reply depends on timing (e.g. the reply to ``block-job-cancel`` races the job's events).
    Evidence: QEMU 7.2 answered ``block-job-cancel`` both before and after the job's events over
    10 runs of one scenario (docs/qemu-7.2-observations.md, scenario c4).
O3. Job events (``JOB_STATUS_CHANGE`` keyed by ``data.id``; ``BLOCK_JOB_*`` keyed by
    ``data.device`` or ``data.id``) are grouped per job id, in arrival order within the job,
    groups sorted by id.  QEMU orders one job's events but interleaves independent jobs'
    events differently run to run.  A job id reused after dismissal just continues its group:
    the new job's ``created`` always follows the old one's ``null``.  Evidence: 3 global
    interleavings of a failing grouped transaction and 4 of an individual one in 10 runs each
    of QEMU 7.2 (docs/qemu-7.2-observations.md, scenarios b2 and d).
O4. All other events keep their arrival order relative to each other, in one list.

Per-job rules.  Evidence: ``scripts/repeat_runs.py --runs 5 --workers 2 --target qemu --qemu
/usr/bin/qemu-system-x86_64 --qemu <10.0.2>`` (5 serial and 5 ``-n 2`` runs of the whole suite on
each of real QEMU 7.2.22 and 10.0.2, all 137 normalized logs identical in every run) counts, per
rule and version, the places (case, job) where the rule took something out, and whether what it
took out varied between the runs ("varied") or was the same in all 10 ("constant"):

J1. (only the cases ``DRAIN_PAIRS_VARY`` lists, per version) Drain-induced pause pairs are
    dropped: a ``paused`` status immediately followed (within the job) by ``running``.  A drained
    section (each transaction-class command, a node-name HMP qemu-io, a graph change) pauses every
    running job it reaches.  A user pause is still visible through the conversation
    (``job-pause`` and the ``paused``/``status`` fields of query-jobs / query-block-jobs); a
    ``paused`` that is not followed by ``running`` is kept.
    Evidence (issue 13): ``scripts/repeat_runs.py --runs 5 --workers 2`` with every pair kept,
    10 runs per version.  QEMU 7.2.22: all 77 logs identical in every run, so no 7.2 case is
    listed, and 10 more consecutive runs against the goldens all passed.  QEMU 10.0.2: 73 of 78
    logs identical; the 5 that varied are the grouped transactions of test_transaction, whose two
    jobs copy at full speed while the other job's graph changes drain (a job busy in a request
    does not pause: bdrv_graph_wrlock drains without polling), and each entry gives its variants
    (the number of ``paused`` per job).  The emulator models both versions' drained sections
    (emulator/block/drain.py, and 10.0's graph write lock: BlockGraph.graph_wrlock), measured per
    command with scripts/drain_probe.py.  The live differential fuzzer, whose scenarios are
    random, applies J1 on a version where any case varies (``drains_vary``: 10.0) and compares
    every pair on 7.2 (642 random scenarios against real 7.2.22 with pairs compared: 0
    divergences).
J2. A ``waiting`` status immediately followed by ``aborting`` is dropped: in a grouped
    transaction a partner reaches ``waiting`` only if it finished copying before the failure.
    Evidence: 7.2.22: 2 varied, 3 constant; 10.0.2: 2 varied, 3 constant; in the final 10 runs
    of the whole suite (issue 13): 2 varied, 4 constant on each.
J3. (live differential fuzzing only, ``mask_failed_offsets``; not applied to goldens) ``offset``
    of ``BLOCK_JOB_CANCELLED``, and of ``BLOCK_JOB_COMPLETED`` carrying ``error``, becomes
    ``"MASKED"``: a randomly timed cancel stops the copy wherever it got.  Goldens keep these
    offsets: in the suite's cases they are deterministic (evidence: 7.2.22: 0 varied, 39
    constant; 10.0.2: 0 varied, 38 constant; then 10 more runs of each against the goldens
    that keep them, all passing), and the emulator reproduces every one of them.

Everything else is compared exactly, so a real difference (another status, a missing event,
another error text or class, another reply value) still shows up in the diff.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from conformance.qmplog import LogEntry, QmpLog

MASKED = "MASKED"

_NODE_NAME = re.compile(r"#block\d+")
_QEMU_IO_TIMING = re.compile(
    r"^(?P<size>[0-9.]+ (?:bytes|[KMGTPE]iB)), (?P<ops>\d+) ops; [0-9:.]+ sec "
    r"\((?:[0-9.]+|inf) (?:bytes|[KMGTPE]?i?B)/sec and (?:[0-9.]+|inf) ops/sec\)$"
)
_DISK_SIZE = re.compile(r"^(\s*)disk size: .*$")
_TOOL_ACTUAL_SIZE = re.compile(r'^(\s*"actual-size": )\d+')

#: BLOCK_JOB_* events whose job is named by data.device; BLOCK_JOB_PENDING uses data.id.
_JOB_EVENTS_BY_DEVICE = frozenset(
    {"BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR", "BLOCK_JOB_READY"}
)
_JOB_EVENTS_BY_ID = frozenset({"JOB_STATUS_CHANGE", "BLOCK_JOB_PENDING"})


@dataclass(frozen=True)
class PathMap:
    """Host paths of one case and the placeholders they become (rule F3); longest first."""

    replacements: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, **placeholders: str | None) -> PathMap:
        pairs = [(path.rstrip("/"), name) for name, path in placeholders.items() if path]
        pairs.sort(key=lambda pair: len(pair[0]), reverse=True)
        return cls(tuple(pairs))

    def apply(self, text: str) -> str:
        for path, name in self.replacements:
            text = text.replace(path, name)
        return text


def filter_text(text: str, paths: PathMap) -> str:
    """Apply the string filters (F3, F5, F6, F7) to one line of text."""
    text = _NODE_NAME.sub("#blockNNN", paths.apply(text))
    text = _QEMU_IO_TIMING.sub(
        r"\g<size>, \g<ops> ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)", text
    )
    text = _TOOL_ACTUAL_SIZE.sub(rf'\1"{MASKED}"', text)
    return _DISK_SIZE.sub(rf"\1disk size: {MASKED}", text)


def filter_value(value: Any, paths: PathMap) -> Any:
    """Apply F3, F5 and F6 recursively to a JSON value."""
    if isinstance(value, dict):
        protocol_image = value.get("format") == "file" and "virtual-size" in value
        return {
            key: MASKED if key == "actual-size" or (protocol_image and key == "virtual-size")
            else filter_value(item, paths)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [filter_value(item, paths) for item in value]
    if isinstance(value, str):
        return filter_text(value, paths)
    return value


def mask_version(version: Any) -> Any:
    """Rule F4 on a VersionInfo value ({"qemu": {major, minor, micro}, "package"})."""
    if not isinstance(version, dict) or "qemu" not in version:
        return version
    masked = dict(version)
    triple = dict(masked["qemu"]) if isinstance(masked["qemu"], dict) else masked["qemu"]
    if isinstance(triple, dict) and "micro" in triple:
        triple["micro"] = "MICRO"
    masked["qemu"] = triple
    if "package" in masked:
        masked["package"] = "PACKAGE"
    return masked


def dump(value: Any) -> str:
    """Compact, key-sorted, ASCII JSON on one line."""
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=True)


#: A message longer than this (with its prefix) is written as indented JSON (rule L1).
WIDE = 100


def message_lines(prefix: str, value: Any) -> list[str]:
    """A message as golden lines (rule L1): ``prefix`` + compact JSON when that fits in WIDE
    characters, else key-sorted JSON indented by two spaces, its continuation lines indented
    under the prefix, so that a diff names the member that changed."""
    compact = f"{prefix}{dump(value)}"
    if len(compact) <= WIDE:
        return [compact]
    first, *rest = json.dumps(value, sort_keys=True, indent=2, ensure_ascii=True).splitlines()
    pad = " " * len(prefix)
    return [f"{prefix}{first}", *(f"{pad}{line}" for line in rest)]


def job_id_of(event: dict[str, Any]) -> str | None:
    """The job an event belongs to (rule O3), or None for a non-job event."""
    name = event.get("event")
    data = event.get("data") or {}
    if name in _JOB_EVENTS_BY_ID:
        return str(data.get("id"))
    if name in _JOB_EVENTS_BY_DEVICE:
        return str(data.get("device"))
    return None


def _render_job_event(event: dict[str, Any], paths: PathMap, hidden: dict[str, Any] | None = None,
                      mask_failed_offsets: bool = False) -> tuple[str, str]:
    """(kind, line) of one job event; kind is the status for JOB_STATUS_CHANGE, else the name."""
    name = str(event.get("event"))
    data = dict(event.get("data") or {})
    if name == "JOB_STATUS_CHANGE":
        return str(data.get("status")), f"JOB_STATUS_CHANGE {data.get('status')}"
    if mask_failed_offsets and "offset" in data and (
        name == "BLOCK_JOB_CANCELLED" or (name == "BLOCK_JOB_COMPLETED" and "error" in data)
    ):
        if hidden is not None:
            hidden.setdefault("J3", []).append(data["offset"])
        data["offset"] = MASKED  # J3
    return name, "\n".join(message_lines(f"{name} ", filter_value(data, paths)))


#: Rule J1's scope: per QEMU version (MAJOR.MINOR), the cases (``module/case``) whose drain pause
#: pairs vary between real runs, each with its evidence.  J1 applies to those cases only; every
#: other log is compared with its pairs.
DRAIN_PAIRS_VARY: dict[str, dict[str, str]] = {
    "7.2": {},
    "10.0": {
        "test_transaction/test_grouped_cancel_at_pending":
            "3 variants in 10 runs: (drive0, drive1) paused 2/2 x4, 2/3 x3, 3/2 x3",
        "test_transaction/test_grouped_incremental_failure_then_retry":
            "3 variants in 10 runs: 3/3 x3, 3/4 x2, 4/3 x5",
        "test_transaction/test_grouped_incremental_success":
            "3 variants in 10 runs: 2/2 x7, 2/3 x2, 3/2 x1",
        "test_transaction/test_grouped_manual_finalize":
            "3 variants in 10 runs: 2/2 x2, 2/3 x4, 3/2 x4",
        "test_transaction/test_grouped_user_cancel":
            "3 variants in 10 runs: 2/2 x3, 2/3 x3, 3/2 x4",
        "test_transaction/test_individual_incremental_failure":
            "4 variants in the 7 of 10 recordings that took the asserted path: 2/3 x1, 2/4 x3, "
            "3/3 x1, 4/3 x2",
    },
}


def drains_vary(version: str | None) -> bool:
    """Whether drain pairs may vary in an arbitrary scenario on this version (the live
    differential fuzzer's J1): not on 7.2, whose drains poll every job to its pause point
    (642 random scenarios compared with their pairs: 0 divergences); on 10.0 a job busy in a
    request misses a graph-lock drain (the cases DRAIN_PAIRS_VARY lists)."""
    cases = DRAIN_PAIRS_VARY.get(version or "")
    return cases is None or bool(cases)


def drops_drain_pairs(version: str | None, case: str) -> bool:
    """Whether rule J1 applies to this case's log on this QEMU version (a version without an
    entry, e.g. a QEMU build nobody measured, drops every pair)."""
    cases = DRAIN_PAIRS_VARY.get(version or "")
    return cases is None or case in cases


def normalize_job_events(events: Iterable[dict[str, Any]], paths: PathMap,
                         hidden: dict[str, Any] | None = None, *,
                         mask_failed_offsets: bool = False,
                         drop_drain_pairs: bool = True) -> list[str]:
    """One job's events as lines, with rules J1 and J2 applied (and J3 with
    `mask_failed_offsets`).  `hidden`, when given, receives what each rule took out (J1: pairs
    dropped, J2: waitings dropped, J3: the offsets masked), so that repeated real runs can show
    whether a rule hides variation (scripts/repeat_runs.py)."""
    rendered = [_render_job_event(event, paths, hidden if mask_failed_offsets else None,
                                  mask_failed_offsets) for event in events]
    kept: list[str] = []
    index = 0
    while index < len(rendered):
        kind, line = rendered[index]
        following = rendered[index + 1][0] if index + 1 < len(rendered) else None
        is_status = line.startswith("JOB_STATUS_CHANGE ")
        if drop_drain_pairs and is_status and kind == "paused" and following == "running":  # J1
            if hidden is not None:
                hidden["J1"] = hidden.get("J1", 0) + 1
            index += 2
            continue
        if is_status and kind == "waiting" and following == "aborting":  # J2
            if hidden is not None:
                hidden["J2"] = hidden.get("J2", 0) + 1
            index += 1
            continue
        kept.append(line)
        index += 1
    return kept


@dataclass
class NormalizedLog:
    """The comparable form of one case's session."""

    case: str
    conversation: list[str] = field(default_factory=list)
    jobs: dict[str, list[str]] = field(default_factory=dict)
    other_events: list[str] = field(default_factory=list)
    #: Per job, what rules J1 and J2 took out of it (see normalize_job_events); not rendered.
    hidden: dict[str, dict[str, Any]] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"case: {self.case}", "", "== conversation"]
        lines += self.conversation
        for job_id in sorted(self.jobs):
            lines += ["", f"== events of job {job_id}"]
            lines += self.jobs[job_id]
        lines += ["", "== other events"]
        lines += self.other_events
        return "\n".join(lines) + "\n"


def _conversation_line(entry: LogEntry, paths: PathMap, last_command: str | None) -> list[str]:
    if entry.kind == "greeting":
        greeting = dict(entry.message)  # type: ignore[arg-type]
        qmp = dict(greeting.get("QMP", {}))
        if "version" in qmp:
            qmp["version"] = mask_version(qmp["version"])
        greeting["QMP"] = qmp
        return message_lines("<= ", filter_value(greeting, paths))
    if entry.kind == "command":
        command = {key: value for key, value in entry.message.items() if key != "id"}  # type: ignore[union-attr]
        return message_lines("-> ", filter_value(command, paths))
    if entry.kind == "reply":
        reply = {key: value for key, value in entry.message.items() if key != "id"}  # type: ignore[union-attr]
        if last_command == "query-version" and "return" in reply:
            reply["return"] = mask_version(reply["return"])
        return message_lines("<- ", filter_value(reply, paths))
    if entry.kind == "output":
        return [f".. {filter_text(line, paths)}".rstrip() for line in str(entry.message).splitlines()]
    if entry.kind == "tool":
        return [f"$ {filter_text(str(entry.message), paths)}"]
    raise ValueError(f"not a conversation entry: {entry.kind}")


def normalize(log: QmpLog, paths: PathMap, version: str | None = None) -> NormalizedLog:
    """Apply every rule of this module to a recorded session of QEMU `version` (MAJOR.MINOR;
    the per-job rules depend on it)."""
    result = NormalizedLog(case=log.case)
    job_events: dict[str, list[dict[str, Any]]] = {}
    last_command: str | None = None
    for entry in log.entries:
        if entry.kind == "event":
            event: dict[str, Any] = entry.message  # type: ignore[assignment]
            job_id = job_id_of(event)
            if job_id is None:
                other = {key: value for key, value in event.items() if key != "timestamp"}
                name = str(other.pop("event", "?"))
                result.other_events += (message_lines(f"{name} ", filter_value(other["data"], paths))
                                        if "data" in other else [name])
            else:
                job_events.setdefault(job_id, []).append(event)
            continue
        if entry.kind == "command":
            last_command = str(entry.message.get("execute"))  # type: ignore[union-attr]
        result.conversation += _conversation_line(entry, paths, last_command)
    for job_id, events in job_events.items():
        hidden: dict[str, Any] = {}
        result.jobs[job_id] = normalize_job_events(events, paths, hidden,
                                                   drop_drain_pairs=drops_drain_pairs(version, log.case))
        if hidden:
            result.hidden[job_id] = hidden
    return result
