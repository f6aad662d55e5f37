"""pytest plugin: runs conformance cases against the emulator's version profiles and real QEMUs.

A case is an ``async def test_...(vm)`` function.  The plugin parametrizes it per selected
target (``test_x[emulator@7.2]``, ``test_x[qemu@10.0]``; see conformance.targets), gives it a
``vm`` (conformance.vm.VM) in a private directory, runs the body with asyncio, shuts the target
down, and compares the normalized session with the golden recorded from the real QEMU of the
target's version, ``GOLDEN_ROOT/qemu-MAJOR.MINOR/`` (or records it, with ``--update-golden``).
Registered as the ``blocktxn`` entry point; disable with ``-p no:blocktxn``.

Targets: ``--target emulator`` is every profile of the emulator, ``--target emulator@10.0`` one
of them; ``--target qemu`` is every real QEMU given with ``--qemu BIN`` (repeatable; default the
one on PATH), ``--target qemu@7.2`` the one of that version.  A real QEMU whose version has no
golden set stops the run with one message saying how to record them.

Markers:
  ``@pytest.mark.emulator_only(reason="...")``: the case runs on the emulator only; on the qemu
  target it is skipped with that reason and counted as "emulator-only".  Its log is not compared
  with a golden (none is needed): the case's own assertions are the check.
  ``@pytest.mark.upstream("iotest 124: test_incremental_simple")``: the upstream test the case
  ports, shown in the HTML report (without it, a docstring starting ``Ports 124 ``test_x````
  is read; see conformance.report.html).

Outputs:
  ``--blocktxn-report DIR`` writes DIR/report.html (conformance.report.html) and DIR/junit.xml (via
  pytest's own junitxml unless --junitxml is given); works with pytest-xdist.
  ``--blocktxn-dump-logs DIR`` writes each case's normalized log to
  DIR/<target>/<module>/<case>.log, and what rules J1 and J2 took out of it to <case>.hidden.json
  (used by scripts/repeat_runs.py to spot nondeterminism and to count each rule's evidence).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conformance.compare.golden import DEFAULT_GOLDEN_DIR, Golden, GoldenMismatch, GoldenMissing, golden_set
from conformance.compare.normalize import normalize
from conformance.imagecheck import check_images
from conformance.report.html import (
    JUNIT_NAME,
    CaseRecord,
    ReportCollector,
    TargetInfo,
    docstring_summary,
    timeline_from_log,
    upstream_of,
)
from conformance.report.summary import (
    CASE_PROPERTY,
    EMULATOR_ONLY_PROPERTY,
    RECORD_PROPERTY,
    TARGET_PROPERTY,
    UPSTREAM_PROPERTY,
    Tally,
)
from conformance.targets import (
    EMULATOR_VERSIONS,
    INSTALL_HINT,
    EmulatorTarget,
    QemuBinaries,
    QemuNotUsable,
    QemuTarget,
    Target,
    parse_target,
)
from conformance.vm import DEFAULT_TIMEOUT, VM

# The helpers cases assert through keep pytest's assertion messages.  blocktxn's own runs load
# plugins by name (no autoloading, see blocktxn_cli.main.SUITE_PLUGINS), so pytest marks only this
# module for rewriting, not the whole distribution (whose emulator/ is no test code).
pytest.register_assert_rewrite("conformance.steps")

CASE_TIMEOUT = 90.0


@dataclass
class Settings:
    """The run's choices, made once in pytest_configure."""

    #: Target ids in run order; a real QEMU that was not found is the bare id "qemu".
    targets: list[str]
    #: The real QEMUs by target id (``qemu@7.2``).
    qemus: dict[str, QemuBinaries]
    #: Why the bare "qemu" target has no QEMU (None when every requested QEMU was found).
    qemu_missing: str | None
    update_golden: bool
    require_qemu: bool
    emulator_process: bool
    golden_dir: Path
    qmp_timeout: float
    tally: Tally
    explicit_targets: bool = False
    report_dir: Path | None = None
    dump_logs_dir: Path | None = None


