"""blkdebug: the error-injection filter driver (QEMU 7.2's block/blkdebug.c).

A blkdebug node sits between a format driver and its protocol child (role "image") and passes
all I/O through, except that rules can make requests fail:

- the node has a state number, 1 at open;
- when the driver above raises an event (qcow2's "read_aio" before a guest-data read, the
  generic flush's "flush_to_disk", "none" once at open), every rule for that event whose
  `state` is 0/absent or equal to the current state fires: inject-error rules become the new
  active set (the first one to fire empties the old set), set-state rules pick the next state,
  which takes effect after all rules of the event were looked at;
- every request is checked against the active rules in order; the first rule that matches the
  request kind (iotype) and, if it has a sector, overlaps it decides: errno 0 lets the request
  through, any other errno fails it with OSError(errno); a `once` rule is then deleted.

The legacy configuration file (`blkdebug:CONFIG:IMAGE`) is parsed here too, with QEMU's
qemu_config_parse / QemuOpts quirks and messages, as observed on a real QEMU 7.2.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno as errno_mod
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from emulator import qerror
from emulator.cutils import qemu_strtou64
from emulator.error import QemuError

from .filename import exact_filename
from .node import BlockNode, NodeOpener, block_driver
from .permissions import qapi_perms

#: BlkdebugEvent of QEMU 7.2's qapi/block-core.json, in enum order (checked with query-qmp-schema).
BLKDEBUG_EVENTS: tuple[str, ...] = (
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
    "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
    "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
    "vmstate_load", "vmstate_save", "cow_read", "cow_write", "reftable_load", "reftable_grow",
    "reftable_update", "refblock_load", "refblock_update", "refblock_update_part",
    "refblock_alloc", "refblock_alloc_hookup", "refblock_alloc_write",
    "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table",
    "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk",
    "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
    "pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare", "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
)
_EVENT_SET = frozenset(BLKDEBUG_EVENTS)

#: BlkdebugIOType of QEMU 7.2.
BLKDEBUG_IOTYPES: tuple[str, ...] = ("read", "write", "write-zeroes", "discard", "flush",
                                     "block-status")
#: Request kinds an inject-error rule without `iotype` applies to (not block-status).
DEFAULT_IOTYPES = frozenset(("read", "write", "write-zeroes", "discard", "flush"))

SECTOR_SIZE = 512
_INT_MAX = 2**31 - 1


@dataclass(eq=False)
class BlkdebugRule:
    """One inject-error or set-state rule (QEMU's BlkdebugRule)."""

    event: str
    action: str  # "inject-error" | "set-state" | "suspend"
    state: int = 0
    errno: int = errno_mod.EIO
    once: bool = False
    immediately: bool = False
    #: Byte offset the request must cover (sector * 512), or -1 for any request.
    offset: int = -1
    iotypes: frozenset[str] = field(default_factory=lambda: DEFAULT_IOTYPES)
    new_state: int = 0
    #: The breakpoint tag of a "suspend" rule (qemu-io's `break EVENT TAG`).
    tag: str = ""


class SuspendedRequest:
    """A request stopped at a blkdebug breakpoint (BlkdebugSuspendedReq) until resumed."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.released = False


class RequestSuspended(Exception):
    """Raised out of an I/O path that hit a breakpoint: the request did not happen yet.  Only
    code that can wait and retry (a job's copy task, see `suspendable`) ever sees it."""

    def __init__(self, request: SuspendedRequest) -> None:
        super().__init__(f"request suspended at blkdebug breakpoint '{request.tag}'")
        self.request = request


#: Set while the running I/O can be suspended at a breakpoint (and retried when resumed).  The
#: emulator's other I/O (HMP qemu-io, guest writes) is synchronous and passes breakpoints.
SUSPENDABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("blkdebug_suspendable",
                                                                   default=False)


@contextlib.contextmanager
def suspendable() -> Iterator[None]:
    """Let the I/O of the block stop at blkdebug breakpoints (RequestSuspended)."""
    token = SUSPENDABLE.set(True)
    try:
        yield
    finally:
        SUSPENDABLE.reset(token)


def _c_int(value: int) -> int:
    """What assigning a 64-bit option value to a C int keeps (QEMU stores errno/state as int)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _parse_event(name: Any) -> str:
    if name is None:
        raise QemuError("Missing event name for rule")
    if name not in _EVENT_SET:
        raise QemuError(qerror.BLKDEBUG_INVALID_VALUE % name)
    return str(name)


def _make_rule(options: dict[str, Any], action: str) -> BlkdebugRule:
    """add_rule: a rule from BlkdebugInjectErrorOptions / BlkdebugSetStateOptions."""
    event = _parse_event(options.get("event"))
    rule = BlkdebugRule(event, action, state=_c_int(int(options.get("state", 0))))
    if action == "inject-error":
        rule.errno = _c_int(int(options.get("errno", errno_mod.EIO)))
        rule.once = bool(options.get("once", False))
        rule.immediately = bool(options.get("immediately", False))
        sector = int(options.get("sector", -1))
        rule.offset = -1 if sector == -1 else sector * SECTOR_SIZE
        iotype = options.get("iotype")
        if iotype is not None:
            if iotype not in BLKDEBUG_IOTYPES:
                raise QemuError(qerror.BLKDEBUG_INVALID_VALUE % iotype)
            rule.iotypes = frozenset((iotype,))
    else:
        rule.new_state = _c_int(int(options.get("new_state", 0)))
    return rule


@block_driver
class BlkdebugNode(BlockNode):
    """Driver "blkdebug": a filter over its "image" child that injects I/O errors by rule."""

    driver = "blkdebug"
    is_filter = True
    is_protocol = True  # blkdebug:CONFIG:IMAGE (.bdrv_file_open)
    strong_runtime_opts = ("config", "inject-error.", "set-state.", "align", "max-transfer",
                           "opt-write-zero", "max-write-zero", "opt-discard", "max-discard")

    @classmethod
    def open(cls, graph: NodeOpener, name: str, auto_named: bool, options: dict[str, Any],
             read_only: bool) -> BlockNode:
        # A protocol-style driver: QEMU names it before it opens its image child.
        slot = len(graph.nodes)
        if auto_named:
            name = graph.generate_node_name()
        image = graph.open_child(options["image"], read_only=read_only)
        align = options.get("align")
        node = cls(name, image, inject_errors=list(options.get("inject-error", [])),
                   set_states=list(options.get("set-state", [])),
                   align=None if align is None else int(align),  # -drive gives a string
                   config=options.get("config"), auto_named=auto_named,
                   take_child_perms=qapi_perms(options.get("take-child-perms", [])),
                   unshare_child_perms=qapi_perms(options.get("unshare-child-perms", [])),
                   printer=graph.debug_print)
        return graph.register_opened(node, options, slot)

    def __init__(self, node_name: str, image: BlockNode, *, inject_errors: list[dict[str, Any]],
                 set_states: list[dict[str, Any]], align: int | None = None,
                 config: str | None = None, auto_named: bool = False,
                 take_child_perms: int = 0, unshare_child_perms: int = 0,
                 printer: Callable[[str], None] | None = None) -> None:
        super().__init__(node_name, read_only=image.read_only, auto_named=auto_named)
        #: QEMU's printf to stdout for breakpoint suspends and resumes (None: print nothing, as
        #: QEMU under the qtest accelerator).
        self.printer = printer
        #: take-child-perms / unshare-child-perms: extra perms on the image child (tests use them
        #: to build permission conflicts).
        self.take_child_perms = take_child_perms
        self.unshare_child_perms = unshare_child_perms
        if config is not None:  # rules of the file come before the inline ones, as in read_config
            file_inject, file_states = parse_blkdebug_config(config)
            inject_errors = file_inject + list(inject_errors)
            set_states = file_states + list(set_states)
        #: Rules per event, head-inserted as QEMU's QLIST_INSERT_HEAD (so evaluated newest first).
        self.rules: dict[str, list[BlkdebugRule]] = {}
        for options in inject_errors:
            self._add_rule(_make_rule(options, "inject-error"))
        for options in set_states:
            self._add_rule(_make_rule(options, "set-state"))
        if align and (align >= _INT_MAX or align & (align - 1)):
            raise QemuError(f"Cannot meet constraints with align {align}")
        self.align = align or 0
        #: Request alignment the node reports (validated; I/O is not split or padded here).
        self.request_alignment = max(self.align, 1)
        self.active_rules: list[BlkdebugRule] = []
        self.suspended: list[SuspendedRequest] = []
        self.state = 1
        self.attach_child("image", image)
        self.debug_event("none")

    def child_perm(self, role: str, perm: int, shared: int) -> tuple[int, int]:
        """blkdebug_child_perm: the filter default plus the configured extra and unshared perms."""
        nperm, nshared = super().child_perm(role, perm, shared)
        return nperm | self.take_child_perms, nshared & ~self.unshare_child_perms

    @property
    def image(self) -> BlockNode:
        return self.children["image"]

    def exact_filename_hook(self) -> str:
        """blkdebug_refresh_filename: "blkdebug:CONFIG:IMAGE" while only those options are set."""
        image = exact_filename(self.children["image"]) if "image" in self.children else ""
        allowed = {"config", "image", "x-image", "driver", "node-name"}
        if not image or any(key not in allowed for key in self.options):
            return ""
        return f"blkdebug:{self.options.get('config', '')}:{image}"

    def _add_rule(self, rule: BlkdebugRule) -> None:
        self.rules.setdefault(rule.event, []).insert(0, rule)

    def _remove_rule(self, rule: BlkdebugRule) -> None:
        self.rules[rule.event].remove(rule)

    # ---- events and rules ---------------------------------------------------------------------
    def debug_event(self, event: str) -> None:
        """blkdebug_debug_event: fire the rules of `event` for the current state."""
        if event not in _EVENT_SET:
            raise ValueError(f"unknown blkdebug event {event!r}")
        new_state = self.state
        injected = 0
        suspended: SuspendedRequest | None = None
        for rule in list(self.rules.get(event, ())):
            if rule.state and rule.state != self.state:
                continue
            if rule.action == "suspend":
                if SUSPENDABLE.get() and suspended is None:
                    # suspend_request: the rule is used up, the request waits for its tag.
                    self._remove_rule(rule)
                    suspended = SuspendedRequest(rule.tag)
                    self.suspended.insert(0, suspended)
                    self._print(f"blkdebug: Suspended request '{rule.tag}'\n")
                continue
            if rule.action == "inject-error":
                injected += 1
                if injected == 1:
                    self.active_rules = []
                self.active_rules.insert(0, rule)
            else:
                new_state = rule.new_state
        self.state = new_state
        if suspended is not None:
            raise RequestSuspended(suspended)

    # ---- breakpoints (qemu-io break / remove_break / resume / wait_break) -------------------
    def add_breakpoint(self, event: str, tag: str) -> int:
        """blkdebug_debug_breakpoint: 0, or -ENOENT for an unknown event."""
        if event not in _EVENT_SET:
            return -errno_mod.ENOENT
        self._add_rule(BlkdebugRule(event, "suspend", tag=tag))
        return 0

    def _print(self, text: str) -> None:
        if self.printer is not None:
            self.printer(text)

    def _resume(self, tag: str, everything: bool) -> bool:
        found = False
        for request in list(self.suspended):
            if request.tag == tag:
                self._print(f"blkdebug: Resuming request '{tag}'\n")
                request.released = True
                self.suspended.remove(request)
                found = True
                if not everything:
                    break
        return found

    def remove_breakpoint(self, tag: str) -> int:
        """blkdebug_debug_remove_breakpoint: resume its requests and drop its rules."""
        found = self._resume(tag, True)
        for rules in self.rules.values():
            for rule in list(rules):
                if rule.action == "suspend" and rule.tag == tag:
                    rules.remove(rule)
                    found = True
        return 0 if found else -errno_mod.ENOENT

    def resume(self, tag: str) -> int:
        """blkdebug_debug_resume: resume the newest request suspended with `tag`."""
        return 0 if self._resume(tag, False) else -errno_mod.ENOENT

    def _rule_check(self, offset: int, length: int, iotype: str) -> None:
        """rule_check: fail the request if the first matching active rule says so."""
        for rule in self.active_rules:
            if (rule.offset == -1 or (length and offset <= rule.offset < offset + length)) \
                    and iotype in rule.iotypes:
                break
        else:
            return
        if not rule.errno:
            return
        if rule.once:
            self.active_rules.remove(rule)
            self._remove_rule(rule)
        if rule.errno > 0:  # QEMU returns -errno; a negative errno yields a positive "success"
            raise OSError(rule.errno, os.strerror(rule.errno))

    # ---- I/O: pass through to the image child --------------------------------------------------
    def _length(self) -> int:
        return self.image.length()

    def _pread(self, offset: int, length: int) -> bytes:
        self._rule_check(offset, length, "read")
        return self.image.pread(offset, length)

    def _pwrite(self, offset: int, data: bytes) -> None:
        self._rule_check(offset, len(data), "write")
        self.image.pwrite(offset, data)

    def _pwrite_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        if length < self.request_alignment:
            # blkdebug returns -ENOTSUP; the generic layer falls back to writing a zero buffer.
            self._pwrite(offset, bytes(length))
            return
        self._rule_check(offset, length, "write-zeroes")
        self.image.pwrite_zeroes(offset, length, may_unmap)

    def _discard(self, offset: int, length: int) -> None:
        if length < self.request_alignment:
            return  # -ENOTSUP, which bdrv_co_pdiscard treats as success
        self._rule_check(offset, length, "discard")
        self.image.discard(offset, length)

    def _flush_to_disk(self) -> None:
        """blkdebug_co_flush: a flush is a request the rules may fail (children flush after)."""
        self._rule_check(0, 0, "flush")

    def _truncate(self, size: int) -> None:
        self.image.truncate(size)

    def _block_status(self, offset: int, length: int) -> tuple[int, int]:
        self._rule_check(offset, length, "block-status")
        return self.image.block_status(offset, length)


# ---- legacy configuration file ----------------------------------------------------------------
_INJECT_OPTS = {"event": "string", "state": "number", "iotype": "string", "errno": "number",
                "sector": "number", "once": "bool", "immediately": "bool"}
_SET_STATE_OPTS = {"event": "string", "state": "number", "new_state": "number"}
_GROUPS = {"inject-error": _INJECT_OPTS, "set-state": _SET_STATE_OPTS}

# sscanf("[%63s \"%63[^\"]\"]") and sscanf("[%63[^]]]"): no backtracking, trailing text ignored.
_GROUP_WITH_ID = re.compile(r'\[(?>(\S{1,63}))\s*"([^"]{1,63})')
_GROUP = re.compile(r"\[([^\]]{1,63})\]")
# sscanf(" %63s = \"%1023[^\"]\""): the value ends at the next quote (or the line end).
_KEY = re.compile(r"(?>\S{1,63})")
_VALUE = re.compile(r'\s*=\s*"([^"]{1,1023})')
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


def _parse_number(name: str, text: str) -> int:
    """QemuOpts number: qemu_strtou64 with base 0 (0x.. hex, 0.. octal), whole string, wraps if
    negative; read back as the int64 QEMU stores."""
    try:
        value = qemu_strtou64(text)
    except OSError as exc:
        if exc.errno == errno_mod.ERANGE:
            raise QemuError(f"Value '{text}' is too large for parameter '{name}'") from None
        raise QemuError(qerror.INVALID_PARAMETER_VALUE % (name, "a number")) from None
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_bool(name: str, text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise QemuError(qerror.INVALID_PARAMETER_VALUE % (name, "'on' or 'off'"))


def _typed_group(group: str, entries: dict[str, str]) -> dict[str, Any]:
    """qemu_opts_from_qdict for one [group]: unknown keys and bad values are errors."""
    desc = _GROUPS.get(group)
    if desc is None:
        raise QemuError(f"There is no option group '{group}'")
    out: dict[str, Any] = {}
    for key, text in entries.items():
        kind = desc.get(key)
        if kind is None:
            raise QemuError(qerror.INVALID_PARAMETER % key)
        if kind == "number":
            out[key] = _parse_number(key, text)
        elif kind == "bool":
            out[key] = _parse_bool(key, text)
        else:
            out[key] = text
    return out


def parse_blkdebug_config(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read a blkdebug config file into (inject_errors, set_states) option dicts, as read_config.

    Groups are `[inject-error]` / `[set-state]` (optionally `[group "id"]`); lines are
    `key = "value"` (a line without a quoted value gives an empty value); a '#' in the first
    column starts a comment.  Errors carry QEMU's messages.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise QemuError(f"Could not read blkdebug config file: {os.strerror(exc.errno or 0)}") \
            from exc
    groups: list[tuple[str, dict[str, Any]]] = []
    ids: dict[str, set[str]] = {}
    current: tuple[str, str | None, dict[str, str]] | None = None

    def finish() -> None:
        if current is None:
            return
        group, ident, entries = current
        typed = _typed_group(group, entries)
        if ident is not None:
            if ident in ids.setdefault(group, set()):
                raise QemuError(f"Duplicate ID '{ident}' for {group}")
            ids[group].add(ident)
        groups.append((group, typed))

    for line in lines:
        if not line.strip(" \t\r\n"):
            continue
        if line.startswith("#"):
            continue
        if line.startswith("["):
            match = _GROUP_WITH_ID.match(line)
            if match:
                finish()
                current = (match.group(1), match.group(2), {})
                continue
            match = _GROUP.match(line)
            if match:
                finish()
                current = (match.group(1), None, {})
            continue
        if current is None:
            raise QemuError("no group defined")
        stripped = line.lstrip(" \t\r\n\v\f")
        key = _KEY.match(stripped)
        assert key is not None  # the line is not blank
        value = _VALUE.match(stripped, key.end())
        current[2][key.group(0)] = value.group(1) if value else ""
    finish()
    # add_rule runs over all inject-error groups first, then all set-state groups; the event
    # and iotype checks happen then, so report them in that order.
    inject = [opts for group, opts in groups if group == "inject-error"]
    states = [opts for group, opts in groups if group == "set-state"]
    for opts in inject:
        _make_rule(opts, "inject-error")
    for opts in states:
        _make_rule(opts, "set-state")
    return inject, states


def parse_blkdebug_filename(filename: str) -> tuple[str | None, str]:
    """Split "blkdebug:CONFIG:IMAGE" into (config path or None when empty, image filename)."""
    if not filename.startswith("blkdebug:"):
        return None, filename
    rest = filename[len("blkdebug:"):]
    colon = rest.find(":")
    if colon < 0:
        raise QemuError("blkdebug requires both config file and image path")
    return (rest[:colon] or None), rest[colon + 1:]
