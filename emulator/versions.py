"""QEMU version profiles: everything a client can observe that differs between the QEMU versions
the emulator speaks, held as data.

One frozen QemuProfile per supported version (QEMU 7.2.22 and QEMU 10.0.2, the two measured on
this machine), each with an ErrorTexts catalogue for the messages whose wording changed.  The
Machine carries the active profile; handlers read `profile.<flag>` and `profile.errors.<NAME>`
rather than comparing version numbers, so a new version is a new table entry, not a code hunt.

Every entry was measured against the real binaries (greeting, query output, error replies, the
QAPI schema from query-qmp-schema); the comment on each field says what the difference is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: Environment variable naming the version when no -blocktxn-version option is given.
VERSION_ENV = "BLOCKTXN_QEMU_VERSION"
#: VersionInfo's "package" (QEMU's build puts its distribution's package version there).
PACKAGE = "blocktxn-emulator"


class UnsupportedVersion(ValueError):
    """A version string that names no profile; the message lists the supported ones."""


@dataclass(frozen=True)
class ErrorTexts:
    """Error messages whose text differs between versions, by name (printf-style placeholders).

    With emulator/qerror.py (the texts every supported version shares) this is the version's
    error catalogue; a text that a new version rewords moves from qerror.py to here."""

    #: qmp_transaction's refusal of a non-backup action in a grouped transaction:
    #: "Transaction property" (7.2, blockdev.c action_check_completion_mode) became
    #: "transaction property" (10.0, checked up front in qmp_transaction).
    TXN_PROPERTY_UNSUPPORTED: str
    #: -machine TYPE other than none: 10.0 names the type.
    MACHINE_UNSUPPORTED: str
    #: The whole stderr text for -display gtk/sdl when Debian's qemu-system-gui module is not
    #: installed (%(prog)s, %(kind)s): 7.2 prints a module line first, 10.0 one line with a hint.
    DISPLAY_MODULE_MISSING: str
    #: block_copy_calculate_cluster_size's warning for a target without cluster size information
    #: and without a backing file (%d: the block size used): 10.0 reworded it around
    #: x-perf.min-cluster-size.
    TARGET_CLUSTER_SIZE_WARNING: str
    #: block-job-change on a job whose driver has no .change (10.0 only; 7.2 has no command).
    JOB_CHANGE_UNSUPPORTED: str = "Job type does not support change"


@dataclass(frozen=True)
class QemuProfile:
    """One QEMU version as the emulator presents it."""

    #: The short name used on the command line and in BLOCKTXN_QEMU_VERSION ("7.2", "10.0").
    name: str
    #: (major, minor, micro) in the greeting, query-version and -version.
    version: tuple[int, int, int]
    #: The second line of `-version`.
    copyright_line: str
    errors: ErrorTexts
    #: BlockDeviceInfo has `"active": true|false` (10.0: nodes can be inactivated with
    #: blockdev-set-active / blockdev-add active=false).
    node_active_field: bool
    #: `file` nodes report ImageInfo "format-specific": {"type": "file", "data": {}} (10.0's
    #: raw_get_specific_info in file-posix; 7.2 has no such member for protocol nodes).
    file_format_specific: bool
    #: query-status has `"singlestep": false` (removed in 10.0 after deprecation in 8.1).
    status_singlestep: bool
    #: In a grouped transaction every action is checked before any is prepared, `abort`
    #: included (10.0); 7.2 checks each action in its own prepare, in order, and lets `abort`
    #: fail with "Transaction aborted using Abort action".
    grouped_checked_before_prepare: bool
    #: The backup job's block-copy bitmap lives on the copy-before-write filter node (10.0,
    #: listed after the filter's own two bitmaps); 7.2 creates it on the source node.
    block_copy_bitmap_on_filter: bool
    #: Each graph change drains every node (10.0: bdrv_graph_wrlock begins and ends a drain-all
    #: section), so every running block job pauses once per write-lock section, whatever node
    #: the change is on; 7.2 changes the graph without draining (emulator/block/drain.py).
    graph_lock_drains: bool
    #: Index of the first board-created IDE drive under /machine/unattached (the pc machine's
    #: own objects before it: 18 in 7.2, 4 in 10.0).
    unattached_ide_base: int
    #: At quit, a running job pauses and resumes once more before qemu_cleanup's drain-all and
    #: cancel (10.0: `paused running paused running aborting`; 7.2: `paused running aborting`),
    #: in every run of scripts/drain_probe.py's probes sync_none and backup_errors.
    extra_drain_at_quit: bool
    #: `transaction` commits, aborts and cleans its actions newest first (10.0: qmp_transaction
    #: registers them with tran_add, which inserts at the head of the list), so the jobs of a
    #: transaction start in reverse order; 7.2 commits and cleans in list order (and aborts in
    #: reverse).  Seen in the order blkdebug breakpoints stop the first reads of two backups
    #: started by one transaction (test_blockjob_txn.py::test_pair_fail_cancel_race).
    transaction_newest_first: bool
    #: `qemu-img info` prints the protocol child of a format node ("Child node '/file':" in
    #: human output, "children" in JSON) (10.0).
    img_info_children: bool
    #: `qemu-img map --output=json` entries have "compressed": true|false after "data" (10.0).
    img_map_compressed: bool
    #: block_resize of a node a job holds: 7.2 answers QERR_DEVICE_IN_USE naming the `device`
    #: argument ("Device '(null)' is in use" for a node-name); 10.0 checks the op blocker
    #: ("Node '...' is busy: ...").
    resize_busy_as_device_in_use: bool
    #: QMP commands of the emulator's area this version does not have (CommandNotFound).
    commands_absent: frozenset[str] = frozenset()
    #: QAPI struct members this version does not have: type name -> member names (as written
    #: in the schema, e.g. "*discard-source").  The emulator's schema is the union of versions.
    members_absent: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({}))

    @property
    def version_string(self) -> str:
        return ".".join(str(part) for part in self.version)

    def version_info(self) -> dict[str, Any]:
        """VersionInfo (the greeting, query-version), members in QAPI order as QEMU builds it."""
        major, minor, micro = self.version
        return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": PACKAGE}

    def has_command(self, name: str) -> bool:
        return name not in self.commands_absent

    def qapi_types(self, types: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        """The emulator's QAPI types as this version has them (absent members dropped)."""
        result: dict[str, Mapping[str, Any]] = dict(types)
        for type_name, absent in self.members_absent.items():
            expr = types.get(type_name)
            if expr is None:
                continue
            data = {key: value for key, value in expr["data"].items() if key not in absent}
            result[type_name] = {**expr, "data": data}
        return result


