"""Version profiles: how one is selected, and every catalogued 7.2 -> 10.0 difference as a client
sees it (a real qemu.qmp client on an in-process emulator; the expected texts were measured on
QEMU 7.2.22 and QEMU 10.0.2)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from emulator.cmdline import CmdlineError, parse_args
from emulator.launcher import EmbeddedEmulator, EmulatorStartError
from emulator.tools import img
from emulator.versions import (
    DEFAULT_PROFILE,
    PROFILES,
    QEMU_7_2,
    QEMU_10_0,
    VERSION_ENV,
    UnsupportedVersion,
    lookup,
    select,
)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0
BASE = ["-M", "none", "-nodefaults", "-display", "none"]
UNSUPPORTED = ("qemu-system-x86_64: -blocktxn-version 9.1: unsupported QEMU version '9.1'; "
               "supported versions: 7.2, 10.0")


# ---- selection ----------------------------------------------------------------------------------
def test_lookup_accepts_short_names_and_full_triples() -> None:
    assert lookup("7.2") is QEMU_7_2 and lookup("7.2.22") is QEMU_7_2
    assert lookup("10.0") is QEMU_10_0 and lookup("10.0.2") is QEMU_10_0
    assert list(PROFILES) == ["7.2", "10.0"]
    for bad in ("9.1", "7.2.21", "10", ""):
        with pytest.raises(UnsupportedVersion, match="supported versions: 7.2, 10.0"):
            lookup(bad)


def test_option_beats_environment_which_beats_the_default() -> None:
    assert select("7.2", {VERSION_ENV: "10.0"}) is QEMU_7_2
    assert select(None, {VERSION_ENV: "7.2.22"}) is QEMU_7_2
    assert select(None, {VERSION_ENV: ""}) is DEFAULT_PROFILE
    assert select(None, {}) is DEFAULT_PROFILE is QEMU_10_0  # the newest


def test_cmdline_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VERSION_ENV, "10.0")
    assert parse_args([*BASE, "-blocktxn-version", "7.2"]).profile is QEMU_7_2
    assert parse_args([*BASE, "--blocktxn-version", "7.2.22"]).profile is QEMU_7_2
    assert parse_args(BASE).profile is QEMU_10_0
    monkeypatch.delenv(VERSION_ENV)
    assert parse_args(BASE).profile is QEMU_10_0
    monkeypatch.setenv(VERSION_ENV, "7.2")
    assert parse_args(BASE).profile is QEMU_7_2
    with pytest.raises(CmdlineError) as info:
        parse_args([*BASE, "-blocktxn-version", "9.1"])
    assert info.value.format() == UNSUPPORTED + "\n"
    monkeypatch.setenv(VERSION_ENV, "6.0")
    with pytest.raises(CmdlineError) as info:
        parse_args(BASE)
    assert info.value.format() == ("qemu-system-x86_64: BLOCKTXN_QEMU_VERSION=6.0: unsupported QEMU "
                                   "version '6.0'; supported versions: 7.2, 10.0\n")
    with pytest.raises(CmdlineError, match="requires an argument"):
        parse_args(["-blocktxn-version"])


def _process(argv: list[str], env_version: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(VERSION_ENV, None)
    if env_version is not None:
        env[VERSION_ENV] = env_version
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "emulator", *argv], capture_output=True, text=True,
                          env=env, timeout=TIMEOUT, check=False)


V72 = ("QEMU emulator version 7.2.22 (blocktxn-emulator)\n"
       "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n")
V100 = ("QEMU emulator version 10.0.2 (blocktxn-emulator)\n"
        "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n")


def test_process_version_and_errors() -> None:
    assert _process(["-version"], None).stdout == V100
    assert _process(["--version"], "7.2").stdout == V72
    assert _process(["-blocktxn-version", "7.2", "-version"], "10.0").stdout == V72
    assert _process(["-version", "--blocktxn-version", "10.0.2"], "7.2").stdout == V100
    done = _process([*BASE, "-blocktxn-version", "9.1"], None)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", UNSUPPORTED + "\n")
    help_text = _process(["-h"], None).stdout
    assert "-blocktxn-version VERSION" in help_text and "7.2, 10.0" in help_text


# ---- a client's view ----------------------------------------------------------------------------
class Session:
    """An in-process emulator of one version with a qcow2 drive0, and a qemu.qmp client."""

    def __init__(self, workdir: Path, version: str | None, *, env: bool = False) -> None:
        self.workdir = workdir
        for name in ("d0", "t0"):
            assert img.main(["create", "-q", "-f", "qcow2", str(workdir / f"{name}.qcow2"), "64M"]) == 0
        self.sock = workdir / "q.sock"
        argv = [*BASE, "-qmp", f"unix:{self.sock},server=on,wait=off",
                "-drive", f"if=none,id=drive0,file={workdir / 'd0.qcow2'},format=qcow2"]
        if version is not None and not env:
            argv = ["-blocktxn-version", version, *argv]
        self.emulator = EmbeddedEmulator(argv, stdout=io.StringIO())

    def run(self, *commands: tuple[str, dict[str, Any] | None]) -> tuple[dict[str, Any], list[Any]]:
        """The greeting, then each command's return value or ("error", class, desc)."""

        async def session() -> tuple[dict[str, Any], list[Any]]:
            client = QMPClient("test")
            await client.connect(str(self.sock))
            results: list[Any] = []
            try:
                for name, args in commands:
                    try:
                        results.append(await client.execute(name, args))
                    except ExecuteError as exc:
                        results.append(("error", exc.error_class, exc.error.error.desc))
            finally:
                greeting = client.greeting
                await client.disconnect()
            assert greeting is not None
            return dict(greeting._raw), results

        return asyncio.run(asyncio.wait_for(session(), TIMEOUT))


