"""Known crashes and hangs of real QEMU that the differential fuzzer must not provoke by default.

A reference that dies tells nothing about the emulator, and a long run that keeps finding the
same segfault finds nothing else.  Each entry names the real QEMU versions it was reproduced on
(checked on this project's machine with Debian's QEMU 7.2.22 and QEMU 10.0.2, by sending the
commands below to ``qemu-system-x86_64 -M none -qmp stdio`` with a qcow2 drive0/node0 and a
qcow2 blockdev drive1), and a test on a generated step given the scenario model.

``blocktxn fuzz`` skips a step that matches an entry for the reference's version (it is
generated all the same, so the seed alone decides the scenario), unless
``--include-known-crashes`` is given.

* ``enable-prepare-fails`` (7.2, 10.0): a ``transaction`` whose ``block-dirty-bitmap-enable``
  action fails to prepare (unknown or busy bitmap) segfaults in the action's abort, which
  disables a bitmap it never found.  In 7.2 every enable action in ``completion-mode=grouped``
  fails to prepare ("does not support Transaction property completion-mode"), so it crashes
  too; 10.0 accepts the grouped enable.
* ``merge-empty-list`` (7.2, 10.0): ``block-dirty-bitmap-merge`` with ``"bitmaps": []``, as a
  command or as a transaction action, segfaults.
* ``grouped-rollback-hang`` (7.2 only): a ``completion-mode=grouped`` transaction with two or
  more ``drive-backup`` actions that is rolled back (any action fails to prepare, or an
  ``abort`` action) never answers; 10.0 answers with the error.
* ``same-node-backups`` (7.2, 10.0): a transaction with a ``drive-backup`` action naming the
  drive by its BlockBackend name (``drive0``) after another backup of the same node: the second
  fails to prepare and the rollback aborts QEMU (``bdrv_do_drained_end: Assertion
  `bs->quiesce_counter > 0' failed``).  The same pair named ``drive0`` then ``node0``, ``node0``
  twice, or ``drive1`` twice (a node without a BlockBackend) just fails with an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conformance.differential.model import NODE_OF, Model
from conformance.differential.steps import CreateImage, Img, Qmp, Step

Version = tuple[int, int]


@dataclass(frozen=True)
class KnownCrash:
    """A real-QEMU crash or hang: which versions, and which steps provoke it."""

    name: str
    versions: frozenset[Version]
    description: str
    provokes: Callable[[Step, Model, Version], bool]

    def affects(self, version: Version | None) -> bool:
        """Unknown versions are treated as affected (the safe side)."""
        return version is None or version in self.versions


def _commands(step: Step) -> list[Qmp]:
    return [primitive for primitive in step.primitives if isinstance(primitive, Qmp)]


def _actions(step: Step) -> list[tuple[Mapping[str, Any], bool]]:
    """(action, grouped) for every action of every transaction in the step."""
    found = []
    for command in _commands(step):
        if command.command == "transaction":
            arguments = command.arguments or {}
            grouped = (arguments.get("properties") or {}).get("completion-mode") == "grouped"
            found += [(action, grouped) for action in arguments.get("actions", [])]
    return found


def _mentions(action: Mapping[str, Any], node: str, name: str) -> bool:
    data = action.get("data") or {}
    if action.get("type") == "drive-backup":
        return NODE_OF.get(str(data.get("device"))) == node and data.get("bitmap") == name
    return NODE_OF.get(str(data.get("node"))) == node and name in (data.get("name"), data.get("target"))


def enable_is_safe(model: Model, earlier: Sequence[Mapping[str, Any]], data: Mapping[str, Any]) -> bool:
    """An enable action whose prepare cannot fail: the bitmap exists, is not busy, and no
    earlier action of the transaction touches it."""
    node = NODE_OF.get(str(data.get("node")))
    name = str(data.get("name"))
    return (node is not None and (node, name) in model.bitmaps
            and (node, name) not in model.busy_bitmaps()
            and not any(_mentions(action, node, name) for action in earlier))


def _enable_prepare_fails(step: Step, model: Model, version: Version) -> bool:
    for command in _commands(step):
        if command.command != "transaction":
            continue
        arguments = command.arguments or {}
        grouped = (arguments.get("properties") or {}).get("completion-mode") == "grouped"
        actions = list(arguments.get("actions", []))
        for index, action in enumerate(actions):
            if action.get("type") != "block-dirty-bitmap-enable":
                continue
            if (grouped and version < (8, 0)) or not enable_is_safe(model, actions[:index],
                                                                    action.get("data") or {}):
                return True
    return False


def _merge_empty(step: Step, model: Model, version: Version) -> bool:
    merges = [command.arguments or {} for command in _commands(step)
              if command.command == "block-dirty-bitmap-merge"]
    merges += [action.get("data") or {} for action, _ in _actions(step)
               if action.get("type") == "block-dirty-bitmap-merge"]
    return any(merge.get("bitmaps") == [] for merge in merges)


def backup_surely_prepares(model: Model, data: Mapping[str, Any], created: set[str]) -> bool:
    """A drive-backup action that cannot fail to prepare on the scenario as the model knows it."""
    device = str(data.get("device"))
    node = NODE_OF.get(device)
    if device not in ("drive0", "drive1") or node is None or model.node_has_job(node):
        return False
    if str(data.get("job-id")) in {job.id for job in model.live_jobs()}:
        return False
    sync = data.get("sync")
    usable = {bitmap.name for bitmap in model.bitmaps.values()
              if bitmap.node == node and bitmap.enabled and (node, bitmap.name) not in model.busy_bitmaps()}
    if sync == "full":
        if "bitmap" in data or "bitmap-mode" in data:
            return False
    elif sync in ("incremental", "bitmap"):
        if data.get("bitmap") not in usable:
            return False
        if sync == "incremental" and "bitmap-mode" in data:
            return False
    else:
        return False
    target = data.get("target")
    if data.get("mode") == "existing" and not (isinstance(target, Img) and target.name in created):
        return False
    return not ("speed" in data and int(data["speed"]) < 0)


def _grouped_rollback(step: Step, model: Model, version: Version) -> bool:
    created = {primitive.image.name for primitive in step.primitives if isinstance(primitive, CreateImage)}
    for command in _commands(step):
        if command.command != "transaction":
            continue
        arguments = command.arguments or {}
        if (arguments.get("properties") or {}).get("completion-mode") != "grouped":
            continue
        actions = list(arguments.get("actions", []))
        backups = [action for action in actions if action.get("type") == "drive-backup"]
        if len(backups) < 2:
            continue
        devices = [NODE_OF.get(str((action.get("data") or {}).get("device"))) for action in backups]
        if (len(backups) != len(actions) or len(set(devices)) != len(devices)
                or not all(backup_surely_prepares(model, action.get("data") or {}, created)
                           for action in backups)):
            return True
    return False


#: Device names of the set-up that name a BlockBackend (``-drive id=drive0``); drive1 is only a node.
BACKEND_NAMES = frozenset({"drive0"})


def _same_node_backups(step: Step, model: Model, version: Version) -> bool:
    for command in _commands(step):
        if command.command != "transaction":
            continue
        seen: set[str] = set()
        for action in (command.arguments or {}).get("actions", []):
            if action.get("type") != "drive-backup":
                continue
            device = str((action.get("data") or {}).get("device"))
            node = NODE_OF.get(device)
            if node in seen and device in BACKEND_NAMES:
                return True
            if node is not None:
                seen.add(node)
    return False


V72, V100 = (7, 2), (10, 0)
KNOWN_CRASHES = (
    KnownCrash("enable-prepare-fails", frozenset({V72, V100}),
               "transaction with a block-dirty-bitmap-enable action that fails to prepare "
               "segfaults (7.2: every grouped enable fails)", _enable_prepare_fails),
    KnownCrash("merge-empty-list", frozenset({V72, V100}),
               "block-dirty-bitmap-merge with bitmaps: [] segfaults", _merge_empty),
    KnownCrash("grouped-rollback-hang", frozenset({V72}),
               "grouped transaction with >= 2 drive-backup actions that is rolled back hangs",
               _grouped_rollback),
    KnownCrash("same-node-backups", frozenset({V72, V100}),
               "transaction with a drive-backup of drive0 after another backup of its node aborts "
               "(bdrv_do_drained_end assertion)", _same_node_backups),
)


def known_crash(step: Step, model: Model, version: Version | None) -> KnownCrash | None:
    """The first known crash of the reference's version that `step` would provoke."""
    for crash in KNOWN_CRASHES:
        if crash.affects(version) and crash.provokes(step, model, version or V72):
            return crash
    return None
