"""QAPI input visitor: check QMP arguments against QAPI type expressions, with QEMU 7.2's errors.

Two halves, as in QEMU:
- InputVisitor is qapi/qobject-input-visitor.c: it walks a QObject tree (Python data) and knows
  how to name what it is looking at (`file.inject-error[0].errno`), in JSON mode (QMP) or keyval
  mode (-blockdev key=value, where every scalar is a string to convert).
- visit_type() plays the code QEMU generates from qapi/*.json (qapi-visit-*.c): structs with a
  base, flat unions on a discriminator, alternates, lists, enums, builtin scalars.

QEMU's wording is reproduced including its inconsistencies: type errors name the full path,
while enum and integer-range errors name only the member (`Parameter 'granularity' expects
uint32_t`), and a list element's bare name is "null".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emulator import qerror
from emulator.cutils import INT64_MAX, INT64_MIN, UINT64_MAX, qemu_strtoi64, qemu_strtosz, qemu_strtou64
from emulator.error import QemuError

from .qobject import qdict_order

_INT_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1, "int8_t"),
    "int16": (-(1 << 15), (1 << 15) - 1, "int16_t"),
    "int32": (-(1 << 31), (1 << 31) - 1, "int32_t"),
}
_UINT_RANGES = {"uint8": (0xFF, "uint8_t"), "uint16": (0xFFFF, "uint16_t"),
                "uint32": (0xFFFFFFFF, "uint32_t")}
BUILTIN_TYPES = frozenset({"str", "bool", "number", "int", "int64", "uint64", "size", "any", "null",
                           *_INT_RANGES, *_UINT_RANGES})


def _qtype(value: Any) -> str:
    """QEMU's QType of a value: qnull, qnum, qstring, qdict, qlist or qbool."""
    if value is None:
        return "qnull"
    if value is True or value is False:
        return "qbool"
    if isinstance(value, (int, float)):
        return "qnum"
    if isinstance(value, str):
        return "qstring"
    if isinstance(value, dict):
        return "qdict"
    if isinstance(value, (list, tuple)):
        return "qlist"
    raise TypeError(f"not a QObject: {type(value).__name__}")


def _try_int(value: Any) -> int | None:
    """qnum_get_try_int(): an integral QNum within int64."""
    if _qtype(value) == "qnum" and isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        return int(value)
    return None


def _try_uint(value: Any) -> int | None:
    if _qtype(value) == "qnum" and isinstance(value, int) and 0 <= value <= UINT64_MAX:
        return int(value)
    return None


def qapi_bool_parse(text: str) -> bool | None:
    if text in ("on", "yes", "true", "y"):
        return True
    if text in ("off", "no", "false", "n"):
        return False
    return None


# ---- the visitor ------------------------------------------------------------------------------

@dataclass
class _StackObject:
    name: str | None
    obj: Any
    unvisited: dict[str, None] = field(default_factory=dict)  # dict: keys not yet visited
    entries: list[Any] = field(default_factory=list)  # list: the elements
    next_entry: int = 0
    index: int = -1  # list index of the element being visited

    @property
    def is_dict(self) -> bool:
        return isinstance(self.obj, dict)