@pytest.fixture(params=["7.2", "10.0"])
def session(request: pytest.FixtureRequest, sockdir: Path) -> Iterator[tuple[str, Session]]:
    s = Session(sockdir, request.param)
    with s.emulator:
        yield request.param, s


def test_embedded_unknown_version_is_a_start_error(sockdir: Path) -> None:
    with pytest.raises(EmulatorStartError) as info:
        EmbeddedEmulator(["-blocktxn-version", "9.1", *BASE]).start()
    assert str(info.value) == UNSUPPORTED


@pytest.mark.parametrize("version", ["7.2", "10.0", None])
def test_embedded_environment_selects_the_version(monkeypatch: pytest.MonkeyPatch, sockdir: Path,
                                                  version: str | None) -> None:
    if version is None:
        monkeypatch.delenv(VERSION_ENV)
    else:
        monkeypatch.setenv(VERSION_ENV, version)
    s = Session(sockdir, version, env=True)
    with s.emulator:
        greeting, (info,) = s.run(("query-version", None))
    expected = {"7.2": (7, 2, 22), "10.0": (10, 0, 2), None: (10, 0, 2)}[version]
    major, minor, micro = expected
    assert greeting["QMP"]["version"]["qemu"] == info["qemu"] == \
        {"major": major, "minor": minor, "micro": micro}


def test_greeting_query_version_and_status(session: tuple[str, Session]) -> None:
    version, s = session
    greeting, (info, status) = s.run(("query-version", None), ("query-status", None))
    assert greeting["QMP"]["version"] == info
    if version == "7.2":
        assert info["qemu"] == {"major": 7, "minor": 2, "micro": 22}
        assert status == {"status": "running", "singlestep": False, "running": True}
    else:
        assert info["qemu"] == {"major": 10, "minor": 0, "micro": 2}
        assert status == {"status": "running", "running": True}


def test_active_field_and_file_format_specific(session: tuple[str, Session]) -> None:
    version, s = session
    _, (block, nodes) = s.run(("query-block", None), ("query-named-block-nodes", None))
    inserted = block[0]["inserted"]
    by_driver = {node["drv"]: node for node in nodes}
    if version == "7.2":
        assert "active" not in inserted and all("active" not in node for node in nodes)
        assert "format-specific" not in by_driver["file"]["image"]
    else:
        assert inserted["active"] is True and all(node["active"] is True for node in nodes)
        assert by_driver["file"]["image"]["format-specific"] == {"type": "file", "data": {}}
    assert by_driver["qcow2"]["image"]["format-specific"]["type"] == "qcow2"


