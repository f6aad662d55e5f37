"""pytest plugin: runs conformance cases against the emulator and/or real QEMU 7.2.

A case is an ``async def test_...(vm)`` function.  The plugin parametrizes it per selected
target (``test_x[qemu]``), gives it a ``vm`` (conformance.vm.VM) in a private directory, runs
the body with asyncio, shuts the target down, and compares the normalized session with the
golden recorded from real QEMU (or records it, with ``--update-golden``).  Registered as the
``blocktxn`` entry point; disable with ``-p no:blocktxn``.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conformance.golden import DEFAULT_GOLDEN_DIR, Golden, GoldenMismatch, GoldenMissing
from conformance.summary import TARGET_PROPERTY, Tally
from conformance.targets import (
    INSTALL_HINT,
    TARGET_NAMES,
    EmulatorTarget,
    QemuBinaries,
    QemuTarget,
    Target,
)
from conformance.vm import DEFAULT_TIMEOUT, VM

CASE_TIMEOUT = 90.0


@dataclass
class Settings:
    """The run's choices, made once in pytest_configure."""

    targets: list[str]
    qemu: QemuBinaries
    update_golden: bool
    require_qemu: bool
    emulator_process: bool
    golden_dir: Path
    qmp_timeout: float
    tally: Tally
    explicit_targets: bool = False


SETTINGS = pytest.StashKey[Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("blocktxn", "blocktxn conformance")
    group.addoption("--target", action="append", choices=TARGET_NAMES, dest="blocktxn_targets",
                    help="run conformance cases against this target (repeatable; default emulator)")
    group.addoption("--qemu", dest="blocktxn_qemu", default=None,
                    help="qemu-system-x86_64 binary (default: from PATH)")
    group.addoption("--qemu-img", dest="blocktxn_qemu_img", default=None,
                    help="qemu-img binary (default: from PATH)")
    group.addoption("--qemu-io", dest="blocktxn_qemu_io", default=None,
                    help="qemu-io binary (default: from PATH)")
    group.addoption("--update-golden", action="store_true", dest="blocktxn_update_golden",
                    help="record golden logs (only with --target qemu alone)")
    group.addoption("--require-qemu", action="store_true", dest="blocktxn_require_qemu",
                    help="fail qemu-target cases when QEMU is missing instead of skipping them")
    group.addoption("--emulator-process", action="store_true", dest="blocktxn_emulator_process",
                    help="run the emulator as `python -m emulator` instead of in-process")
    group.addoption("--golden-dir", dest="blocktxn_golden_dir", default=None,
                    help=f"directory of golden logs (default {DEFAULT_GOLDEN_DIR})")
    group.addoption("--qmp-timeout", dest="blocktxn_qmp_timeout", type=float,
                    default=DEFAULT_TIMEOUT, help="bound of every QMP wait, in seconds")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "blocktxn_case: a conformance case run per target")
    targets = list(dict.fromkeys(config.getoption("blocktxn_targets") or ["emulator"]))
    update = bool(config.getoption("blocktxn_update_golden"))
    if update and targets != ["qemu"]:
        raise pytest.UsageError("--update-golden records goldens from real QEMU only: "
                                "use it with --target qemu and no other target")
    qemu = QemuBinaries.find(config.getoption("blocktxn_qemu"),
                             config.getoption("blocktxn_qemu_img"),
                             config.getoption("blocktxn_qemu_io"))
    golden_dir = config.getoption("blocktxn_golden_dir")
    config.stash[SETTINGS] = Settings(
        targets=targets,
        qemu=qemu,
        update_golden=update,
        require_qemu=bool(config.getoption("blocktxn_require_qemu")),
        emulator_process=bool(config.getoption("blocktxn_emulator_process")),
        golden_dir=Path(golden_dir).resolve() if golden_dir else DEFAULT_GOLDEN_DIR,
        qmp_timeout=float(config.getoption("blocktxn_qmp_timeout")),
        tally=Tally(),
        explicit_targets=bool(config.getoption("blocktxn_targets")),
    )
    config.pluginmanager.register(_Reporter(config.stash[SETTINGS]), "blocktxn-reporter")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        targets = metafunc.config.stash[SETTINGS].targets
        metafunc.parametrize("target", targets, ids=targets, indirect=True)


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Target:
    """The Target this instance of the case runs against (skips when QEMU is missing)."""
    settings = request.config.stash[SETTINGS]
    name = request.param
    if name == "emulator":
        return EmulatorTarget(separate_process=settings.emulator_process)
    if not settings.qemu.complete:
        missing = ", ".join(settings.qemu.missing()) or "a working qemu-system-x86_64"
        message = f"QEMU not found ({missing}): {INSTALL_HINT}"
        if settings.require_qemu:
            pytest.fail(f"--require-qemu: {message}", pytrace=False)
        pytest.skip(message)
    return QemuTarget(settings.qemu)


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
    try:
        asyncio.run(_run_case(pyfuncitem, kwargs, machine))
        if machine is not None:
            _check_golden(pyfuncitem, machine)
    except BaseException:
        if machine is not None:
            pyfuncitem.add_report_section("call", "blocktxn log", machine.diagnostics())
        raise
    return True


def _check_golden(item: pytest.Function, machine: VM) -> None:
    settings = item.config.stash[SETTINGS]
    module = item.module.__name__.rsplit(".", 1)[-1]
    golden = Golden.for_case(settings.golden_dir, module, item.originalname)
    normalized = machine.normalized()
    if settings.update_golden:
        golden.write(normalized, machine.target.describe())
        return
    problem = None
    try:
        golden.check(normalized)
    except (GoldenMissing, GoldenMismatch) as exc:
        problem = str(exc)
    if problem is not None:  # outside the except block: no chained traceback in the report
        pytest.fail(problem, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Tag each report with its target, for the per-target summary (works through xdist)."""
    outcome: Any = yield
    report = outcome.get_result()
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "target" in callspec.params:
        report.user_properties.append((TARGET_PROPERTY, callspec.params["target"]))


class _Reporter:
    """Collects outcomes per target and writes the terminal summary (controller side too)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.settings.tally.record(report)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        settings = self.settings
        if not settings.explicit_targets and not any(
                settings.tally.outcomes.get(name) for name in settings.targets):
            return  # not a conformance run (e.g. unit tests only)
        settings.tally.write(terminalreporter, settings.targets, settings.qemu.version, INSTALL_HINT)
