"""The transaction mechanism behind QMP `transaction` (QEMU's qmp_transaction, blockdev.c).

An action has prepare / commit / abort / clean phases.  Every action is prepared in list order; the
first failure rolls back every action registered so far — the failing one included — in reverse
order, and its error is the command's error.  Otherwise every action commits in list order.  Clean
runs for every registered action in list order either way.  Nothing is ever half-done.

That is QEMU 7.2.  QEMU 10.0 keeps the actions in a Transaction (util/transactions.c) whose
tran_add inserts at the head: commit, abort and clean all run newest first (`newest_first`).
"""

from __future__ import annotations

from typing import Protocol


class TransactionAction(Protocol):
    """One action of a transaction (QEMU's BlkActionOps + BlkActionState)."""

    def prepare(self) -> None:
        """Do the work that can be undone; raise QemuError to fail the whole transaction."""
        ...

    def commit(self) -> None:
        """Make the prepared work final (cannot fail)."""
        ...

    def abort(self) -> None:
        """Undo what prepare did (also called for the action whose prepare failed)."""
        ...

    def clean(self) -> None:
        """Release what prepare took, after commit or abort."""
        ...


class DrainAll(Protocol):
    """What a transaction drains before it starts (the block graph)."""

    def drain_all(self) -> None: ...


def run_drained(graph: DrainAll, actions: list[TransactionAction], *,
                newest_first: bool = False) -> None:
    """qmp_transaction: "drain all i/o before any operations" (bdrv_drain_all: every running
    block job pauses and resumes once), then the actions; each action drains its own node until
    its clean phase, so the jobs the actions start resume in clean order: list order in 7.2,
    newest first in 10.0 (`newest_first`).  The single-action commands (drive-backup,
    blockdev-snapshot-sync, ...) run this way too, as QEMU's blockdev_do_action calls
    qmp_transaction."""
    graph.drain_all()
    run_transaction(actions, newest_first)


def run_transaction(actions: list[TransactionAction], newest_first: bool = False) -> None:
    """Prepare all, then commit all; on the first prepare error abort all and re-raise it."""
    registered: list[TransactionAction] = []
    try:
        try:
            for action in actions:
                registered.append(action)
                action.prepare()
        except BaseException:
            for action in reversed(registered):
                action.abort()
            raise
        for action in reversed(registered) if newest_first else registered:
            action.commit()
    finally:
        for action in reversed(registered) if newest_first else registered:
            action.clean()


class BaseAction:
    """Convenience base: every phase a no-op."""

    def prepare(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def clean(self) -> None:
        pass