class InputVisitor:
    """QEMU's QObjectInputVisitor over Python data; `keyval` selects the key=value flavour."""

    def __init__(self, root: Any, *, keyval: bool = False) -> None:
        self.root = root
        self.keyval = keyval
        self.stack: list[_StackObject] = []

    # -- naming ----------------------------------------------------------------------------------
    def full_name(self, name: str | None, n: int = 0) -> str:
        text = ""
        for so in reversed(self.stack):
            if n:
                n -= 1
            elif so.is_dict:
                text = "." + (name if name is not None else "<anonymous>") + text
            else:
                text = (f".{so.index}" if self.keyval else f"[{so.index}]") + text
            name = so.name
        if name is not None:
            return name + text
        if text.startswith("."):
            return text[1:]
        return text or "<anonymous>"

    # -- access ----------------------------------------------------------------------------------
    def _try_get(self, name: str | None, consume: bool) -> tuple[bool, Any]:
        if not self.stack:
            return True, self.root
        tos = self.stack[-1]
        if tos.is_dict:
            assert name is not None
            if name not in tos.obj:
                return False, None
            if consume:
                tos.unvisited.pop(name, None)
            return True, tos.obj[name]
        found = tos.next_entry < len(tos.entries)
        value = tos.entries[tos.next_entry] if found else None
        if consume:
            if found:
                tos.next_entry += 1
            tos.index += 1
        return found, value

    def _get(self, name: str | None, consume: bool = True) -> Any:
        found, value = self._try_get(name, consume)
        if not found:
            raise QemuError(qerror.MISSING_PARAMETER % self.full_name(name))
        return value

    def _type_error(self, name: str | None, expected: str) -> QemuError:
        return QemuError(qerror.INVALID_PARAMETER_TYPE % (self.full_name(name), expected))

    def _value_error(self, name: str | None, expected: str) -> QemuError:
        return QemuError(qerror.INVALID_PARAMETER_VALUE % (self.full_name(name), expected))

    def _get_keyval(self, name: str | None) -> str:
        value = self._get(name)
        if isinstance(value, str):
            return value
        if isinstance(value, (dict, list)):
            raise QemuError(f"Parameters '{self.full_name(name)}.*' are unexpected")
        raise QemuError(f"Internal error: parameter {self.full_name(name)} invalid")

    # -- containers ------------------------------------------------------------------------------
    def optional(self, name: str) -> bool:
        return self._try_get(name, consume=False)[0]

    def start_struct(self, name: str | None) -> None:
        value = self._get(name)
        if _qtype(value) != "qdict":
            raise self._type_error(name, "object")
        self.stack.append(_StackObject(name, value, unvisited=dict.fromkeys(qdict_order(value))))

    def check_struct(self) -> None:
        tos = self.stack[-1]
        for key in tos.unvisited:
            raise QemuError(f"Parameter '{self.full_name(key)}' is unexpected")

    def end_struct(self) -> None:
        self.stack.pop()

    def start_list(self, name: str | None) -> None:
        value = self._get(name)
        if _qtype(value) != "qlist":
            raise self._type_error(name, "array")
        self.stack.append(_StackObject(name, value, entries=list(value)))

    def has_next(self) -> bool:
        tos = self.stack[-1]
        return tos.next_entry < len(tos.entries)

    def check_list(self) -> None:
        tos = self.stack[-1]
        if tos.next_entry < len(tos.entries):
            raise QemuError(f"Only {tos.index + 1} list elements expected in {self.full_name(None, 1)}")

    def end_list(self) -> None:
        self.stack.pop()

    def start_alternate(self, name: str | None) -> str:
        """The QType of the member, without consuming it."""
        return _qtype(self._get(name, consume=False))

    # -- scalars ---------------------------------------------------------------------------------
    def type_int64(self, name: str | None) -> int:
        if self.keyval:
            try:
                return qemu_strtoi64(self._get_keyval(name))
            except OSError:
                raise self._value_error(name, "integer") from None
        value = _try_int(self._get(name))
        if value is None:
            raise self._type_error(name, "integer")
        return value

    def type_uint64(self, name: str | None) -> int:
        if self.keyval:
            try:
                return qemu_strtou64(self._get_keyval(name))
            except OSError:
                raise self._value_error(name, "integer") from None
        raw = self._get(name)
        unsigned = _try_uint(raw)
        if unsigned is not None:
            return unsigned
        signed = _try_int(raw)  # negative values are accepted for backward compatibility
        if signed is not None:
            return signed & UINT64_MAX
        raise self._value_error(name, "uint64")

    def type_size(self, name: str | None) -> int:
        if self.keyval:
            try:
                return qemu_strtosz(self._get_keyval(name))
            except OSError:  # QEMU words ERANGE the same ("TODO report -ERANGE more nicely")
                raise self._value_error(name, "size") from None
        return self.type_uint64(name)

    def type_bool(self, name: str | None) -> bool:
        if self.keyval:
            parsed = qapi_bool_parse(self._get_keyval(name))
            if parsed is None:
                raise self._value_error(name, "'on' or 'off'")
            return parsed
        value = self._get(name)
        if _qtype(value) != "qbool":
            raise self._type_error(name, "boolean")
        return bool(value)

    def type_str(self, name: str | None) -> str:
        if self.keyval:
            return self._get_keyval(name)
        value = self._get(name)
        if _qtype(value) != "qstring":
            raise self._type_error(name, "string")
        return str(value)

    def type_number(self, name: str | None) -> float:
        if self.keyval:
            text = self._get_keyval(name)
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise self._type_error(name, "number")
            return number
        value = self._get(name)
        if _qtype(value) != "qnum":
            raise self._type_error(name, "number")
        return float(value)

    def type_any(self, name: str | None) -> Any:
        return self._get(name)

    def type_null(self, name: str | None) -> None:
        if _qtype(self._get(name)) != "qnull":
            raise self._type_error(name, "null")


