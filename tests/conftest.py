"""Shared setup and fixtures of the emulator's unit tests (each defined here once).

Most of these tests compare the emulator with transcripts recorded from real QEMU 7.2 (and with
the QEMU 7.2 tools on PATH), so they run the emulator's 7.2 profile; tests of other versions and
of profile selection (tests/test_versions.py) set or clear BLOCKTXN_QEMU_VERSION themselves.
Session-scoped, so that module-scoped emulator fixtures started before any test see it too.

Plain helper functions and classes (QMP through the dispatcher, real QEMU tools) are in
helpers.py.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.versions import VERSION_ENV


@pytest.fixture(autouse=True, scope="session")
def qemu_7_2_profile() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VERSION_ENV, "7.2")
        yield


@pytest.fixture(autouse=True, scope="session")
def nested_pytest_temp_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Some tests start pytest sessions of their own (blocktxn conform and bench, the report's
    synthetic suites, repeat_runs).  At the end of each session pytest deletes all but the three
    newest numbered folders under its temp root (TMPDIR/pytest-of-USER), and those include the
    folders this session's tests are still using: a test then loses its files mid-run (seen as
    iotests' check failing on a vanished '.last-elapsed-cache').  The sessions started from here
    get a temp root of their own (pytest's PYTEST_DEBUG_TEMPROOT), one per test process, after
    this session's own folder is fixed."""
    tmp_path_factory.getbasetemp()
    root = tempfile.mkdtemp(prefix="btxn")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTEST_DEBUG_TEMPROOT", root)
        yield
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A fresh folder for UNIX sockets, under the system's temporary folder: pytest's tmp_path is
    too long for sun_path (108 bytes) once a socket name is added."""
    path = Path(tempfile.mkdtemp(prefix="btx"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
