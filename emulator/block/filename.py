"""Node file names as QEMU reports them (bdrv_refresh_filename in block.c).

A node's filename is a plain path when opening that path with the node's driver would rebuild the
same tree (e.g. a qcow2 over a host file); otherwise it is a "json:{...}" pseudo-filename made of
the node's *full open options* (its strong options, "driver", and its children's options), e.g.
for a qcow2 over blkdebug with injected errors.  QEMU prints that JSON from a QDict, whose member
order is its hash-table order (tdb_hash over 512 buckets), so we reproduce that order too.
"""

from __future__ import annotations

import json
from typing import Any

from .image import backing_path
from .node import BlockNode

QDICT_BUCKET_MAX = 512


def tdb_hash(name: str) -> int:
    """QEMU's qdict hash (tdb_hash), 32-bit unsigned arithmetic."""
    data = name.encode()
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def qdict_order(keys: list[str]) -> list[str]:
    """The order qdict_first/qdict_next visit `keys` inserted in this order."""
    buckets: dict[int, list[str]] = {}
    for key in keys:
        buckets.setdefault(tdb_hash(key) % QDICT_BUCKET_MAX, []).insert(0, key)
    return [key for bucket in sorted(buckets) for key in buckets[bucket]]


def qobject_to_json(value: Any) -> str:
    """qobject_to_json (non-pretty): QEMU's separators and QDict member order."""
    if isinstance(value, dict):
        members = (f"{json.dumps(key)}: {qobject_to_json(value[key])}" for key in qdict_order(list(value)))
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(qobject_to_json(item) for item in value) + "]"
    return json.dumps(value)


def flatten(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """qdict_flatten: nested lists and dicts become dotted keys ("inject-error.0.event")."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list):
            flat.update(flatten({str(i): item for i, item in enumerate(value)}, name + "."))
        else:
            flat[name] = value
    return flat


def strong_options(node: BlockNode) -> tuple[dict[str, Any], bool]:
    """append_strong_runtime_options: (options, whether any besides driver/filename were given)."""
    flat = flatten(node.open_options())
    result: dict[str, Any] = {}
    found_any = False
    for pattern in node.strong_runtime_opts:
        given = False
        for key, value in flat.items():
            if key == pattern or (pattern.endswith(".") and key.startswith(pattern)):
                result[key] = value
                given = True
        if given and pattern not in ("driver", "filename"):
            found_any = True
    result.setdefault("driver", node.driver)
    return result, found_any


def _backing_overridden(node: BlockNode) -> bool:
    """bdrv_backing_overridden: the backing is not what the image header names."""
    header_name = node.backing_file
    backing = node.backing
    if backing is None:
        return bool(header_name)
    backing_name = node_filename(backing)
    if header_name == backing_name:
        return False
    own = exact_filename(node.children["file"]) if "file" in node.children else ""
    return backing_path(own, header_name) != backing_name


def full_open_options(node: BlockNode) -> dict[str, Any]:
    """bs->full_open_options after bdrv_refresh_filename."""
    if node.implicit and node.primary_child() is not None:
        return full_open_options(node.primary_child())  # type: ignore[arg-type]
    options, _ = strong_options(node)
    overridden = _backing_overridden(node)
    for role, child in node.children.items():
        if role == "backing" and not overridden:
            continue
        options[role] = full_open_options(child)
    if overridden and node.backing is None:
        options["backing"] = None
    return options


def exact_filename(node: BlockNode) -> str:
    """bs->exact_filename: a plain name that reopens the same tree, or "" if there is none."""
    if node.implicit and node.primary_child() is not None:
        return exact_filename(node.primary_child())  # type: ignore[arg-type]
    own = node.exact_filename_hook()  # the driver's .bdrv_refresh_filename
    if own is not None:
        return own
    child = node.primary_child()
    if child is None or node.is_filter:
        return ""
    _, strong = strong_options(node)
    if strong or _backing_overridden(node) or not child.is_protocol:
        return ""
    return exact_filename(child)


def node_filename(node: BlockNode) -> str:
    """bs->filename: the exact filename, else "json:" + the full open options."""
    exact = exact_filename(node)
    if exact:
        return exact
    return "json:" + qobject_to_json(full_open_options(node))
