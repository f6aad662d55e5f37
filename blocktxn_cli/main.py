"""The ``blocktxn`` command: run the conformance suite, the unit tests, or the emulator and its tools.

Subcommands (``blocktxn COMMAND --help`` for each):
  conform        conformance cases (on the emulator's profiles unless --target is given)
  test           unit tests + conformance on the emulator + on every real QEMU found
  record-golden  record goldens from real QEMU (--qemu BIN, -k EXPR to select)
  emulate        run the emulator in the foreground with QEMU's arguments
  fuzz, img, io  differential fuzzing, and the qemu-img / qemu-io work-alikes
  bench          the benchmarks of bench/, emulator and real QEMU side by side

blocktxn's own options are parsed here with argparse; everything else (``-k EXPR``, ``-x``,
``-n auto``, case files) goes to pytest, which runs in a child process (a fresh interpreter per
run) whose exit status is returned unchanged, including 5 ("no tests collected").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from conformance.targets import EMULATOR_VERSIONS, INSTALL_HINT, QemuBinaries, QemuNotUsable

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "conformance" / "cases"
UNIT_DIR = ROOT / "tests"
#: Where scripts/setup-qemu-10.sh unpacks QEMU 10.0.2 by default.
QEMU_10_FOLDER = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blocktxn" / "qemu-10.0.2"
#: The real QEMU versions `blocktxn test --require-qemu` needs (each has a golden set).
REFERENCE_VERSIONS = EMULATOR_VERSIONS
PYTEST_HINT = ("Any other option goes to pytest (e.g. -k EXPR, -x, -v, -n auto, a case file); "
               "`.venv/bin/python -m pytest --help` lists pytest's own.")


#: The pytest plugins a blocktxn run loads, by module (with --disable-plugin-autoload: pytest's
#: automatic loading of installed plugins is off, in pytest-xdist's workers too).  Autoloading costs the suite twice: pytest marks
#: every package of a plugin's distribution for assertion rewriting, and blocktxn's includes
#: the emulator (rewritten again in every run, as PYTHONDONTWRITEBYTECODE keeps no cache); and
#: hypothesis's plugin imports hypothesis (about a second) at the terminal summary of every run.
SUITE_PLUGINS = ("xdist.plugin", "xdist.looponfail", "pytest_timeout", "conformance.plugin")
#: hypothesis's plugin, for runs that include the unit tests (some use hypothesis).
HYPOTHESIS_PLUGIN = "_hypothesis_pytestplugin"


def pytest_argv(paths: Sequence[Path], extra: Sequence[str], prog: str = "blocktxn") -> list[str]:
    """The argv of a pytest child that loads our plugin explicitly (also used by scripts/)."""
    argv = [sys.executable, str(ROOT / "blocktxn_cli" / "pytest_main.py"), prog, "--rootdir", str(ROOT)]
    if (ROOT / "pyproject.toml").is_file():
        argv += ["-c", str(ROOT / "pyproject.toml")]
    # Our own plugin is loaded explicitly so that it works without an installed entry point;
    # "-p no:blocktxn" keeps the entry point from loading it a second time (should autoloading
    # be on after all).
    argv += ["--disable-plugin-autoload", "-p", "no:blocktxn"]
    plugins = list(SUITE_PLUGINS)
    named = [Path(arg.split("::")[0]).resolve() for arg in extra if not arg.startswith("-")]
    if any(path == UNIT_DIR or UNIT_DIR in path.parents for path in [*paths, *named]):
        plugins.append(HYPOTHESIS_PLUGIN)
    for plugin in plugins:
        argv += ["-p", plugin]
    return argv + [str(path) for path in paths if path.exists()] + list(extra)


def run_pytest(paths: Sequence[Path], extra: Sequence[str], prog: str = "blocktxn") -> int:
    """Run pytest on `paths` with `extra` arguments; return pytest's exit status."""
    return subprocess.run(pytest_argv(paths, extra, prog), cwd=ROOT, check=False).returncode


def is_case_path(arg: str) -> bool:
    """A command-line word that names test files: a ``.py`` file (optionally ``::test``) or a
    folder holding ``test_*.py``.  Other existing paths (``emulator/``, a binary) are not cases."""
    path = Path(arg.split("::")[0])
    if path.is_file():
        return path.suffix == ".py"
    return path.is_dir() and any(path.rglob("test_*.py"))


def pytest_extra(extra: Sequence[str]) -> tuple[list[str], list[Path]]:
    """Split pytest's share of the command line into its arguments (case paths made absolute:
    pytest runs in the repository, not in the caller's directory) and the case paths named."""
    result: list[str] = []
    named: list[Path] = []
    for arg in extra:
        if not arg.startswith("-") and is_case_path(arg):
            path, sep, rest = arg.partition("::")
            named.append(Path(path).resolve())
            result.append(str(Path(path).resolve()) + sep + rest)
        else:
            result.append(arg)
    return result, named


