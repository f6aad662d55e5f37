"""The QAPI input visitor over a test schema shaped like QEMU's (flat union on a discriminator,
alternates, lists of structs, enums, sized integers), with QEMU 7.2's messages.  Where a case
mirrors a real command, the expected text is what real QEMU answered to blockdev-add,
block-dirty-bitmap-add, transaction or qmp_capabilities."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.error import QemuError
from emulator.qmp.keyval import keyval_parse
from emulator.qmp.visitor import QapiSchema, visit_arguments, visit_value

SCHEMA = QapiSchema({
    "Driver": {"enum": "Driver", "data": ["file", "qcow2", "blkdebug", "null-co", "nbd"]},
    "Event": {"enum": "Event", "data": ["read_aio", {"name": "flush_to_disk"}]},
    "Cache": {"struct": "Cache", "data": {"*direct": "bool", "*no-flush": "bool"}},
    "Base": {"struct": "Base", "data": {"driver": "Driver", "*node-name": "str", "*cache": "Cache",
                                        "*read-only": "bool"}},
    "File": {"struct": "File", "data": {"filename": "str", "*aio": {"type": "Aio"}}},
    "Aio": {"enum": "Aio", "data": ["threads", "native"]},
    "Generic": {"struct": "Generic", "data": {"file": "Ref"}},
    "Qcow2": {"struct": "Qcow2", "base": "Generic", "data": {"*backing": "RefOrNull"}},
    "Inject": {"struct": "Inject", "data": {"event": "Event", "*state": "int", "*errno": "int"}},
    "SetState": {"struct": "SetState", "data": {"event": "Event", "new_state": "int"}},
    "Blkdebug": {"struct": "Blkdebug", "data": {"image": "Ref", "*inject-error": ["Inject"],
                                                "*set-state": ["SetState"]}},
    "Null": {"struct": "Null", "data": {"*size": "int", "*latency-ns": "uint64"}},
    "Options": {"union": "Options", "base": "Base", "discriminator": "driver",
                "data": {"file": "File", "qcow2": "Qcow2", "blkdebug": "Blkdebug", "null-co": "Null"}},
    "Ref": {"alternate": "Ref", "data": {"definition": "Options", "reference": "str"}},
    "RefOrNull": {"alternate": "RefOrNull", "data": {"definition": "Options", "reference": "str",
                                                      "null": "null"}},
    "BitmapAdd": {"struct": "BitmapAdd", "data": {"node": "str", "name": "str", "*granularity": "uint32",
                                                  "*persistent": "bool"}},
    "Wrapper": {"struct": "Wrapper", "data": {"data": "BitmapAdd"}},
    "Abort": {"struct": "Abort", "data": {}},
    "AbortWrapper": {"struct": "AbortWrapper", "data": {"data": "Abort"}},
    "ActionKind": {"enum": "ActionKind", "data": ["bitmap-add", "abort"]},
    "Action": {"union": "Action", "base": {"type": "ActionKind"}, "discriminator": "type",
               "data": {"bitmap-add": "Wrapper", "abort": "AbortWrapper"}},
    "Mode": {"enum": "Mode", "data": ["individual", "grouped"]},
    "Props": {"struct": "Props", "data": {"*completion-mode": "Mode"}},
    "Cap": {"enum": "Cap", "data": ["oob"]},
    "Scalars": {"struct": "Scalars", "data": {
        "*i8": "int8", "*i16": "int16", "*i32": "int32", "*i64": "int64", "*u8": "uint8",
        "*u16": "uint16", "*u64": "uint64", "*sz": "size", "*num": "number", "*any": "any",
        "*nul": "null", "*b": "bool", "*s": "str"}},
})
TRANSACTION = {"actions": ["Action"], "*properties": "Props"}


def error_of(typ: Any, value: Any, *, keyval: bool = False) -> str:
    with pytest.raises(QemuError) as info:
        visit_arguments(SCHEMA, typ, value, keyval=keyval)
    assert info.value.error_class == "GenericError"
    return info.value.desc


FILE = {"driver": "file", "filename": "x"}


@pytest.mark.parametrize(("value", "message"), [
    # real QEMU 7.2 blockdev-add answers
    ({"driver": "qcow2", "node-name": "n0", "file": {"driver": "file", "filename": 5}},
     "Invalid parameter type for 'file.filename', expected: string"),
    ({"driver": "qcow2", "node-name": "n0", "file": 5}, "Invalid parameter type for 'file', expected: Ref"),
    ({"driver": "qcow2", "file": None}, "Invalid parameter type for 'file', expected: Ref"),
    ({"driver": "qcow2", "file": {"driver": "file"}}, "Parameter 'file.filename' is missing"),
    ({"driver": "qcow2", "file": {"driver": "bogus"}}, "Parameter 'driver' does not accept value 'bogus'"),
    ({"driver": "qcow2", "file": {"filename": "x"}}, "Parameter 'file.driver' is missing"),
    ({"driver": "qcow2", "file": {**FILE, "bogus": 1}}, "Parameter 'file.bogus' is unexpected"),
    ({"driver": "qcow2", "file": FILE, "bogus": 1}, "Parameter 'bogus' is unexpected"),
    ({"driver": "qcow2", "read-only": "yes", "file": "x"},
     "Invalid parameter type for 'read-only', expected: boolean"),
    ({"driver": "qcow2", "bogus1": 1, "node-name": 7, "file": "x"},
     "Invalid parameter type for 'node-name', expected: string"),
    ({"driver": "qcow2", "file": {"driver": "blkdebug", "image": "x",
                                  "inject-error": [{"event": "read_aio", "errno": "x"}]}},
     "Invalid parameter type for 'file.inject-error[0].errno', expected: integer"),
    ({"driver": "qcow2", "file": {"driver": "blkdebug", "image": "x", "inject-error": [{"event": "bogus"}]}},
     "Parameter 'event' does not accept value 'bogus'"),
    ({"driver": "qcow2", "file": {"driver": "blkdebug", "image": "x", "inject-error": [{"errno": 5}]}},
     "Parameter 'file.inject-error[0].event' is missing"),
    ({"driver": "qcow2", "file": {"driver": "blkdebug", "image": "x", "inject-error": {"event": "read_aio"}}},
     "Invalid parameter type for 'file.inject-error', expected: array"),
    ({"driver": "qcow2", "file": {"driver": "blkdebug", "image": "x", "inject-error": [5]}},
     "Invalid parameter type for 'file.inject-error[0]', expected: object"),
    ({"driver": "qcow2", "file": {"driver": "blkdebug", "image": "x",
                                  "set-state": [{"event": "flush_to_disk", "new_state": "2"}]}},
     "Invalid parameter type for 'file.set-state[0].new_state', expected: integer"),
    ({"driver": "qcow2", "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": []}}},
     "Invalid parameter type for 'file.image.filename', expected: string"),
    ({"driver": "qcow2", "file": {"driver": "blkdebug", "image": 5}},
     "Invalid parameter type for 'image', expected: Ref"),
    ({"driver": "qcow2", "file": {**FILE, "aio": "bogus"}}, "Parameter 'aio' does not accept value 'bogus'"),
    ({"driver": "qcow2", "cache": {"direct": 1}, "file": "x"},
     "Invalid parameter type for 'cache.direct', expected: boolean"),
    ({"node-name": "n0"}, "Parameter 'driver' is missing"),
    ({"driver": 5}, "Invalid parameter type for 'driver', expected: string"),
    ({"driver": "qcow2", "file": "x", "backing": 5}, "Invalid parameter type for 'backing', expected: RefOrNull"),
    ({"driver": "qcow2", "file": "x", "backing": True}, "Invalid parameter type for 'backing', expected: RefOrNull"),
    ({"driver": "null-co", "size": "x"}, "Invalid parameter type for 'size', expected: integer"),
    ({"driver": "null-co", "size": 1.5}, "Invalid parameter type for 'size', expected: integer"),
    ({"driver": "null-co", "latency-ns": "1"}, "Parameter 'latency-ns' expects uint64"),
    ({"driver": "null-co", "latency-ns": 1.0}, "Parameter 'latency-ns' expects uint64"),
    ({"driver": "null-co", "latency-ns": 18446744073709551616.0}, "Parameter 'latency-ns' expects uint64"),
    ({"driver": "nbd"}, None),  # an enum value without a branch has no variant members
])
def test_blockdev_like_errors(value: dict[str, Any], message: str | None) -> None:
    if message is None:
        assert visit_arguments(SCHEMA, "Options", value) == value
    else:
        assert error_of("Options", value) == message


@pytest.mark.parametrize(("granularity", "message"), [
    (4294967296, "Parameter 'granularity' expects uint32_t"),
    (-512, "Parameter 'granularity' expects uint32_t"),
    (-9223372036854775808, "Parameter 'granularity' expects uint32_t"),
    (18446744073709551615, "Parameter 'granularity' expects uint32_t"),
    ("65536", "Parameter 'granularity' expects uint64"),
    (1.0, "Parameter 'granularity' expects uint64"),
    (-9223372036854775809.0, "Parameter 'granularity' expects uint64"),
    (True, "Parameter 'granularity' expects uint64"),
    (None, "Parameter 'granularity' expects uint64"),
    ([], "Parameter 'granularity' expects uint64"),
    ({}, "Parameter 'granularity' expects uint64"),
])
def test_bitmap_granularity_errors(granularity: Any, message: str) -> None:
    assert error_of("BitmapAdd", {"node": "d0", "name": "b", "granularity": granularity}) == message


def test_granularity_limits_accepted() -> None:
    for value in (512, 2**31, 2**32 - 1):
        assert visit_arguments(SCHEMA, "BitmapAdd", {"node": "d", "name": "b", "granularity": value}) == \
            {"node": "d", "name": "b", "granularity": value}


@pytest.mark.parametrize(("value", "message"), [
    ({"node": "d0"}, "Parameter 'name' is missing"),
    ({"name": "x"}, "Parameter 'node' is missing"),
    ({"zzz": 1}, "Parameter 'node' is missing"),  # members first, unexpected ones after
    ({}, "Parameter 'node' is missing"),
])
def test_missing_members_come_first(value: dict[str, Any], message: str) -> None:
    assert error_of("BitmapAdd", value) == message


@pytest.mark.parametrize(("value", "message"), [
    ({"actions": [{"type": "bogus"}]}, "Parameter 'type' does not accept value 'bogus'"),
    ({"actions": [{"data": {}}]}, "Parameter 'actions[0].type' is missing"),
    ({"actions": [{"type": "abort"}]}, "Parameter 'actions[0].data' is missing"),
    ({"actions": [{"type": "bitmap-add", "data": {"node": "d0"}}]}, "Parameter 'actions[0].data.name' is missing"),
    ({"actions": [{"type": "bitmap-add", "data": {"node": "d0", "name": "x", "granularity": "1"}}]},
     "Parameter 'actions[0].data.granularity' expects uint64"),
    ({"actions": [{"type": "bitmap-add", "data": {"node": "d0", "name": "x", "granularity": -1}}]},
     "Parameter 'granularity' expects uint32_t"),
    ({"actions": [{"type": "bitmap-add", "data": {"node": "d0", "name": "x"}, "x": 1}]},
     "Parameter 'actions[0].x' is unexpected"),
    ({"actions": [{"type": "bitmap-add", "data": {"node": "d0", "name": "x", "q": 1}}]},
     "Parameter 'actions[0].data.q' is unexpected"),
    ({"actions": [{"type": "bitmap-add", "data": 5}]}, "Invalid parameter type for 'actions[0].data', expected: object"),
    ({"actions": [{"type": "abort", "data": {}}], "properties": {"completion-mode": 5}},
     "Invalid parameter type for 'properties.completion-mode', expected: string"),
    ({"actions": [{"type": "abort", "data": {}}], "properties": {"completion-mode": "bogus"}},
     "Parameter 'completion-mode' does not accept value 'bogus'"),
    ({"actions": {}}, "Invalid parameter type for 'actions', expected: array"),
    ({"actions": [5]}, "Invalid parameter type for 'actions[0]', expected: object"),
    ({"actions": [{"type": "abort", "data": {}}, {"type": "abort", "data": {"x": 1}}]},
     "Parameter 'actions[1].data.x' is unexpected"),
])
def test_transaction_like_errors(value: dict[str, Any], message: str) -> None:
    assert error_of(TRANSACTION, value) == message


def test_list_elements_are_named_null_by_enum_errors() -> None:
    # qmp_capabilities {"enable": ["bogus"]} on real QEMU:
    assert error_of({"*enable": ["Cap"]}, {"enable": ["bogus"]}) == "Parameter 'null' does not accept value 'bogus'"
    assert error_of({"*enable": ["Cap"]}, {"enable": "oob"}) == "Invalid parameter type for 'enable', expected: array"


def test_no_arguments_means_empty_struct() -> None:
    assert visit_arguments(SCHEMA, None, {}) == {}
    assert error_of(None, {"x": 1}) == "Parameter 'x' is unexpected"


def test_valid_values_come_back_in_schema_order_without_absent_optionals() -> None:
    value = {"file": {"image": "img", "driver": "blkdebug",
                      "inject-error": [{"state": 2, "event": "read_aio"}]},
             "driver": "qcow2", "backing": None}
    out = visit_arguments(SCHEMA, "Options", value)
    assert out == value
    assert list(out) == ["driver", "file", "backing"]
    assert list(out["file"]["inject-error"][0]) == ["event", "state"]


@pytest.mark.parametrize(("member", "value", "message"), [
    ("i8", 128, "Parameter 'i8' expects int8_t"),
    ("i8", -129, "Parameter 'i8' expects int8_t"),
    ("i16", 1 << 15, "Parameter 'i16' expects int16_t"),
    ("i32", -(1 << 31) - 1, "Parameter 'i32' expects int32_t"),
    ("i64", 1 << 63, "Invalid parameter type for 'i64', expected: integer"),
    ("u8", 256, "Parameter 'u8' expects uint8_t"),
    ("u16", 65536, "Parameter 'u16' expects uint16_t"),
    ("num", "1", "Invalid parameter type for 'num', expected: number"),
    ("nul", 0, "Invalid parameter type for 'nul', expected: null"),
    ("b", 1, "Invalid parameter type for 'b', expected: boolean"),
    ("s", None, "Invalid parameter type for 's', expected: string"),
])
def test_scalar_errors(member: str, value: Any, message: str) -> None:
    assert error_of("Scalars", {member: value}) == message


def test_scalar_conversions() -> None:
    out = visit_arguments(SCHEMA, "Scalars", {"i8": -128, "u64": -1, "sz": 5, "num": 3, "any": {"x": [1]},
                                               "nul": None, "b": False, "s": ""})
    assert out == {"i8": -128, "u64": 2**64 - 1, "sz": 5, "num": 3.0, "any": {"x": [1]}, "nul": None,
                   "b": False, "s": ""}
    assert type(out["num"]) is float


# ---- keyval mode (-blockdev key=value), real QEMU's answers ------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("driver=file,node-name=f,filename=x,read-only=maybe", "Parameter 'read-only' expects 'on' or 'off'"),
    ("driver=file,node-name=f,filename=x,read-only=yes,bogus=1", "Parameter 'bogus' is unexpected"),
    ("qcow2,node-name=q,file.driver=file,file.filename=x,file.bogus=1", "Parameter 'file.bogus' is unexpected"),
    ("qcow2,file.driver=blkdebug,file.image=i,file.inject-error.0.event=bogus",
     "Parameter 'event' does not accept value 'bogus'"),
    ("qcow2,file.driver=blkdebug,file.image=i,file.inject-error.0.event=read_aio,file.inject-error.0.errno=x",
     "Parameter 'file.inject-error.0.errno' expects integer"),
    ("qcow2,file.driver=blkdebug,file.image=i,file.inject-error.1.event=read_aio",
     "Parameter 'file.inject-error.0' missing"),
    ("qcow2,node-name=q,file=x,file.driver=file", "Parameters 'file.*' used inconsistently"),
    ("node-name=q,,x", "Parameter 'driver' is missing"),
    ("qcow2,node-name", "Expected '=' after parameter 'node-name'"),
    ("qcow2,node-name=q,node-name=r", "Parameter 'file' is missing"),
    ("qcow2,node-name=q,file.filename=a,,b", "Parameter 'file.driver' is missing"),
    ("", "Parameter 'driver' is missing"),
    ("null-co,node-name=n,size=1e3", "Parameter 'size' expects integer"),
    ("null-co,node-name=n,size=1M", "Parameter 'size' expects integer"),
])
def test_keyval_errors(text: str, message: str) -> None:
    with pytest.raises(QemuError) as info:
        visit_value(SCHEMA, "Options", keyval_parse(text, "driver"), keyval=True)
    assert info.value.desc == message


def test_keyval_values_are_converted() -> None:
    text = ("qcow2,node-name=q,read-only=on,file.driver=blkdebug,file.image.driver=file,"
            "file.image.filename=a,,b.img,file.inject-error.0.event=read_aio,"
            "file.inject-error.0.errno=0x5,file.inject-error.0.state=010")
    out = visit_value(SCHEMA, "Options", keyval_parse(text, "driver"), keyval=True)
    assert out == {"driver": "qcow2", "node-name": "q", "read-only": True,
                   "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": "a,b.img"},
                            "inject-error": [{"event": "read_aio", "state": 8, "errno": 5}]}}
    null = visit_value(SCHEMA, "Options", keyval_parse("null-co,latency-ns=-1,size=7", "driver"), keyval=True)
    assert null == {"driver": "null-co", "size": 7, "latency-ns": 2**64 - 1}


def test_schema_reference_check() -> None:
    SCHEMA.check_references("Options")
    with pytest.raises(LookupError):
        QapiSchema({"S": {"struct": "S", "data": {"x": "Missing"}}}).check_references("S")


def test_every_registered_command_schema_resolves() -> None:
    """Catches a typo in any command family's QAPI types (emulator.commands.TYPES)."""
    from emulator.commands import COMMANDS, TYPES

    schema = QapiSchema(TYPES)
    for command in COMMANDS.values():
        if command.args is not None:
            schema.check_references(command.args)
