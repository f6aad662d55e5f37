"""Shared setup of the emulator's unit tests.

Most of these tests compare the emulator with transcripts recorded from real QEMU 7.2 (and with
the QEMU 7.2 tools on PATH), so they run the emulator's 7.2 profile; tests of other versions and
of profile selection (tests/test_versions.py) set or clear BLOCKTXN_QEMU_VERSION themselves.
Session-scoped, so that module-scoped emulator fixtures started before any test see it too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.versions import VERSION_ENV


@pytest.fixture(autouse=True, scope="session")
def qemu_7_2_profile() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VERSION_ENV, "7.2")
        yield