def _add_suite_options(parser: argparse.ArgumentParser, *, record: bool = False) -> None:
    group = parser.add_argument_group("targets and QEMU binaries")
    if not record:
        group.add_argument("--target", action="append", metavar="KIND[@VERSION]",
                           help="emulator (every profile: " + ", ".join(EMULATOR_VERSIONS) + "), "
                                "emulator@VERSION, qemu (every --qemu), qemu@VERSION; repeatable")
    group.add_argument("--qemu", action="append", metavar="BIN",
                       help="a real qemu-system-x86_64 (repeatable: one target per binary); its "
                            "qemu-img and qemu-io are taken from beside it, then from PATH")
    group.add_argument("--qemu-img", metavar="BIN", help="qemu-img, with a single --qemu")
    group.add_argument("--qemu-io", metavar="BIN", help="qemu-io, with a single --qemu")
    if not record:
        group.add_argument("--require-qemu", action="store_true",
                           help="a real-QEMU target whose QEMU is missing fails instead of skipping")
        group.add_argument("--emulator-process", action="store_true",
                           help="run the emulator as a separate process, not in-process")
    out = parser.add_argument_group("goldens and reports")
    out.add_argument("--golden-dir", metavar="DIR",
                     help="root of the golden sets (qemu-MAJOR.MINOR/ folders): compare against it"
                          + (", record into it" if record else "") + "; default golden/")
    out.add_argument("--report", metavar="DIR",
                     help="write DIR/report.html (case x target matrix, golden diffs, what changed "
                          "between versions, job timelines) and DIR/junit.xml")
    if not record:
        out.add_argument("--dump-logs", metavar="DIR",
                         help="write every case's normalized log to DIR/<target>/<module>/<case>.log")


def _plugin_args(args: argparse.Namespace) -> list[str]:
    """blocktxn's options as the pytest plugin's options."""
    result: list[str] = []
    for target in getattr(args, "target", None) or []:
        result += ["--target", target]
    for qemu in args.qemu or []:
        result += ["--qemu", qemu]
    for name, option in (("qemu_img", "--qemu-img"), ("qemu_io", "--qemu-io"),
                         ("golden_dir", "--golden-dir"), ("report", "--blocktxn-report"),
                         ("dump_logs", "--blocktxn-dump-logs")):
        value = getattr(args, name, None)
        if value:
            result += [option, str(Path(value).resolve()) if name != "qemu_img" and name != "qemu_io"
                       else value]
    if getattr(args, "require_qemu", False):
        result.append("--require-qemu")
    if getattr(args, "emulator_process", False):
        result.append("--emulator-process")
    return result


def _check_named_qemus(args: argparse.Namespace) -> None:
    """A binary the user named must start as QEMU: fail now, with what it printed."""
    for qemu in args.qemu or []:
        try:
            QemuBinaries.named(qemu, args.qemu_img if len(args.qemu) == 1 else None,
                               args.qemu_io if len(args.qemu) == 1 else None)
        except QemuNotUsable as exc:
            raise SystemExit(f"blocktxn: {exc}") from None


@dataclass
class PytestPlan:
    """What a suite subcommand runs: pytest on `paths` with `args` (or `status` without pytest)."""

    paths: list[Path]
    args: list[str]
    prog: str
    status: int | None = None


def _conform(args: argparse.Namespace, extra: list[str]) -> PytestPlan:
    _check_named_qemus(args)
    extra, named = pytest_extra(extra)
    if not args.target:
        args.target = ["qemu"] if args.qemu else ["emulator"]
    return PytestPlan([] if named else [CASES_DIR], [*_plugin_args(args), *extra], "blocktxn conform")


def discover_qemus() -> list[QemuBinaries]:
    """The real QEMUs `blocktxn test` uses by itself: the one on PATH, and QEMU 10.0.2 where
    scripts/setup-qemu-10.sh unpacked it."""
    found = []
    on_path = QemuBinaries.find()
    if on_path.complete:
        found.append(on_path)
    unpacked = QEMU_10_FOLDER / "usr" / "bin" / "qemu-system-x86_64"
    if unpacked.is_file():
        binaries = QemuBinaries.find(str(unpacked))
        if binaries.complete and binaries.major_minor not in {b.major_minor for b in found}:
            found.append(binaries)
    return found