def test_transaction_property_text_and_grouped_abort(session: tuple[str, Session]) -> None:
    version, s = session
    grouped = {"completion-mode": "grouped"}
    bad_backup = {"type": "blockdev-backup",
                  "data": {"device": "drive0", "target": "nope", "sync": "full"}}
    add = {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "b"}}
    abort: dict[str, Any] = {"type": "abort", "data": {}}
    _, replies = s.run(
        ("transaction", {"actions": [add], "properties": grouped}),
        ("transaction", {"actions": [abort], "properties": grouped}),
        ("transaction", {"actions": [bad_backup, abort], "properties": grouped}),
        ("transaction", {"actions": [bad_backup, abort]}),
    )
    word = "Transaction" if version == "7.2" else "transaction"
    refused = "Action '%s' does not support " + word + " property completion-mode = grouped"
    not_found = ("error", "GenericError", "Cannot find device='nope' nor node-name='nope'")
    assert replies[0] == ("error", "GenericError", refused % "block-dirty-bitmap-add")
    assert replies[3] == not_found
    if version == "7.2":
        assert replies[1] == ("error", "GenericError", "Transaction aborted using Abort action")
        assert replies[2] == not_found  # each action checked in its own prepare, in order
    else:
        assert replies[1] == replies[2] == ("error", "GenericError", refused % "abort")


def test_command_set_and_block_job_change(session: tuple[str, Session]) -> None:
    version, s = session
    backup = {"job-id": "j1", "device": "drive0", "target": "t0", "sync": "full", "speed": 1}
    _, replies = s.run(
        ("query-commands", None),
        ("block-job-change", {"id": "nope", "type": "mirror", "copy-mode": "write-blocking"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "t0",
                          "file": {"driver": "file", "filename": str(s.workdir / "t0.qcow2")}}),
        ("blockdev-backup", backup),
        ("block-job-change", {"id": "j1", "type": "backup"}),
        ("block-job-change", {"id": "j1", "type": "backup", "copy-mode": "background"}),
        ("block-job-change", {"id": "j1", "type": "mirror"}),
        ("job-cancel", {"id": "j1"}),
    )
    names = {entry["name"] for entry in replies[0]}
    if version == "7.2":
        assert "block-job-change" not in names
        missing = ("error", "CommandNotFound", "The command block-job-change has not been found")
        assert replies[1] == replies[4] == replies[5] == replies[6] == missing
    else:
        assert "block-job-change" in names
        assert replies[1] == ("error", "DeviceNotActive", "Block job 'nope' not found")
        assert replies[4] == ("error", "GenericError", "Job type does not support change")
        assert replies[5] == ("error", "GenericError", "Parameter 'copy-mode' is unexpected")
        assert replies[6] == ("error", "GenericError", "Parameter 'copy-mode' is missing")
    assert "blockdev-set-active" not in names  # not modelled in either profile


def test_concluded_job_refuses_change() -> None:
    from emulator.jobs.job import JobStatus, JobVerb, verb_allowed

    assert not verb_allowed(JobVerb.CHANGE, JobStatus.CONCLUDED)
    assert verb_allowed(JobVerb.CHANGE, JobStatus.PAUSED)


