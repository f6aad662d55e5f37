"""`blocktxn iotests`: the runner on a tiny scratch QEMU tree (environment, scratch build folder,
exit status, leftover processes, tool checks), and once on the shared real QEMU trees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conformance.iotests import runner as iotests

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "qemu-iotests"
TIMEOUT = 120

FAKE_CHECK = textwrap.dedent("""\
    #!/usr/bin/env python3
    import os, subprocess, sys
    here = os.getcwd()
    report = {
        "argv": sys.argv[1:],
        "argv0_is_link": os.path.islink(sys.argv[0]),
        "source": os.path.dirname(os.readlink(sys.argv[0])),
        "cwd": here,
    }
    for var in ("QEMU_PROG", "QEMU_IMG_PROG", "QEMU_IO_PROG", "QEMU_NBD_PROG", "QSD_PROG",
                "PYTHONDONTWRITEBYTECODE", "BLOCKTXN_QEMU_VERSION"):
        report[var] = os.environ.get(var)
    machine_help = subprocess.run([os.environ["QEMU_PROG"], "-machine", "help"],
                                  capture_output=True, text=True, check=True).stdout
    report["default"] = [l.split()[0] for l in machine_help.splitlines() if l.endswith("(default)")]
    # a process left behind, as a VM whose test's setUp failed after launch
    leftover = subprocess.Popen(["sleep", "300"])
    report["leftover"] = leftover.pid
    open(os.path.join(here, "report"), "w").write(repr(report))
    print(repr(report))
    sys.exit(int(os.environ.get("FAKE_STATUS", "0")))
""")


def fake_tree(tmp: Path, version: str = "7.2.22") -> Path:
    tree = tmp / "qemu"
    (tree / "tests" / "qemu-iotests").mkdir(parents=True)
    (tree / "VERSION").write_text(version + "\n")
    check = tree / "tests" / "qemu-iotests" / "check"
    check.write_text(FAKE_CHECK)
    check.chmod(0o755)
    return tree


def fake_tools(tmp: Path, version: str = "7.2.22", skip: str = "") -> Path:
    tools = tmp / "tools"
    tools.mkdir()
    for name in iotests.TOOLS.values():
        if name == skip:
            continue
        tool = tools / name
        tool.write_text(f"#!/bin/sh\necho '{name} version {version} (fake)'\n")
        tool.chmod(0o755)
    return tools


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blocktxn_cli.main", "iotests", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env={**os.environ, **env})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")


def test_runner_environment_scratch_status_and_cleanup(tmp_path: Path) -> None:
    tree, tools = fake_tree(tmp_path), fake_tools(tmp_path)
    before = sorted(p.name for p in tree.rglob("*"))
    out = run(["--qemu-src", str(tree), "--tools-dir", str(tools), "-x", "124"], FAKE_STATUS="3")
    assert out.returncode == 3, out.stderr
    report = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own fake check's repr
    assert report["argv"] == ["-qcow2", "-x", "124"]  # default format added in front
    assert report["argv0_is_link"] and report["source"] == str(tree / "tests" / "qemu-iotests")
    assert report["cwd"].endswith("/build/tests/qemu-iotests") and not report["cwd"].startswith(str(tree))
    for var, name in iotests.TOOLS.items():
        assert report[var] == str(tools / name)
    assert report["PYTHONDONTWRITEBYTECODE"] == "1" and report["BLOCKTXN_QEMU_VERSION"] == "7.2"
    assert os.access(report["QEMU_PROG"], os.X_OK) is False  # the scratch folder is gone
    assert report["default"] == ["pc-i440fx-7.2"]
    deadline = time.monotonic() + 10
    while alive(report["leftover"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(report["leftover"]), "the runner left a process of check's session running"
    assert sorted(p.name for p in tree.rglob("*")) == before  # nothing written into the tree


def test_runner_keeps_a_given_format_and_passes_qemu(tmp_path: Path) -> None:
    tree, tools = fake_tree(tmp_path, "10.0.2"), fake_tools(tmp_path, "10.0.2")
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\necho 'pc-i440fx-10.0 Standard PC (default)'\n")
    qemu.chmod(0o755)
    out = run(["--qemu-src", str(tree), "--tools-dir", str(tools), "--qemu", str(qemu), "-raw", "055"])
    assert out.returncode == 0, out.stderr
    report = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307
    assert report["argv"] == ["-raw", "055"]
    assert report["QEMU_PROG"] == str(qemu) and report["BLOCKTXN_QEMU_VERSION"] == "10.0"


@pytest.mark.parametrize(("skip", "version", "message"), [
    ("qemu-nbd", "7.2.22", "qemu-nbd (QEMU_NBD_PROG) not found in"),
    ("", "10.0.2", "(QEMU_IMG_PROG) is version 10.0.2, but the iotests are 7.2.22"),
])
def test_runner_refuses_missing_or_mismatched_tools(tmp_path: Path, skip: str, version: str,
                                                    message: str) -> None:
    tree, tools = fake_tree(tmp_path), fake_tools(tmp_path, version, skip)
    out = run(["--qemu-src", str(tree), "--tools-dir", str(tools), "124"])
    assert out.returncode == 2
    assert message in out.stderr and "--tools-dir" in out.stderr
    assert not (tmp_path / "qemu" / "tests" / "qemu-iotests" / "report").exists()


def test_runner_rejects_a_folder_that_is_no_qemu_tree(tmp_path: Path) -> None:
    out = run(["--qemu-src", str(tmp_path), "124"])
    assert out.returncode == 2 and "no VERSION file" in out.stderr


def test_timeout_kills_checks_session(tmp_path: Path) -> None:
    tree, tools = fake_tree(tmp_path), fake_tools(tmp_path)
    check = tree / "tests" / "qemu-iotests" / "check"
    check.write_text("#!/usr/bin/env python3\nimport time\ntime.sleep(300)\n")
    start = time.monotonic()
    out = run(["--qemu-src", str(tree), "--tools-dir", str(tools), "--timeout", "2", "124"])
    assert out.returncode == 124 and "did not finish within 2 s" in out.stderr
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("version", ["7.2.22", "10.0.2"])
def test_one_real_iotest_through_the_runner(version: str) -> None:
    tree = SHARED / version
    if not (tree / "tests" / "qemu-iotests" / "check").exists():
        reason = f"{tree} absent: no QEMU iotests tree to run"
        print(reason)
        pytest.skip(reason)
    try:
        iotests.find_tools(iotests.Source.load(str(tree)), None)
    except iotests.RunnerError as exc:
        print(exc)
        pytest.skip(str(exc))
    out = run(["--qemu-src", str(tree), "124"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Passed all 1 iotests" in out.stdout


def test_emulator_launcher_is_executable(tmp_path: Path) -> None:
    launcher = iotests.emulator_launcher(tmp_path)
    out = subprocess.run([str(launcher), "-machine", "help"], capture_output=True, text=True,
                         timeout=TIMEOUT, check=False, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 0 and "(default)" in out.stdout
    assert shutil.which(str(launcher)) is not None
