"""The QMP `transaction` command (QEMU's qmp_transaction) and the drain around it.

Each QAPI TransactionAction becomes a TransactionAction object (emulator/transaction.py).  With
`completion-mode: grouped` every job the actions create joins one JobTxn; actions that cannot take
part in a group refuse: in their prepare phase, in order, as QEMU 7.2's
action_check_completion_mode does, or all of them (abort included) before anything is prepared,
as QEMU 10.0 does (profile.grouped_checked_before_prepare).
Transaction-class commands drain all I/O first, which QEMU's running jobs show as a
paused/running pair; jobs started by the command show the same pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator.error import QemuError
from emulator.jobs.txn import JobTxn
from emulator.machine import Machine
from emulator.transaction import BaseAction, TransactionAction, run_transaction

from .backup import BackupAction
from .registry import qapi_types, qmp_command

ACTION_TYPES = [
    "abort", "block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable", "block-dirty-bitmap-disable", "block-dirty-bitmap-merge",
    "blockdev-backup", "blockdev-snapshot", "blockdev-snapshot-internal-sync",
    "blockdev-snapshot-sync", "drive-backup",
]
_ACTION_DATA = {
    "abort": "Abort",
    "block-dirty-bitmap-add": "BlockDirtyBitmapAdd",
    "block-dirty-bitmap-remove": "BlockDirtyBitmap",
    "block-dirty-bitmap-clear": "BlockDirtyBitmap",
    "block-dirty-bitmap-enable": "BlockDirtyBitmap",
    "block-dirty-bitmap-disable": "BlockDirtyBitmap",
    "block-dirty-bitmap-merge": "BlockDirtyBitmapMerge",
    "blockdev-backup": "BlockdevBackup",
    "blockdev-snapshot": "BlockdevSnapshot",
    "blockdev-snapshot-internal-sync": "BlockdevSnapshotInternal",
    "blockdev-snapshot-sync": "BlockdevSnapshotSync",
    "drive-backup": "DriveBackup",
}


def _wrapper(kind: str) -> str:
    return "TransactionAction" + "".join(part.capitalize() for part in kind.split("-")) + "Wrapper"


qapi_types(
    {"enum": "TransactionActionKind", "data": ACTION_TYPES},
    {"enum": "ActionCompletionMode", "data": ["individual", "grouped"]},
    {"struct": "Abort", "data": {}},
    {"struct": "BlockdevSnapshot", "data": {"node": "str", "overlay": "str"}},
    {"struct": "BlockdevSnapshotInternal", "data": {"device": "str", "name": "str"}},
    {"struct": "BlockdevSnapshotSync", "data": {
        "*device": "str", "*node-name": "str", "snapshot-file": "str",
        "*snapshot-node-name": "str", "*format": "str", "*mode": "NewImageMode"}},
    *({"struct": _wrapper(kind), "data": {"data": data}} for kind, data in _ACTION_DATA.items()),
    {"struct": "TransactionActionBase", "data": {"type": "TransactionActionKind"}},
    {"union": "TransactionAction", "base": "TransactionActionBase", "discriminator": "type",
     "data": {kind: _wrapper(kind) for kind in ACTION_TYPES}},
    {"struct": "TransactionProperties", "data": {"*completion-mode": "ActionCompletionMode"}},
)


class AbortAction(BaseAction):
    """The `abort` action: always fails to prepare (for testing rollback)."""

    def prepare(self) -> None:
        raise QemuError("Transaction aborted using Abort action")


class CompletionModeCheck(BaseAction):
    """Refuse grouped mode in prepare, then delegate (QEMU 7.2's action_check_completion_mode)."""

    def __init__(self, kind: str, mode: str, inner: TransactionAction | None, message: str) -> None:
        self.kind = kind
        self.mode = mode
        self.inner = inner
        self.message = message

    def prepare(self) -> None:
        if self.mode != "individual":
            raise QemuError(self.message % (self.kind, self.mode))
        if self.inner is None:
            raise QemuError(f"Action '{self.kind}' is not supported by blocktxn-emulator")
        self.inner.prepare()

    def commit(self) -> None:
        if self.inner is not None:
            self.inner.commit()

    def abort(self) -> None:
        if self.inner is not None:
            self.inner.abort()

    def clean(self) -> None:
        if self.inner is not None:
            self.inner.clean()


ActionFactory = Callable[[Machine, dict[str, Any]], TransactionAction]


def _bitmap_action_factory(kind: str) -> ActionFactory | None:
    try:
        from . import bitmaps
    except ImportError:
        return None
    factory = getattr(bitmaps, "transaction_action", None)
    if factory is None:
        return None
    return lambda machine, data: factory(machine, kind, data)


GROUPED_ACTIONS = ("drive-backup", "blockdev-backup")


def build_action(machine: Machine, action: dict[str, Any], mode: str, txn: JobTxn | None
                 ) -> TransactionAction:
    kind = action["type"]
    data = action.get("data", {})
    message = machine.profile.errors.TXN_PROPERTY_UNSUPPORTED
    if kind == "abort":
        return AbortAction()
    if kind in GROUPED_ACTIONS:
        return BackupAction(machine, kind, data, txn)
    if kind in ("blockdev-snapshot-sync", "blockdev-snapshot"):
        from .snapshot import ExternalSnapshotAction

        return CompletionModeCheck(kind, mode, ExternalSnapshotAction(machine, kind, data), message)
    if kind.startswith("block-dirty-bitmap-"):
        factory = _bitmap_action_factory(kind)
        return CompletionModeCheck(kind, mode, factory(machine, data) if factory else None, message)
    return CompletionModeCheck(kind, mode, None, message)


def check_grouped_actions(machine: Machine, actions: list[dict[str, Any]], mode: str) -> None:
    """QEMU 10.0's up-front check: only backups may join a non-individual transaction."""
    if mode == "individual":
        return
    for action in actions:
        if action["type"] not in GROUPED_ACTIONS:
            raise QemuError(machine.profile.errors.TXN_PROPERTY_UNSUPPORTED % (action["type"], mode))


def run_actions(machine: Machine, actions: list[TransactionAction]) -> None:
    """qmp_transaction: "drain all i/o before any operations" (bdrv_drain_all: every running
    block job pauses and resumes once), then the actions; each action drains its own node until
    its clean phase, so the jobs the actions start resume in clean order: list order in 7.2,
    newest first in 10.0 (a job whose first read stops at a blkdebug breakpoint shows it)."""
    machine.block.drain_all()
    run_transaction(actions, newest_first=machine.profile.transaction_newest_first)


@qmp_command("transaction", {"actions": ["TransactionAction"], "*properties": "TransactionProperties"})
def qmp_transaction(machine: Machine, actions: list[dict[str, Any]],
                    properties: dict[str, Any] | None = None) -> None:
    mode = (properties or {}).get("completion-mode", "individual")
    if machine.profile.grouped_checked_before_prepare:
        check_grouped_actions(machine, actions, mode)
    txn = JobTxn() if mode == "grouped" else None
    built = [build_action(machine, action, mode, txn) for action in actions]
    run_actions(machine, built)
