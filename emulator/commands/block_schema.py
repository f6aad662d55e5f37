"""QAPI types of the block-core commands (a subset of QEMU 7.2's qapi/block-core.json)."""

from __future__ import annotations

from emulator.block.blkdebug import BLKDEBUG_EVENTS

from .registry import qapi_types

BLOCKDEV_DRIVERS = [
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps",
    "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
    "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum",
    "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
]


qapi_types(
    {"enum": "BlockdevDriver", "data": BLOCKDEV_DRIVERS},
    {"enum": "BlockdevDiscardOptions", "data": ["ignore", "unmap"]},
    {"enum": "BlockdevDetectZeroesOptions", "data": ["off", "on", "unmap"]},
    {"enum": "BlockdevAioOptions", "data": ["threads", "native", "io_uring"]},
    {"enum": "OnOffAuto", "data": ["auto", "on", "off"]},
    {"enum": "BlockPermission", "data": ["consistent-read", "write", "write-unchanged", "resize"]},
    {"enum": "BlkdebugEvent", "data": list(BLKDEBUG_EVENTS)},
    {"enum": "BlkdebugIOType", "data": ["read", "write", "write-zeroes", "discard", "flush",
                                        "block-status"]},
    {"struct": "BlockdevCacheOptions", "data": {"*direct": "bool", "*no-flush": "bool"}},
    {"struct": "BlockdevOptionsBase", "data": {
        "driver": "BlockdevDriver", "*node-name": "str", "*discard": "BlockdevDiscardOptions",
        "*cache": "BlockdevCacheOptions", "*read-only": "bool", "*auto-read-only": "bool",
        "*force-share": "bool", "*detect-zeroes": "BlockdevDetectZeroesOptions"}},
    {"struct": "BlockdevOptionsFile", "data": {
        "filename": "str", "*pr-manager": "str", "*locking": "OnOffAuto",
        "*aio": "BlockdevAioOptions", "*aio-max-batch": "int", "*drop-cache": "bool",
        "*x-check-cache-dropped": "bool"}},
    {"struct": "BlockdevOptionsNull", "data": {
        "*size": "int", "*latency-ns": "uint64", "*read-zeroes": "bool"}},
    {"struct": "BlockdevOptionsGenericFormat", "data": {"file": "BlockdevRef"}},
    {"struct": "BlockdevOptionsRaw", "base": "BlockdevOptionsGenericFormat",
     "data": {"*offset": "int", "*size": "int"}},
    {"struct": "BlockdevOptionsGenericCOWFormat", "base": "BlockdevOptionsGenericFormat",
     "data": {"*backing": "BlockdevRefOrNull"}},
    {"struct": "BlockdevOptionsQcow2", "base": "BlockdevOptionsGenericCOWFormat", "data": {
        "*lazy-refcounts": "bool", "*pass-discard-request": "bool",
        "*pass-discard-snapshot": "bool", "*pass-discard-other": "bool",
        "*cache-size": "int", "*l2-cache-size": "int", "*l2-cache-entry-size": "int",
        "*refcount-cache-size": "int", "*cache-clean-interval": "int",
        "*data-file": "BlockdevRef"}},
    {"struct": "BlkdebugInjectErrorOptions", "data": {
        "event": "BlkdebugEvent", "*state": "int", "*iotype": "BlkdebugIOType", "*errno": "int",
        "*sector": "int", "*once": "bool", "*immediately": "bool"}},
    {"struct": "BlkdebugSetStateOptions", "data": {
        "event": "BlkdebugEvent", "*state": "int", "new_state": "int"}},
    {"struct": "BlockdevOptionsBlkdebug", "data": {
        "image": "BlockdevRef", "*config": "str", "*align": "int", "*max-transfer": "int32",
        "*opt-write-zero": "int32", "*max-write-zero": "int32", "*opt-discard": "int32",
        "*max-discard": "int32", "*inject-error": ["BlkdebugInjectErrorOptions"],
        "*set-state": ["BlkdebugSetStateOptions"], "*take-child-perms": ["BlockPermission"],
        "*unshare-child-perms": ["BlockPermission"]}},
    {"enum": "OnCbwError", "data": ["break-guest-write", "break-snapshot"]},
    {"struct": "BlockdevOptionsCbw", "base": "BlockdevOptionsGenericFormat", "data": {
        "target": "BlockdevRef", "*bitmap": "BlockDirtyBitmap", "*on-cbw-error": "OnCbwError",
        "*cbw-timeout": "uint32", "*min-cluster-size": "size"}},
    {"struct": "BlockdevOptionsThrottle", "data": {"throttle-group": "str",
                                                   "file": "BlockdevRef"}},
    {"union": "BlockdevOptions", "base": "BlockdevOptionsBase", "discriminator": "driver",
     "data": {"file": "BlockdevOptionsFile", "raw": "BlockdevOptionsRaw",
              "qcow2": "BlockdevOptionsQcow2", "blkdebug": "BlockdevOptionsBlkdebug",
              "null-co": "BlockdevOptionsNull", "copy-before-write": "BlockdevOptionsCbw",
              "snapshot-access": "BlockdevOptionsGenericFormat",
              "throttle": "BlockdevOptionsThrottle", "vmdk": "BlockdevOptionsGenericCOWFormat"}},
    {"alternate": "BlockdevRef", "data": {"definition": "BlockdevOptions", "reference": "str"}},
    {"alternate": "BlockdevRefOrNull",
     "data": {"definition": "BlockdevOptions", "reference": "str", "null": "null"}},
)