def test_block_copy_bitmap_placement(session: tuple[str, Session]) -> None:
    version, s = session
    _, replies = s.run(
        ("blockdev-add", {"driver": "qcow2", "node-name": "t0",
                          "file": {"driver": "file", "filename": str(s.workdir / "t0.qcow2")}}),
        ("blockdev-backup", {"job-id": "j1", "device": "drive0", "target": "t0", "sync": "full",
                             "speed": 1, "filter-node-name": "cbw"}),
        ("query-named-block-nodes", None),
        ("job-cancel", {"id": "j1"}),
    )
    nodes = {node["node-name"]: node for node in replies[2]}
    cbw = [(bm["count"], bm["recording"]) for bm in nodes["cbw"]["dirty-bitmaps"]]
    source = next(node for node in replies[2] if node["drv"] == "qcow2" and node["node-name"] != "t0")
    size = 64 << 20
    if version == "7.2":
        assert cbw == [(size, False), (0, False)]  # access_bitmap, done_bitmap
        assert [bm["recording"] for bm in source["dirty-bitmaps"]] == [False]
    else:
        assert cbw[:2] == [(size, False), (0, False)] and len(cbw) == 3
        assert cbw[2][1] is False  # block-copy's bitmap, created first on the filter
        assert "dirty-bitmaps" not in source


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_img_info_protocol_child(monkeypatch: pytest.MonkeyPatch, sockdir: Path, version: str) -> None:
    path = sockdir / "x.qcow2"
    assert img.main(["create", "-q", "-f", "qcow2", str(path), "1M"]) == 0
    out = io.StringIO()
    assert img.main(["--blocktxn-version", version, "info", str(path)], out=out) == 0
    size = path.stat().st_size
    rounded = -(-size // 512) * 512
    child = ("Child node '/file':\n"
             f"    filename: {path}\n"
             "    protocol type: file\n"
             f"    file length: {img.size_to_str(rounded)} ({rounded} bytes)\n")
    assert (child in out.getvalue()) == (version == "10.0")
    monkeypatch.setenv(VERSION_ENV, version)
    out = io.StringIO()
    assert img.main(["info", "--output=json", str(path)], out=out) == 0
    assert ('"children": [' in out.getvalue()) == (version == "10.0")
    err = io.StringIO()
    assert img.main(["--blocktxn-version", "9.1", "info", str(path)], err=err) == 1
    assert "supported versions: 7.2, 10.0" in err.getvalue()


def test_argument_sets_follow_the_version() -> None:
    """Members a version lacks are removed from the schema the dispatcher validates against."""
    from emulator.commands import TYPES

    for profile in PROFILES.values():
        types = profile.qapi_types(TYPES)
        for type_name, absent in profile.members_absent.items():
            if type_name in TYPES:
                assert not set(types[type_name]["data"]) & absent


def test_backup_min_cluster_size(session: tuple[str, Session]) -> None:
    version, s = session
    t0 = {"driver": "qcow2", "node-name": "t0",
          "file": {"driver": "file", "filename": str(s.workdir / "t0.qcow2")}}

    def backup(size: Any) -> tuple[str, dict[str, Any]]:
        return ("blockdev-backup", {"job-id": "j1", "device": "drive0", "target": "t0",
                                    "sync": "full", "speed": 1, "filter-node-name": "cbw",
                                    "x-perf": {"min-cluster-size": size}})

    _, replies = s.run(("blockdev-add", t0), backup(100), backup(-1), backup(1 << 18),
                       ("query-named-block-nodes", None), ("job-cancel", {"id": "j1"}))
    if version == "7.2":
        unexpected = ("error", "GenericError", "Parameter 'x-perf.min-cluster-size' is unexpected")
        assert replies[1] == unexpected and replies[3] == unexpected
        return
    assert replies[1] == ("error", "GenericError", ("Could not create node: Cannot create "
                          "block-copy-state: min-cluster-size needs to be a power of 2"))
    assert replies[2] == ("error", "GenericError",
                          "min-cluster-size too large: 18446744073709551615 > 9223372036854775807")
    assert replies[3] == {}
    cbw = next(node for node in replies[4] if node["node-name"] == "cbw")
    assert {bm["granularity"] for bm in cbw["dirty-bitmaps"]} == {1 << 18}


def test_file_node_size_counts_whole_sectors(session: tuple[str, Session]) -> None:
    """bdrv_getlength of a file node: the file length rounded up to 512 (both versions)."""
    _, s = session
    _, (nodes,) = s.run(("query-named-block-nodes", None))
    size = (s.workdir / "d0.qcow2").stat().st_size
    file_node = next(node for node in nodes if node["drv"] == "file")
    assert file_node["image"]["virtual-size"] == -(-size // 512) * 512


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_img_map_compressed_member(sockdir: Path, version: str) -> None:
    path = sockdir / "m.qcow2"
    assert img.main(["create", "-q", "-f", "qcow2", str(path), "1M"]) == 0
    out = io.StringIO()
    assert img.main(["--blocktxn-version", version, "map", "--output=json", str(path)], out=out) == 0
    expected = ('"data": false, "compressed": false}' if version == "10.0" else '"data": false}')
    assert expected in out.getvalue()


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_cmdline_error_texts(version: str) -> None:
    done = _process(["-blocktxn-version", version, *BASE, "-machine", "foo"], None)
    named = ' "foo"' if version == "10.0" else ""
    assert (done.returncode, done.stderr) == (1, (f"qemu-system-x86_64: unsupported machine type"
                                                 f"{':' if named else ''}{named}\n"
                                                 "Use -machine help to list supported machines\n"))
    done = _process(["-blocktxn-version", version, "-M", "none", "-display", "gtk"], None)
    if version == "7.2":
        assert done.stderr == ("qemu: module ui-ui-gtk not found, do you want to install "
                               "qemu-system-gui package?\n"
                               "qemu-system-x86_64: Display 'gtk' is not available.\n")
    else:
        assert done.stderr == ("qemu-system-x86_64: Display 'gtk' is not available. Perhaps you "
                               "want to install qemu-system-gui package?\n")