# ---- the "generated code": walking QAPI type expressions ---------------------------------------

def _bare(name: str | None) -> str:
    return name if name is not None else "null"


def _member_type(spec: Any) -> Any:
    return spec["type"] if isinstance(spec, dict) else spec


def _enum_values(expr: Mapping[str, Any]) -> list[str]:
    return [v["name"] if isinstance(v, dict) else v for v in expr["data"]]


class QapiSchema:
    """QAPI type expressions by name (emulator.commands.TYPES), and the walk over them."""

    def __init__(self, types: Mapping[str, Mapping[str, Any]]) -> None:
        self.types = types

    def lookup(self, name: str) -> Mapping[str, Any]:
        try:
            return self.types[name]
        except KeyError:
            raise LookupError(f"QAPI type {name!r} is not defined") from None

    @staticmethod
    def kind(expr: Mapping[str, Any]) -> str:
        return next(k for k in ("struct", "union", "alternate", "enum") if k in expr)

    # -- dispatch on the type ----------------------------------------------------------------------
    def visit(self, v: InputVisitor, typ: Any, name: str | None) -> Any:
        if isinstance(typ, list):
            return self.visit_list(v, typ[0], name)
        if isinstance(typ, dict):  # an anonymous struct (inline command arguments)
            return self.visit_struct(v, {"struct": "<anonymous>", "data": typ}, name)
        if typ in BUILTIN_TYPES:
            return self.visit_builtin(v, typ, name)
        expr = self.lookup(typ)
        kind = self.kind(expr)
        if kind == "enum":
            return self.visit_enum(v, expr, name)
        if kind == "alternate":
            return self.visit_alternate(v, expr, name)
        return self.visit_struct(v, expr, name)

    @staticmethod
    def visit_builtin(v: InputVisitor, typ: str, name: str | None) -> Any:
        if typ == "str":
            return v.type_str(name)
        if typ == "bool":
            return v.type_bool(name)
        if typ in ("int", "int64"):
            return v.type_int64(name)
        if typ == "uint64":
            return v.type_uint64(name)
        if typ == "size":
            return v.type_size(name)
        if typ == "number":
            return v.type_number(name)
        if typ == "any":
            return v.type_any(name)
        if typ == "null":
            return v.type_null(name)
        if typ in _INT_RANGES:
            low, high, c_type = _INT_RANGES[typ]
            value = v.type_int64(name)
            if not low <= value <= high:
                raise QemuError(qerror.INVALID_PARAMETER_VALUE % (_bare(name), c_type))
            return value
        high, c_type = _UINT_RANGES[typ]
        value = v.type_uint64(name)
        if value > high:
            raise QemuError(qerror.INVALID_PARAMETER_VALUE % (_bare(name), c_type))
        return value

    @staticmethod
    def visit_enum(v: InputVisitor, expr: Mapping[str, Any], name: str | None) -> str:
        text = v.type_str(name)
        if text not in _enum_values(expr):
            raise QemuError(qerror.PARAMETER_VALUE_REFUSED % (_bare(name), text))
        return text

    def visit_list(self, v: InputVisitor, element: Any, name: str | None) -> list[Any]:
        v.start_list(name)
        items = []
        while v.has_next():
            items.append(self.visit(v, element, None))
        v.check_list()
        v.end_list()
        return items

    def visit_struct(self, v: InputVisitor, expr: Mapping[str, Any], name: str | None) -> dict[str, Any]:
        v.start_struct(name)
        out: dict[str, Any] = {}
        self.visit_members(v, expr, out)
        v.check_struct()
        v.end_struct()
        return out

    def visit_members(self, v: InputVisitor, expr: Mapping[str, Any], out: dict[str, Any]) -> None:
        """Members of a struct or union (base first), into `out`."""
        base = expr.get("base")
        if isinstance(base, str):
            self.visit_members(v, self.lookup(base), out)
        elif isinstance(base, dict):
            self._visit_member_dict(v, base, out)
        if "union" in expr:
            self._visit_variant(v, expr, out)
        else:
            self._visit_member_dict(v, expr.get("data") or {}, out)

    def _visit_member_dict(self, v: InputVisitor, members: Mapping[str, Any], out: dict[str, Any]) -> None:
        for key, spec in members.items():
            optional = key.startswith("*")
            member = key[1:] if optional else key
            if optional and not v.optional(member):
                continue
            out[member] = self.visit(v, _member_type(spec), member)

    def _visit_variant(self, v: InputVisitor, expr: Mapping[str, Any], out: dict[str, Any]) -> None:
        discriminator = expr.get("discriminator")
        if discriminator is None:  # a simple union: implicit {'type': ..., 'data': branch}
            out["type"] = self.visit_enum(v, {"enum": "", "data": list(expr["data"])}, "type")
            branch = _member_type(expr["data"][out["type"]])
            out["data"] = self.visit(v, branch, "data")
            return
        branch = expr["data"].get(out[discriminator])
        if branch is not None:
            self.visit_members(v, self.lookup(_member_type(branch)), out)

    def visit_alternate(self, v: InputVisitor, expr: Mapping[str, Any], name: str | None) -> Any:
        qtype = v.start_alternate(name)
        for spec in expr["data"].values():
            typ = _member_type(spec)
            if self.alternate_qtype(typ) == qtype:
                return self.visit(v, typ, name)
        raise QemuError(qerror.INVALID_PARAMETER_TYPE % (_bare(name), expr['alternate']))

    def alternate_qtype(self, typ: Any) -> str:
        """The QType a branch of an alternate is chosen by."""
        if isinstance(typ, list):
            return "qlist"
        if typ in BUILTIN_TYPES:
            return {"str": "qstring", "bool": "qbool", "null": "qnull"}.get(typ, "qnum")
        kind = self.kind(self.lookup(typ))
        return "qstring" if kind == "enum" else "qdict"

    # -- schema sanity ---------------------------------------------------------------------------
    def check_references(self, typ: Any) -> None:
        """Raise LookupError if `typ` refers, directly or not, to an undefined type."""
        seen: set[str] = set()

        def walk(t: Any) -> None:
            if isinstance(t, list):
                walk(t[0])
            elif isinstance(t, dict):
                for spec in t.values():
                    walk(_member_type(spec))
            elif t not in BUILTIN_TYPES and t not in seen:
                seen.add(t)
                expr = self.lookup(t)
                base = expr.get("base")
                if base is not None:
                    walk(base)
                if self.kind(expr) != "enum":
                    for spec in (expr.get("data") or {}).values():
                        walk(_member_type(spec))

        walk(typ)


def visit_arguments(schema: QapiSchema, args_type: str | dict[str, Any] | None, arguments: dict[str, Any],
                    *, keyval: bool = False) -> dict[str, Any]:
    """Check a command's `arguments` object (as qmp_marshal_* does); return the visited members."""
    v = InputVisitor(arguments, keyval=keyval)
    if args_type is None:
        return schema.visit_struct(v, {"struct": "<none>", "data": {}}, None)
    return schema.visit(v, args_type, None)


def visit_value(schema: QapiSchema, typ: Any, value: Any, *, keyval: bool = False) -> Any:
    """Check and convert one value of QAPI type `typ` (e.g. BlockdevOptions from -blockdev)."""
    return schema.visit(InputVisitor(value, keyval=keyval), typ, None)
