"""The QMP `transaction` command (QEMU's qmp_transaction) and the drain around it.

Each QAPI TransactionAction becomes a TransactionAction object (emulator/transaction.py), made by
the factory the implementing module registered (registry.TRANSACTION_ACTIONS).  With
`completion-mode: grouped` every job the actions create joins one JobTxn; actions that cannot take
part in a group refuse: in their prepare phase, in order, as QEMU 7.2's
action_check_completion_mode does, or all of them (abort included) before anything is prepared,
as QEMU 10.0 does (profile.grouped_checked_before_prepare).
Transaction-class commands drain all I/O first, which QEMU's running jobs show as a
paused/running pair; jobs started by the command show the same pair.
"""

from __future__ import annotations

from typing import Any

from emulator.error import QemuError
from emulator.jobs.txn import JobTxn
from emulator.machine import Machine
from emulator.transaction import BaseAction, TransactionAction, run_drained

from .registry import TRANSACTION_ACTIONS, qapi_types, qmp_command, transaction_action

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
    # blockdev-snapshot-internal-sync is in QEMU's schema; the emulator has no action for it.
    {"struct": "BlockdevSnapshotInternal", "data": {"device": "str", "name": "str"}},
    *({"struct": _wrapper(kind), "data": {"data": data}} for kind, data in _ACTION_DATA.items()),
    {"struct": "TransactionActionBase", "data": {"type": "TransactionActionKind"}},
    {"union": "TransactionAction", "base": "TransactionActionBase", "discriminator": "type",
     "data": {kind: _wrapper(kind) for kind in ACTION_TYPES}},
    {"struct": "TransactionProperties", "data": {"*completion-mode": "ActionCompletionMode"}},
)


@transaction_action("abort", mode_checked=False)
class AbortAction(BaseAction):
    """The `abort` action: always fails to prepare (for testing rollback).  QEMU 7.2's
    abort_prepare has no completion-mode check: in a grouped transaction it fails with its own
    text."""

    def __init__(self, machine: Machine, kind: str, data: dict[str, Any], txn: JobTxn | None) -> None:
        pass

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


def build_action(machine: Machine, action: dict[str, Any], mode: str, txn: JobTxn | None
                 ) -> TransactionAction:
    """The TransactionAction for one QAPI TransactionAction, from TRANSACTION_ACTIONS."""
    kind = action["type"]
    data = action.get("data", {})
    action_def = TRANSACTION_ACTIONS.get(kind)
    if action_def is not None and (action_def.grouped or not action_def.mode_checked):
        return action_def.factory(machine, kind, data, txn if action_def.grouped else None)
    inner = action_def.factory(machine, kind, data, None) if action_def is not None else None
    return CompletionModeCheck(kind, mode, inner, machine.profile.errors.TXN_PROPERTY_UNSUPPORTED)


def check_grouped_actions(machine: Machine, actions: list[dict[str, Any]], mode: str) -> None:
    """QEMU 10.0's up-front check: only backups may join a non-individual transaction."""
    if mode == "individual":
        return
    for action in actions:
        action_def = TRANSACTION_ACTIONS.get(action["type"])
        if action_def is None or not action_def.grouped:
            raise QemuError(machine.profile.errors.TXN_PROPERTY_UNSUPPORTED % (action["type"], mode))


@qmp_command("transaction", {"actions": ["TransactionAction"], "*properties": "TransactionProperties"})
def qmp_transaction(machine: Machine, actions: list[dict[str, Any]],
                    properties: dict[str, Any] | None = None) -> None:
    mode = (properties or {}).get("completion-mode", "individual")
    if machine.profile.grouped_checked_before_prepare:
        check_grouped_actions(machine, actions, mode)
    txn = JobTxn() if mode == "grouped" else None
    built = [build_action(machine, action, mode, txn) for action in actions]
    run_drained(machine.block, built, newest_first=machine.profile.transaction_newest_first)