SETTINGS = pytest.StashKey[Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("blocktxn", "blocktxn conformance")
    group.addoption("--target", action="append", dest="blocktxn_targets", metavar="KIND[@VERSION]",
                    help="run conformance cases against this target (repeatable): emulator (every "
                         f"profile: {', '.join(EMULATOR_VERSIONS)}), emulator@VERSION, qemu (every "
                         "--qemu given), qemu@VERSION; default emulator")
    group.addoption("--qemu", action="append", dest="blocktxn_qemu", default=None, metavar="BIN",
                    help="a real qemu-system-x86_64 (repeatable, one target each; default: from PATH); "
                         "its qemu-img and qemu-io are taken from beside it, then from PATH")
    group.addoption("--qemu-img", dest="blocktxn_qemu_img", default=None,
                    help="qemu-img binary (with a single --qemu)")
    group.addoption("--qemu-io", dest="blocktxn_qemu_io", default=None,
                    help="qemu-io binary (with a single --qemu)")
    group.addoption("--update-golden", action="store_true", dest="blocktxn_update_golden",
                    help="record golden logs (only with --target qemu alone)")
    group.addoption("--require-qemu", action="store_true", dest="blocktxn_require_qemu",
                    help="fail qemu-target cases when QEMU is missing instead of skipping them")
    group.addoption("--emulator-process", action="store_true", dest="blocktxn_emulator_process",
                    help="run the emulator as `python -m emulator` instead of in-process")
    group.addoption("--qemu-img-check", action="store_true", dest="blocktxn_qemu_img_check",
                    help="after each emulator case, run real `qemu-img check` on every qcow2 it "
                         "left (no errors, no leaks); `blocktxn test` turns it on when QEMU is found")
    group.addoption("--golden-dir", dest="blocktxn_golden_dir", default=None,
                    help=f"root of the golden sets, one qemu-MAJOR.MINOR folder per version: compared "
                         f"against, and recorded into with --update-golden (default {DEFAULT_GOLDEN_DIR})")
    group.addoption("--qmp-timeout", dest="blocktxn_qmp_timeout", type=float,
                    default=DEFAULT_TIMEOUT, help="bound of every QMP wait, in seconds")
    group.addoption("--blocktxn-report", dest="blocktxn_report", default=None, metavar="DIR",
                    help="write DIR/report.html (case x target matrix, golden diffs, job "
                         "timelines) and DIR/junit.xml")
    group.addoption("--blocktxn-dump-logs", dest="blocktxn_dump_logs", default=None, metavar="DIR",
                    help="write each case's normalized log to DIR/<target>/<module>/<case>.log")


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _absolute(path: str | None) -> Path | None:
    return Path(path).expanduser().resolve() if path else None


@pytest.hookimpl(tryfirst=True)  # before junitxml's pytest_configure reads config.option.xmlpath
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "blocktxn_case: a conformance case run per target")
    config.addinivalue_line("markers", "emulator_only(reason): run this case on the emulator "
                            "only (skipped on qemu, no golden; its own assertions are the check)")
    config.addinivalue_line("markers", "qemu_varies(version, reason): real QEMU of that MAJOR.MINOR "
                            "takes either of two paths here run to run, so the case is skipped on it "
                            "with the reason and its run counts (the emulator profile still "
                            "compares with the golden)")
    config.addinivalue_line("markers", "upstream(name): the upstream test this case ports, e.g. "
                            "'iotest 124: test_incremental_simple' (shown in the HTML report)")
    update = bool(config.getoption("blocktxn_update_golden"))
    golden_dir = config.getoption("blocktxn_golden_dir")
    golden_root = Path(golden_dir).resolve() if golden_dir else DEFAULT_GOLDEN_DIR
    requested = list(dict.fromkeys(config.getoption("blocktxn_targets") or ["emulator"]))
    targets, qemus, qemu_missing = _resolve_targets(config, requested)
    if update and any(not name.startswith("qemu") for name in targets):
        raise pytest.UsageError("--update-golden records goldens from real QEMU only: "
                                "use it with --target qemu and no other target")
    if not update:
        _require_golden_sets(golden_root, qemus)
    config.stash[SETTINGS] = Settings(
        targets=targets,
        qemus=qemus,
        qemu_missing=qemu_missing,
        update_golden=update,
        require_qemu=bool(config.getoption("blocktxn_require_qemu")),
        emulator_process=bool(config.getoption("blocktxn_emulator_process")),
        golden_dir=golden_root,
        qmp_timeout=float(config.getoption("blocktxn_qmp_timeout")),
        tally=Tally(),
        explicit_targets=bool(config.getoption("blocktxn_targets")),
        report_dir=_absolute(config.getoption("blocktxn_report")),
        dump_logs_dir=_absolute(config.getoption("blocktxn_dump_logs")),
    )
    settings = config.stash[SETTINGS]
    collector = None
    if settings.report_dir is not None:
        if not config.option.xmlpath:
            config.option.xmlpath = str(settings.report_dir / JUNIT_NAME)
        if not _is_xdist_worker(config):
            collector = ReportCollector(settings.report_dir, _target_infos(settings), settings.golden_dir)
            config.pluginmanager.register(collector, "blocktxn-report")
    config.pluginmanager.register(_Reporter(settings, collector), "blocktxn-reporter")


