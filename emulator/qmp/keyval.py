"""QEMU's KEY=VALUE,... syntax with dotted keys (util/keyval.c), as -blockdev accepts it.

`file.driver=file,file.filename=x.img,inject-error.0.event=read_aio` becomes nested dicts and
lists of strings; the keyval flavour of the input visitor then converts the strings to the types
the schema asks for.  Errors carry QEMU's messages.
"""

from __future__ import annotations

import re
from typing import Any

from emulator import qerror
from emulator.error import QemuError

from .qobject import qdict_order

_QAPI_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_INDEX = re.compile(r"[0-9]+")
INT_MAX = (1 << 31) - 1


def _key_to_index(fragment: str, whole: bool) -> tuple[int, int]:
    """(index, length of the digits) or (-1, 0) — QEMU's key_to_index()."""
    match = _INDEX.match(fragment)
    if not match or (whole and match.end() != len(fragment)):
        return -1, 0
    digits = match.group().lstrip("0") or "0"
    if len(digits) > len(str(INT_MAX)):  # also keeps int() away from thousands of digits
        return INT_MAX, match.end()
    return min(int(digits), INT_MAX), match.end()


def _put(cur: dict[str, Any], key_in_cur: str, value: str | None, key: str, cursor: int) -> Any:
    old = cur.get(key_in_cur)
    if old is not None:
        if isinstance(old, str) != (value is not None):
            raise QemuError(f"Parameters '{key[:cursor]}.*' used inconsistently")
        if value is None:
            return old
    new: Any = value if value is not None else {}
    cur[key_in_cur] = new
    return new


def _parse_one(qdict: dict[str, Any], params: str, pos: int, implied_key: str | None) -> int:
    end_of_key = pos
    while end_of_key < len(params) and params[end_of_key] not in "=,":
        end_of_key += 1
    if implied_key and end_of_key > pos and (end_of_key == len(params) or params[end_of_key] != "="):
        key = implied_key
        key_is_implied = True
    else:
        key = params[pos:end_of_key]
        key_is_implied = False
    cur = qdict
    s = 0
    key_in_cur = ""
    while True:
        if s != 0 and _key_to_index(key[s:], False)[0] >= 0:
            length = _key_to_index(key[s:], False)[1]
        else:
            match = _QAPI_NAME.match(key, s)
            length = match.end() - s if match else 0
        if not length or (s + length < len(key) and key[s + length] != "."):
            raise QemuError(qerror.INVALID_PARAMETER % key)
        if length >= 128:
            fragment = s != 0 or s + length != len(key)
            raise QemuError(f"Parameter{' fragment' if fragment else ''} '{key[s:s + length]}' is too long")
        if s != 0:
            cur = _put(cur, key_in_cur, None, key, s - 1)
        key_in_cur = key[s:s + length]
        s += length
        if s >= len(key) or key[s] != ".":
            break
        s += 1
    if key_is_implied:
        value_pos = pos
    else:
        if end_of_key >= len(params) or params[end_of_key] != "=":
            raise QemuError(f"Expected '=' after parameter '{key[:s]}'")
        value_pos = end_of_key + 1
    value = []
    i = value_pos
    while i < len(params):
        ch = params[i]
        if ch == ",":
            i += 1
            if i >= len(params) or params[i] != ",":
                break
        value.append(params[i])
        i += 1
    _put(cur, key_in_cur, "".join(value), key, len(key))
    return i


def _listify(cur: dict[str, Any], key_of_cur: list[str]) -> Any:
    has_index = has_member = False
    for key in qdict_order(cur):
        if _key_to_index(key, True)[0] >= 0:
            has_index = True
        else:
            has_member = True
        if isinstance(cur[key], dict):
            cur[key] = _listify(cur[key], [*key_of_cur, key])
    prefix = "".join(f"{k}." for k in key_of_cur)
    if has_index and has_member:
        raise QemuError(f"Parameters '{prefix}*' used inconsistently")
    if not has_index:
        return cur
    elements: dict[int, Any] = {}
    for key, value in cur.items():
        elements[_key_to_index(key, True)[0]] = value
    for i in range(max(elements) + 1):
        if i not in elements:
            raise QemuError(f"Parameter '{prefix}{i}' missing")
    return [elements[i] for i in range(len(elements))]


def keyval_parse(params: str, implied_key: str | None = None) -> dict[str, Any]:
    """Parse `params` into a dict tree of strings (QEMU's keyval_parse())."""
    qdict: dict[str, Any] = {}
    pos = 0
    while pos < len(params):
        pos = _parse_one(qdict, params, pos, implied_key)
        implied_key = None
    result = _listify(qdict, [])
    assert isinstance(result, dict)
    return result
