"""QAPI types of the block-core commands (a subset of QEMU 7.2's qapi/block-core.json)."""

from __future__ import annotations

from .registry import qapi_types

BLOCKDEV_DRIVERS = [
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps",
    "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
    "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum",
    "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
]

BLKDEBUG_EVENTS = [
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
]

qapi_types(
    {"enum": "BlockdevDriver", "data": BLOCKDEV_DRIVERS},
    {"enum": "BlockdevDiscardOptions", "data": ["ignore", "unmap"]},
    {"enum": "BlockdevDetectZeroesOptions", "data": ["off", "on", "unmap"]},
    {"enum": "BlockdevAioOptions", "data": ["threads", "native", "io_uring"]},
    {"enum": "OnOffAuto", "data": ["auto", "on", "off"]},
    {"enum": "BlkdebugEvent", "data": BLKDEBUG_EVENTS},
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
        "*set-state": ["BlkdebugSetStateOptions"], "*take-child-perms": ["str"],
        "*unshare-child-perms": ["str"]}},
    {"union": "BlockdevOptions", "base": "BlockdevOptionsBase", "discriminator": "driver",
     "data": {"file": "BlockdevOptionsFile", "raw": "BlockdevOptionsRaw",
              "qcow2": "BlockdevOptionsQcow2", "blkdebug": "BlockdevOptionsBlkdebug",
              "null-co": "BlockdevOptionsNull"}},
    {"alternate": "BlockdevRef", "data": {"definition": "BlockdevOptions", "reference": "str"}},
    {"alternate": "BlockdevRefOrNull",
     "data": {"definition": "BlockdevOptions", "reference": "str", "null": "null"}},
)