def _resolve_targets(config: pytest.Config,
                     requested: list[str]) -> tuple[list[str], dict[str, QemuBinaries], str | None]:
    """Expand the --target specs into target ids, finding the real QEMUs they need."""
    specs = []
    for spec in requested:
        try:
            specs.append(parse_target(spec))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    qemus: dict[str, QemuBinaries] = {}
    qemu_missing = None
    if any(kind == "qemu" for kind, _ in specs):
        named = config.getoption("blocktxn_qemu") or []
        img, io = config.getoption("blocktxn_qemu_img"), config.getoption("blocktxn_qemu_io")
        if len(named) > 1 and (img or io):
            raise pytest.UsageError("--qemu-img/--qemu-io go with a single --qemu; with several, "
                                    "each one's tools are taken from beside it")
        try:
            found = [QemuBinaries.named(path, img, io) for path in named] if named \
                else [QemuBinaries.find(None, img, io)]
        except QemuNotUsable as exc:
            raise pytest.UsageError(str(exc)) from None
        for binaries in found:
            if binaries.complete and binaries.major_minor:
                qemus.setdefault(f"qemu@{binaries.major_minor}", binaries)
            else:
                qemu_missing = ", ".join(binaries.missing()) or "a working qemu-system-x86_64"
    targets: list[str] = []
    for kind, version in specs:
        if kind == "emulator":
            if version is not None and version not in EMULATOR_VERSIONS:
                raise pytest.UsageError(f"the emulator has no QEMU {version} profile; it has "
                                        f"{', '.join(EMULATOR_VERSIONS)}")
            targets += [f"emulator@{v}" for v in EMULATOR_VERSIONS if version in (None, v)]
        elif version is None:
            targets += list(qemus) or ["qemu"]
        elif f"qemu@{version}" in qemus:
            targets.append(f"qemu@{version}")
        else:
            have = ", ".join(f"{b.version} ({b.system})" for b in qemus.values()) or "none"
            raise pytest.UsageError(f"--target qemu@{version}: no real QEMU {version} was given "
                                    f"(--qemu BIN); found: {have}")
    return list(dict.fromkeys(targets)), qemus, qemu_missing


def _require_golden_sets(root: Path, qemus: dict[str, QemuBinaries]) -> None:
    """A real QEMU whose version has no golden set: one message that says how to record them."""
    for binaries in qemus.values():
        version = str(binaries.major_minor)
        if not golden_set(root, version).is_dir():
            raise pytest.UsageError(
                f"no golden logs for QEMU {version} in {golden_set(root, version)} (the target "
                f"{binaries.version} at {binaries.system} is compared with them). Record them from "
                f"that binary first:\n    ./blocktxn record-golden --qemu {binaries.system}"
                + (f" --golden-dir {root}" if root != DEFAULT_GOLDEN_DIR else ""))


