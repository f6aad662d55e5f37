"""The order in which `transaction` runs its actions' phases: QEMU 7.2's qmp_transaction (commit
and clean in list order) and QEMU 10.0's Transaction list (tran_add inserts at the head, so
commit, abort and clean run newest first)."""

from __future__ import annotations

import pytest

from emulator.error import QemuError
from emulator.transaction import BaseAction, run_transaction
from emulator.versions import QEMU_7_2, QEMU_10_0


class Recording(BaseAction):
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail

    def prepare(self) -> None:
        self.log.append(f"prepare {self.name}")
        if self.fail:
            raise QemuError(f"{self.name} failed")

    def commit(self) -> None:
        self.log.append(f"commit {self.name}")

    def abort(self) -> None:
        self.log.append(f"abort {self.name}")

    def clean(self) -> None:
        self.log.append(f"clean {self.name}")


@pytest.mark.parametrize("newest_first, phases", [
    (False, ["commit a", "commit b", "clean a", "clean b"]),
    (True, ["commit b", "commit a", "clean b", "clean a"]),
])
def test_commit_and_clean_order(newest_first: bool, phases: list[str]) -> None:
    log: list[str] = []
    run_transaction([Recording("a", log), Recording("b", log)], newest_first=newest_first)
    assert log == ["prepare a", "prepare b", *phases]


@pytest.mark.parametrize("newest_first, phases", [
    (False, ["abort b", "abort a", "clean a", "clean b"]),
    (True, ["abort b", "abort a", "clean b", "clean a"]),
])
def test_failed_prepare_aborts_newest_first(newest_first: bool, phases: list[str]) -> None:
    log: list[str] = []
    with pytest.raises(QemuError, match="b failed"):
        run_transaction([Recording("a", log), Recording("b", log, fail=True), Recording("c", log)],
                        newest_first=newest_first)
    assert log == ["prepare a", "prepare b", *phases]


def test_profiles() -> None:
    assert not QEMU_7_2.transaction_newest_first
    assert QEMU_10_0.transaction_newest_first