QEMU_7_2 = QemuProfile(
    name="7.2",
    version=(7, 2, 22),
    copyright_line="Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers",
    errors=ErrorTexts(
        TXN_PROPERTY_UNSUPPORTED="Action '%s' does not support Transaction property "
                                 "completion-mode = %s",
        MACHINE_UNSUPPORTED="unsupported machine type%.0s",
        TARGET_CLUSTER_SIZE_WARNING=(
            "warning: The target block device doesn't provide information about the block size "
            "and it doesn't have a backing file. The default block size of %d bytes is used. If "
            "the actual block size of the target exceeds this default, the backup may be "
            "unusable\n"),
        DISPLAY_MODULE_MISSING="qemu: module ui-ui-%(kind)s not found, do you want to install "
                               "qemu-system-gui package?\n"
                               "%(prog)s: Display '%(kind)s' is not available.\n",
    ),
    node_active_field=False,
    file_format_specific=False,
    status_singlestep=True,
    grouped_checked_before_prepare=False,
    block_copy_bitmap_on_filter=False,
    graph_lock_drains=False,
    unattached_ide_base=18,
    extra_drain_at_quit=False,
    transaction_newest_first=False,
    img_info_children=False,
    img_map_compressed=False,
    commands_absent=frozenset({"block-job-change", "blockdev-set-active"}),
    resize_busy_as_device_in_use=True,
    members_absent=MappingProxyType({
        # 10.0's BackupPerf.min-cluster-size and BackupCommon.discard-source (both 9.1), and
        # the copy-before-write driver's min-cluster-size (9.1): "Parameter '...' is unexpected".
        "BackupPerf": frozenset({"*min-cluster-size"}),
        "BackupCommon": frozenset({"*discard-source"}),
        "BlockdevOptionsCbw": frozenset({"*min-cluster-size"}),
    }),
)

QEMU_10_0 = QemuProfile(
    name="10.0",
    version=(10, 0, 2),
    copyright_line="Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers",
    errors=ErrorTexts(
        TXN_PROPERTY_UNSUPPORTED="Action '%s' does not support transaction property "
                                 "completion-mode = %s",
        MACHINE_UNSUPPORTED='unsupported machine type: "%s"',
        TARGET_CLUSTER_SIZE_WARNING=(
            "warning: The target block device doesn't provide information about the block size "
            "and it doesn't have a backing file. The (default) block size of %d bytes is used. "
            "If the actual block size of the target exceeds this value, the backup may be "
            "unusable\n"),
        DISPLAY_MODULE_MISSING="%(prog)s: Display '%(kind)s' is not available. Perhaps you want "
                               "to install qemu-system-gui package?\n",
    ),
    node_active_field=True,
    file_format_specific=True,
    status_singlestep=False,
    grouped_checked_before_prepare=True,
    block_copy_bitmap_on_filter=True,
    graph_lock_drains=True,
    unattached_ide_base=4,
    extra_drain_at_quit=True,
    transaction_newest_first=True,
    img_info_children=True,
    img_map_compressed=True,
    resize_busy_as_device_in_use=False,
)

#: Measured 7.2 -> 10.0 differences in the emulator's area that no profile models yet: under
#: the 10.0 profile these still answer as 7.2 does ("Parameter ... is unexpected" or
#: CommandNotFound).  Listed here so that the gap is data, not folklore.
UNMODELLED_10_0 = (
    ("blockdev-set-active command and BlockdevOptions.active (node inactivation: stores "
    "persistent bitmaps, refuses inactive backup targets; real 10.0.2 aborts on a qemu-io "
    "write to an inactive node)"),
    "BlockdevOptionsQcow2.discard-no-unref",
)

#: Supported profiles by short name, oldest first.
PROFILES: Mapping[str, QemuProfile] = MappingProxyType({p.name: p for p in (QEMU_7_2, QEMU_10_0)})
#: The profile used when nothing selects one: the newest.
DEFAULT_PROFILE = QEMU_10_0


def supported_text() -> str:
    return ", ".join(PROFILES)


def lookup(text: str) -> QemuProfile:
    """The profile for "7.2"/"10.0" or a full triple of it ("7.2.22", "10.0.2")."""
    value = text.strip()
    if value in PROFILES:
        return PROFILES[value]
    for profile in PROFILES.values():
        if value == profile.version_string:
            return profile
    raise UnsupportedVersion(f"unsupported QEMU version '{text}'; supported versions: "
                             f"{supported_text()}")


def select(option: str | None = None, env: Mapping[str, str] | None = None) -> QemuProfile:
    """The command-line option if given, else $BLOCKTXN_QEMU_VERSION, else the newest."""
    if option is not None:
        return lookup(option)
    value = (os.environ if env is None else env).get(VERSION_ENV)
    if value:
        return lookup(value)
    return DEFAULT_PROFILE