def _target_infos(settings: Settings) -> list[TargetInfo]:
    return [TargetInfo(name, _make_target(settings, name).describe() if name != "qemu"
                       else f"QEMU not found ({settings.qemu_missing}): {INSTALL_HINT}")
            for name in settings.targets]


def _make_target(settings: Settings, name: str) -> Target:
    kind, version = parse_target(name)
    if kind == "emulator":
        return EmulatorTarget(str(version), separate_process=settings.emulator_process)
    return QemuTarget(settings.qemus[name])


def _emulator_only_reason(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("emulator_only")
    if marker is None:
        return None
    reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
    return str(reason) or "no reason given"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip emulator-only cases on every target but the emulator, and cases a real QEMU version
    does not run deterministically on that QEMU, each with its reason.  When recording, the
    latter do run: a run whose QEMU took the path the case asserts passes and records the golden
    (the emulator's profile is compared with it); a run that took the other path fails its own
    assertions and records nothing."""
    recording = bool(config.getoption("blocktxn_update_golden"))
    for item in items:
        reason = _emulator_only_reason(item)
        callspec = getattr(item, "callspec", None)
        for marker in () if recording else item.iter_markers("qemu_varies"):
            if callspec is not None and callspec.params.get("target") == f"qemu@{marker.args[0]}":
                item.add_marker(pytest.mark.skip(
                    reason=f"real QEMU {marker.args[0]} varies here: {marker.kwargs['reason']}"))
        if reason is None or callspec is None or \
                str(callspec.params.get("target", "emulator")).startswith("emulator"):
            continue
        item.add_marker(pytest.mark.skip(reason=f"emulator-only: {reason}"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Only conformance cases (``async def`` taking the target/vm) run once per target; a plain test
    # elsewhere that happens to name a parameter "target" is left alone.
    if "target" in metafunc.fixturenames and inspect.iscoroutinefunction(metafunc.function):
        targets = metafunc.config.stash[SETTINGS].targets
        metafunc.parametrize("target", targets, ids=targets, indirect=True)


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Target:
    """The Target this instance of the case runs against (skips when QEMU is missing)."""
    settings = request.config.stash[SETTINGS]
    name = request.param
    if name == "qemu":  # no real QEMU was found
        message = f"QEMU not found ({settings.qemu_missing}): {INSTALL_HINT}"
        if settings.require_qemu:
            pytest.fail(f"--require-qemu: {message}", pytrace=False)
        pytest.skip(message)
    return _make_target(settings, name)


@pytest.fixture
def vm(request: pytest.FixtureRequest, target: Target, tmp_path: Path) -> Iterator[VM]:
    """An unlaunched VM for the case: add drives, then ``await vm.launch()``."""
    settings = request.config.stash[SETTINGS]
    sockdir = _short_socket_dir()
    case = f"{request.node.module.__name__.rsplit('.', 1)[-1]}/{request.node.originalname}"
    machine = VM(target, case, tmp_path, sockdir, timeout=settings.qmp_timeout)
    request.node.stash[_VM_KEY] = machine
    try:
        yield machine
    finally:
        machine.kill()
        shutil.rmtree(sockdir, ignore_errors=True)
        # The item outlives the case (pytest keeps every item to the end of the session): without
        # this, every case's VM, its log and its emulator's block graph stay in memory, and each
        # garbage collection walks all of them (the one at the end took a second).
        del request.node.stash[_VM_KEY]


_VM_KEY = pytest.StashKey[VM]()
UNIX_PATH_MAX = 108


def _short_socket_dir() -> Path:
    """A private directory whose ``qmp.sock`` fits in sun_path (108 bytes), whatever TMPDIR is."""
    sockdir = Path(tempfile.mkdtemp(prefix="btx"))
    if len(str(sockdir / "qmp.sock")) >= UNIX_PATH_MAX:
        sockdir.rmdir()
        sockdir = Path(tempfile.mkdtemp(prefix="btx", dir="/tmp"))
    return sockdir


async def _run_case(item: pytest.Function, kwargs: dict[str, Any], machine: VM | None) -> None:
    body = item.obj(**kwargs)
    await asyncio.wait_for(body, CASE_TIMEOUT)
    if machine is not None and machine.launched:
        await machine.shutdown()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` cases (no pytest-asyncio), then check the golden log."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    machine = pyfuncitem.stash.get(_VM_KEY, None)
    verdict = _Verdict("not reached")
    try:
        asyncio.run(_run_case(pyfuncitem, kwargs, machine))
        if machine is not None:
            _check_golden(pyfuncitem, machine, verdict)
            _check_emulator_images(pyfuncitem, machine)
    except BaseException:
        if machine is not None:
            pyfuncitem.add_report_section("call", "blocktxn log", machine.diagnostics())
        raise
    finally:
        if machine is not None:
            _keep_outputs(pyfuncitem, machine, verdict)
    return True


def _check_emulator_images(item: pytest.Function, machine: VM) -> None:
    """Images the emulator wrote must pass real `qemu-img check` (no errors, no leaks)."""
    settings = item.config.stash[SETTINGS]
    if machine.target.kind != "emulator" or not item.config.getoption("blocktxn_qemu_img_check"):
        return
    checker = _image_checker(settings, machine.target.version)
    if checker is None:
        pytest.fail(f"--qemu-img-check needs a real qemu-img: {INSTALL_HINT}", pytrace=False)
    problems = check_images(str(checker.img), machine.workdir, checker.env())
    if problems:
        pytest.fail("images written by the emulator fail real qemu-img check:\n  " + "\n  ".join(problems),
                    pytrace=False)


def _image_checker(settings: Settings, version: str) -> QemuBinaries | None:
    """The real QEMU whose qemu-img checks an emulator profile's images: the same version when
    given, else any (a newer qemu-img checks older images too), else the one on PATH."""
    by_version = {b.major_minor: b for b in settings.qemus.values()}
    if version in by_version:
        return by_version[version]
    if by_version:
        return next(iter(by_version.values()))
    found = QemuBinaries.find()
    return found if found.img else None


@dataclass
class _Verdict:
    """What the golden comparison concluded (see conformance.report.html.CaseRecord.golden)."""

    golden: str
    text: str = ""


def _check_golden(item: pytest.Function, machine: VM, verdict: _Verdict) -> None:
    settings = item.config.stash[SETTINGS]
    if _emulator_only_reason(item) is not None:
        verdict.golden = "not compared"  # emulator-only: the case's assertions are the check
        return
    module = item.module.__name__.rsplit(".", 1)[-1]
    golden = Golden.for_case(golden_set(settings.golden_dir, machine.target.version), module,
                             item.originalname)
    normalized = machine.normalized()
    if settings.update_golden:
        golden.write(normalized, machine.target.describe())
        verdict.golden = "recorded"
        return
    problem = None
    try:
        golden.check(normalized)
        verdict.golden = "equal"
    except GoldenMissing as exc:
        problem = verdict.text = str(exc)
        verdict.golden = "missing"
    except GoldenMismatch as exc:
        problem = verdict.text = str(exc)
        verdict.golden = "mismatch"
    if problem is not None:  # outside the except block: no chained traceback in the report
        pytest.fail(problem, pytrace=False)


_RECORD_KEY = pytest.StashKey[dict[str, Any]]()


def _keep_outputs(item: pytest.Function, machine: VM, verdict: _Verdict) -> None:
    """Dump the normalized log and keep the report record; never masks the case's own error."""
    settings = item.config.stash[SETTINGS]
    if settings.dump_logs_dir is not None:
        module = item.module.__name__.rsplit(".", 1)[-1]
        path = settings.dump_logs_dir / machine.target.name / module / f"{_case_name(item)}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        normalized = normalize(machine.log, machine.paths, machine.target.version)
        path.write_text(normalized.render(), encoding="utf-8")
        if normalized.hidden:  # what rules J1 and J2 took out, for scripts/repeat_runs.py's evidence
            path.with_suffix(".hidden.json").write_text(json.dumps(normalized.hidden, sort_keys=True),
                                                        encoding="utf-8")
    if settings.report_dir is not None:
        record = CaseRecord(
            golden=verdict.golden,
            golden_text=verdict.text,
            timeline=timeline_from_log(machine.log, machine.paths).to_json(),
            doc=docstring_summary(item.obj.__doc__),
            module=item.module.__name__,
            line=item.location[1] or 0,
        )
        item.stash[_RECORD_KEY] = record.to_json()


def _case_name(item: pytest.Item) -> str:
    """The case's name without its target: ``test_x`` or ``test_x[other-params]``."""
    name = getattr(item, "originalname", item.name)
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return name
    ids = callspec.id.split("-")
    target = callspec.params.get("target")
    if target in ids:
        ids.remove(target)
    return f"{name}[{'-'.join(ids)}]" if ids else name


def _case_key(item: pytest.Item) -> str:
    module = getattr(getattr(item, "module", None), "__name__", "") or item.nodeid.split("::")[0]
    return f"{module.rsplit('.', 1)[-1]}::{_case_name(item)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Tag each report with its target, case, emulator-only reason and upstream test, and the
    call report (or a setup report that ends the test) with the report record.  Everything is
    plain JSON data in user_properties, so it reaches the xdist controller."""
    outcome: Any = yield
    report = outcome.get_result()
    callspec = getattr(item, "callspec", None)
    if callspec is None or "target" not in callspec.params:
        return
    properties = report.user_properties
    properties.append((TARGET_PROPERTY, callspec.params["target"]))
    properties.append((CASE_PROPERTY, _case_key(item)))
    reason = _emulator_only_reason(item)
    if reason is not None:
        properties.append((EMULATOR_ONLY_PROPERTY, reason))
    marker = item.get_closest_marker("upstream")
    upstream = upstream_of(str(marker.args[0]) if marker and marker.args else None,
                           getattr(getattr(item, "obj", None), "__doc__", None))
    if upstream:
        properties.append((UPSTREAM_PROPERTY, upstream))
    settings = item.config.stash[SETTINGS]
    if settings.report_dir is None:
        return
    if call.when == "call":
        record = item.stash.get(_RECORD_KEY, None)
    elif call.when == "setup" and not report.passed:
        record = None  # no call phase follows: still tell the report the case's docstring
    else:
        return
    if record is None:
        obj = getattr(item, "obj", None)
        record = CaseRecord(golden="not reached", doc=docstring_summary(getattr(obj, "__doc__", None)),
                            module=getattr(getattr(item, "module", None), "__name__", ""),
                            line=item.location[1] or 0).to_json()
        if reason is not None:
            record["golden"] = "not compared"
    properties.append((RECORD_PROPERTY, record))


class _Reporter:
    """Collects outcomes per target and writes the terminal summary (controller side too)."""

    def __init__(self, settings: Settings, collector: ReportCollector | None = None) -> None:
        self.settings = settings
        self.collector = collector

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.settings.tally.record(report)

    @pytest.hookimpl(tryfirst=True)  # before the terminal summary, which names the file
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.collector is not None:
            self.collector.write()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        settings = self.settings
        if not settings.explicit_targets and not any(
                settings.tally.outcomes.get(name) for name in settings.targets):
            return  # not a conformance run (e.g. unit tests only)
        settings.tally.write(terminalreporter, {info.name: info.description
                                                for info in _target_infos(settings)})
        if self.collector is not None and self.collector.written is not None:
            terminalreporter.write_line(f"report: {self.collector.written}")
        if settings.dump_logs_dir is not None:
            terminalreporter.write_line(f"normalized logs: {settings.dump_logs_dir}")
