"""The ``blocktxn`` command: run the conformance suite, the unit tests, or the emulator.

Subcommands:
  conform [--report DIR] [pytest args]  conformance cases (on the emulator unless --target given)
  test [--require-qemu] [--report DIR] [...]  unit tests + conformance on the emulator + on real
                               QEMU if found
  emulate [QEMU-like args]     run the emulator in the foreground (emulator.__main__.main)
  record-golden [-k EXPR] [...] record goldens from real QEMU (--target qemu --update-golden)

``--report DIR`` (conform, test, record-golden) writes DIR/report.html and DIR/junit.xml (it
becomes the plugin's ``--blocktxn-report DIR``).  pytest runs in a child process (a fresh interpreter per run), and its exit status is returned
unchanged, including 5 ("no tests collected").  Extra arguments such as ``-n auto`` go to pytest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from conformance.targets import INSTALL_HINT, QemuBinaries

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "conformance" / "cases"
UNIT_DIR = ROOT / "tests"


def pytest_argv(paths: Sequence[Path], extra: Sequence[str]) -> list[str]:
    """The argv of a pytest child that loads our plugin explicitly (also used by scripts/)."""
    argv = [sys.executable, "-m", "pytest", "--rootdir", str(ROOT)]
    if (ROOT / "pyproject.toml").is_file():
        argv += ["-c", str(ROOT / "pyproject.toml")]
    # Our own plugin is loaded explicitly so that it works without an installed entry point;
    # "-p no:blocktxn" keeps the entry point from loading it a second time.
    argv += ["-p", "no:blocktxn", "-p", "conformance.plugin"]
    return argv + [str(path) for path in paths if path.exists()] + list(extra)


def run_pytest(paths: Sequence[Path], extra: Sequence[str]) -> int:
    """Run pytest on `paths` with `extra` arguments; return pytest's exit status."""
    return subprocess.run(pytest_argv(paths, extra), cwd=ROOT, check=False).returncode


def translate_report_option(extra: Sequence[str]) -> list[str]:
    """``--report DIR`` / ``--report=DIR`` become the plugin's ``--blocktxn-report DIR``, with DIR
    made absolute here: pytest runs in the repository, not in the caller's directory."""
    result: list[str] = []
    args = iter(extra)
    for arg in args:
        if arg == "--report":
            directory = next(args, None)
            if directory is None:
                raise SystemExit("blocktxn: --report needs a directory")
            result += ["--blocktxn-report", str(Path(directory).resolve())]
        elif arg.startswith("--report="):
            result += ["--blocktxn-report", str(Path(arg.removeprefix("--report=")).resolve())]
        elif not arg.startswith("-") and Path(arg.split("::")[0]).exists():
            path, sep, rest = arg.partition("::")  # a case path: pytest runs in the repository
            result.append(str(Path(path).resolve()) + sep + rest)
        else:
            result.append(arg)
    return result


def _case_paths(extra: list[str]) -> list[Path]:
    """The cases to run: case files or directories named on the command line, else all of them.

    (Naming a file must not also run every other case — record-golden would re-record them all.)"""
    named = [arg for arg in extra if not arg.startswith("-") and Path(arg.split("::")[0]).exists()]
    return [] if named else [CASES_DIR]


def _conform(extra: list[str]) -> int:
    extra = translate_report_option(extra)
    targets = [] if "--target" in extra else ["--target", "emulator"]
    return run_pytest(_case_paths(extra), [*targets, *extra])


def _test(extra: list[str]) -> int:
    extra = translate_report_option(extra)
    require = "--require-qemu" in extra
    extra = [arg for arg in extra if arg != "--require-qemu"]
    qemu = QemuBinaries.find()
    targets = ["--target", "emulator"]
    if qemu.complete:
        print(f"blocktxn test: real QEMU found: {qemu.version}", flush=True)
        targets += ["--target", "qemu", "--qemu-img-check"]
    elif require:
        print(f"blocktxn test: QEMU not found ({', '.join(qemu.missing())}) and --require-qemu "
              f"given: the qemu-target cases will fail. Install: {INSTALL_HINT}", flush=True)
        targets += ["--target", "qemu", "--require-qemu"]
    else:
        print(f"blocktxn test: QEMU not found ({', '.join(qemu.missing())}); conformance runs "
              f"on the emulator only. Install: {INSTALL_HINT}", flush=True)
    return run_pytest([UNIT_DIR, CASES_DIR], [*targets, *extra])


def _record_golden(extra: list[str]) -> int:
    extra = translate_report_option(extra)
    return run_pytest(_case_paths(extra), ["--target", "qemu", "--update-golden", "--require-qemu",
                                           *extra])


def _emulate(extra: list[str]) -> int:
    from emulator.__main__ import main as emulator_main

    status = emulator_main(extra)
    return int(status or 0)


def _fuzz(extra: list[str]) -> int:
    from conformance.differential import main as fuzz_main

    return int(fuzz_main(extra) or 0)


def _img(extra: list[str]) -> int:
    from emulator.tools.img import main as img_main

    return int(img_main(extra) or 0)


def _iotests(extra: list[str]) -> int:
    from conformance.iotests import main as iotests_main

    return int(iotests_main(extra) or 0)


def _io(extra: list[str]) -> int:
    from emulator.tools.io import main as io_main

    return int(io_main(extra) or 0)


COMMANDS = {
    "conform": (_conform, "conformance cases on the emulator target (extra args go to pytest)"),
    "test": (_test, "unit tests + conformance on the emulator and, if found, real QEMU"),
    "emulate": (_emulate, "run the emulator in the foreground with QEMU-like arguments"),
    "record-golden": (_record_golden, "record golden logs from real QEMU (-k EXPR to select)"),
    "fuzz": (_fuzz, "differential fuzzing against real QEMU: --minutes M [--seed S] [--out DIR]"),
    "img": (_img, "qemu-img work-alike over the emulator's image code"),
    "io": (_io, "qemu-io work-alike over the emulator's image code"),
    "iotests": (_iotests, "QEMU's own iotests against the emulator: --qemu-src DIR [--qemu BIN] [tests]"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blocktxn`` console script."""
    parser = argparse.ArgumentParser(
        prog="blocktxn", description="blocktxn: QEMU 7.2 block-layer emulator and its conformance suite")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    handler = COMMANDS[args.command][0]
    return handler(extra)


if __name__ == "__main__":
    sys.exit(main())