def _test(args: argparse.Namespace, extra: list[str]) -> PytestPlan:
    _check_named_qemus(args)
    extra, _ = pytest_extra(extra)
    if not args.qemu:
        qemus = discover_qemus()
        args.qemu = [str(b.system) for b in qemus]
        for binaries in qemus:
            print(f"blocktxn test: real QEMU found: {binaries.version} ({binaries.system})", flush=True)
        lacking = [v for v in REFERENCE_VERSIONS if v not in {b.major_minor for b in qemus}]
        if args.require_qemu and lacking:
            print(f"blocktxn test: --require-qemu: no real QEMU {', '.join(lacking)} found. "
                  f"QEMU 7.2: {INSTALL_HINT}; QEMU 10.0: scripts/setup-qemu-10.sh", flush=True)
            return PytestPlan([], [], "blocktxn test", status=1)
    if not args.target:
        args.target = ["emulator", "qemu"] if args.qemu or args.require_qemu else ["emulator"]
    if not args.qemu:
        verdict = "the qemu-target cases will fail" if args.require_qemu else \
            "conformance runs on the emulator only"
        print(f"blocktxn test: no real QEMU found; {verdict}. Install: {INSTALL_HINT} (and "
              "scripts/setup-qemu-10.sh for QEMU 10.0)", flush=True)
    image_check = ["--qemu-img-check"] if args.qemu else []
    return PytestPlan([UNIT_DIR, CASES_DIR], [*_plugin_args(args), *image_check, *extra], "blocktxn test")


def _record_golden(args: argparse.Namespace, extra: list[str]) -> PytestPlan:
    _check_named_qemus(args)
    extra, named = pytest_extra(extra)
    return PytestPlan([] if named else [CASES_DIR],
                      ["--target", "qemu", "--update-golden", "--require-qemu", *_plugin_args(args),
                       *extra], "blocktxn record-golden")


def _emulate(extra: list[str]) -> int:
    from emulator.__main__ import main as emulator_main

    return int(emulator_main(extra) or 0)


def _fuzz(extra: list[str]) -> int:
    from conformance.differential.fuzz import main as fuzz_main

    return int(fuzz_main(extra) or 0)


def _img(extra: list[str]) -> int:
    from emulator.tools.img import main as img_main

    return int(img_main(extra) or 0)


def _iotests(extra: list[str]) -> int:
    from conformance.iotests.runner import main as iotests_main

    return int(iotests_main(extra) or 0)


def _bench(extra: list[str]) -> int:
    """bench/bench.py (the benchmarks live beside the package, in the repository)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("blocktxn_bench", ROOT / "bench" / "bench.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"blocktxn bench: {ROOT / 'bench' / 'bench.py'} not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return int(module.main(extra) or 0)


def _io(extra: list[str]) -> int:
    from emulator.tools.io import main as io_main

    return int(io_main(extra) or 0)


#: Subcommands whose options blocktxn parses: (handler, summary, is-record).
SUITE_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace, list[str]], PytestPlan], str, bool]] = {
    "conform": (_conform, "run the conformance cases (default: on every emulator profile)", False),
    "test": (_test, ("run all tests: unit tests, conformance on the emulator and on every real QEMU "
                     "found (PATH, and QEMU 10.0 from scripts/setup-qemu-10.sh)"), False),
    "record-golden": (_record_golden, ("record goldens from real QEMU into golden/qemu-MAJOR.MINOR "
                                       "(--qemu BIN; -k EXPR or case files to select)"), True),
}
#: Subcommands that take their own command line as it is.
PASSTHROUGH_COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "emulate": (_emulate, "run the emulator in the foreground with QEMU's arguments"),
    "fuzz": (_fuzz, "differential fuzzing against real QEMU: --minutes M [--seed S] [--out DIR]"),
    "img": (_img, "qemu-img work-alike over the emulator's image code"),
    "io": (_io, "qemu-io work-alike over the emulator's image code"),
    "iotests": (_iotests, "QEMU's own iotests against the emulator: --qemu-src DIR [--qemu BIN] [tests]"),
    "bench": (_bench, ("benchmarks, emulator and real QEMU side by side: one table, JSON and SVG "
                       "[--quick] [--out DIR]")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blocktxn",
        description="blocktxn: an emulator of QEMU's block layer (QEMU " + " and ".join(EMULATOR_VERSIONS)
                    + " profiles) and its conformance suite against real QEMU")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, summary, record) in SUITE_COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary, epilog=PYTEST_HINT,
                                 allow_abbrev=False)
        _add_suite_options(command, record=record)
    for name, (_, summary) in PASSTHROUGH_COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def plan(argv: Sequence[str]) -> PytestPlan:
    """The pytest run a suite subcommand's command line asks for (SystemExit on a usage error)."""
    args, extra = build_parser().parse_known_args(list(argv))
    return SUITE_COMMANDS[args.command][0](args, extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blocktxn`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH_COMMANDS:
        return PASSTHROUGH_COMMANDS[argv[0]][0](argv[1:])
    chosen = plan(argv)
    if chosen.status is not None:
        return chosen.status
    return run_pytest(chosen.paths, chosen.args, chosen.prog)


if __name__ == "__main__":
    sys.exit(main())
