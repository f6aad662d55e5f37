"""`blocktxn img`: the qemu-img subset the test suites use (create, info, check, compare, map).

Options, output text and exit codes follow qemu-img 7.2, or 10.0 where its output differs (`info`
shows the protocol child, `map --output=json` a "compressed" member): `--blocktxn-version V` as the first argument, else
$BLOCKTXN_QEMU_VERSION, else the newest (emulator/versions.py).  JSON objects are printed in the order
QEMU's QDict iterates them (hash-bucket order), so the text matches qemu-img's byte for byte.

Usage:  python -m emulator.tools.img COMMAND [options] ...
"""

from __future__ import annotations

import getopt
import json
import math
import sys
from typing import Any, TextIO

from emulator.block.file import FileStorage
from emulator.block.image import (
    FORMATS,
    OpenedImage,
    backing_path,
    create_image,
    creation_message,
    open_image_chain,
    probe_format,
)
from emulator.block.node import BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_ZERO, sectors_to_bytes
from emulator.block.qcow2 import Qcow2Image
from emulator.cutils import qemu_strtosz
from emulator.error import QemuError
from emulator.versions import DEFAULT_PROFILE, QemuProfile, UnsupportedVersion, select

IO_BUF_SIZE = 2 * 1024 * 1024
#: qcow2 creation options whose only supported value is QEMU's default.
_DEFAULT_OPTIONS = {("lazy_refcounts", "off"), ("refcount_bits", "16"), ("compat", "1.1"), ("compat", "v3"),
                    ("extended_l2", "off"), ("compression_type", "zlib"), ("preallocation", "off")}
PROG = "qemu-img"


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ---- QDict ordering and QEMU's pretty JSON ------------------------------------------------------
def _tdb_hash(name: str) -> int:
    """qdict.c's tdb_hash."""
    b = name.encode()
    value = (0x238F13AF * len(b)) & 0xFFFFFFFF
    for i, c in enumerate(b):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def qdict_order(d: dict[str, Any]) -> dict[str, Any]:
    """Reorder `d` (given in QAPI field order) as a QDict iterates it, recursively."""
    buckets: dict[int, list[str]] = {}
    for key in d:
        buckets.setdefault(_tdb_hash(key) % 512, []).insert(0, key)
    out: dict[str, Any] = {}
    for h in sorted(buckets):
        for key in buckets[h]:
            out[key] = _qdict_order_value(d[key])
    return out


def _qdict_order_value(v: Any) -> Any:
    if isinstance(v, dict):
        return qdict_order(v)
    if isinstance(v, list):
        return [_qdict_order_value(item) for item in v]
    return v


def _pretty_json(v: Any, level: int) -> str:
    """qobject_to_json_pretty: like json.dumps(indent=4), but an empty list or dict still
    breaks the line ("[" newline, indent, "]"), as QEMU prints it."""
    if isinstance(v, (dict, list)):
        inner = "    " * (level + 1)
        items = ([f"{json.dumps(k)}: {_pretty_json(x, level + 1)}" for k, x in v.items()]
                 if isinstance(v, dict) else [_pretty_json(x, level + 1) for x in v])
        body = ",\n".join(inner + item for item in items)
        open_, close = ("{", "}") if isinstance(v, dict) else ("[", "]")
        return f"{open_}\n{body}{chr(10) if items else ''}{'    ' * level}{close}"
    return json.dumps(v)


def qobject_json(d: dict[str, Any]) -> str:
    """qobject_to_json_pretty of a QAPI object given in field order."""
    return _pretty_json(qdict_order(d), 0)


def dump_qobject(value: Any, indentation: int, lines: list[str]) -> None:
    """block/qapi.c dump_qobject (qemu-img info's human "Format specific information")."""
    if isinstance(value, dict):
        entries: list[tuple[str, Any]] = [(f"{k.replace('-', ' ')}:", v) for k, v in value.items()]
    else:
        entries = [(f"[{i}]:", v) for i, v in enumerate(value)]
    for label, v in entries:
        prefix = " " * (indentation * 4) + label
        if isinstance(v, (dict, list)):
            lines.append(prefix)
            dump_qobject(v, indentation + 1, lines)
        else:
            text = ("true" if v else "false") if isinstance(v, bool) else str(v)
            lines.append(f"{prefix} {text}")


def size_to_str(val: int) -> str:
    """cutils.c size_to_str: "196 KiB", "64 MiB"."""
    _m, e = math.frexp(val / (1000.0 / 1024.0))
    i = int((e - 1) / 10)
    div = 1 << (i * 10)
    suffix = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")[i]
    return f"{val / div:0.3g} {suffix}B"


# ---- helpers ----------------------------------------------------------------------------------
class _StatusRuns:
    """img.status_above for compare's walk, which asks again at every chunk (2 MiB at most) of
    a run it was already told: an offset inside the last run, with the same end of the range,
    has the rest of that run as its answer (a run starting inside a run ends where it ends),
    without walking the L2 entries again (that walk made compare quadratic in a run's length)."""

    def __init__(self, image: OpenedImage) -> None:
        self.image = image
        self.start = self.end = self.limit = -1
        self.flags = 0

    def __call__(self, offset: int, length: int) -> tuple[int, int]:
        if self.start <= offset < self.end and offset + length == self.limit:
            return self.end - offset, self.flags
        n, flags = self.image.status_above(offset, length)
        self.start, self.end, self.flags, self.limit = offset, offset + n, flags, offset + length
        return n, flags


class Tool:
    """One qemu-img invocation, with its output streams."""

    def __init__(self, out: TextIO, err: TextIO, profile: QemuProfile = DEFAULT_PROFILE) -> None:
        self.out, self.err = out, err
        #: The QEMU version whose qemu-img this behaves as (only `info` output differs).
        self.profile = profile

    def error(self, msg: str) -> None:
        self.err.write(f"{PROG}: {msg}\n")

    def fail(self, msg: str, code: int = 1) -> _Exit:
        self.error(msg)
        return _Exit(code)

    def parse(self, argv: list[str], short: str, long: list[str]) -> tuple[dict[str, list[str]], list[str]]:
        try:
            opts, args = getopt.gnu_getopt(argv, short, long)
        except getopt.GetoptError as e:
            if e.opt and len(e.opt) == 1:
                what = "option requires an argument" if "requires" in e.msg else "invalid option"
                self.err.write(f"{PROG}: {what} -- '{e.opt}'\n")
            else:
                self.err.write(f"{PROG}: unrecognized option '--{e.opt}'\n")
            self.err.write(f"Try '{PROG} --help' for more information\n")
            raise _Exit(1) from None
        parsed: dict[str, list[str]] = {}
        for o, a in opts:
            if o in ("-h", "--help"):  # qemu-img: -h after any command prints the whole help
                self.out.write(HELP)
                raise _Exit(0)
            parsed.setdefault(o, []).append(a)
        return parsed, args

    @staticmethod
    def option(opts: dict[str, list[str]], *names: str) -> str | None:
        """The last value given for any of `names`, or None."""
        values = [v for n in names for v in opts.get(n, [])]
        return values[-1] if values else None

    def output_format(self, opts: dict[str, list[str]]) -> str:
        fmt = opts.get("--output", ["human"])[-1]
        if fmt not in ("human", "json"):
            raise self.fail("--output must be used with human or json as argument.")
        return fmt

    def open(self, filename: str, fmt: str | None, *, backing: bool = True) -> OpenedImage:
        """img_open: errors as "Could not open 'F': <reason>", exit 1."""
        if fmt is not None and fmt not in FORMATS:
            raise self.fail(f"Unknown file format '{fmt}'" if fmt else "Unknown driver ''")
        try:
            return open_image_chain(filename, fmt, read_only=True, backing=backing)
        except QemuError as e:
            raise self.fail(f"Could not open '{filename}': {e.desc}") from None

    def one_file(self, args: list[str]) -> str:
        if len(args) != 1:
            self.err.write(f"{PROG}: Expecting one image file name\n"
                           f"Try '{PROG} --help' for more information\n")
            raise _Exit(1)
        return args[0]

    # ---- create -------------------------------------------------------------------------------
    def cmd_create(self, argv: list[str]) -> int:
        opts, args = self.parse(argv, "F:b:f:ho:qu", ["help", "object=", "quiet"])
        fmt = opts.get("-f", ["raw"])[-1]
        quiet = "-q" in opts or "--quiet" in opts
        backing_file = opts.get("-b", [None])[-1]
        backing_fmt = opts.get("-F", [None])[-1]
        cluster_size: int | None = None
        size: int | None = None
        for optstr in opts.get("-o", []):
            for item in filter(None, optstr.split(",")):
                key, _, value = item.partition("=")
                if key == "cluster_size":
                    cluster_size = self._size_option(args, key, value)
                elif key == "size":
                    size = self._size_option(args, key, value)
                elif key == "backing_file":
                    backing_file = value
                elif key == "backing_fmt":
                    backing_fmt = value
                elif (key, value) in _DEFAULT_OPTIONS:
                    pass
                else:
                    raise self.fail(f"{args[0] + ': ' if args else ''}Invalid parameter '{key}'")
        if not args:
            self.err.write(f"{PROG}: Expecting image file name\nTry '{PROG} --help' for more information\n")
            return 1
        filename = args[0]
        if len(args) > 2:
            self.err.write(f"{PROG}: Unexpected argument: {args[2]}\n"
                           f"Try '{PROG} --help' for more information\n")
            return 1
        if len(args) == 2:
            try:
                size = qemu_strtosz(args[1])
            except OSError as e:
                if e.errno == 34:
                    raise self.fail("Image size must be less than 8 EiB!") from None
                self.error("Invalid image size specified. You may use k, M, G, T, P or E suffixes for")
                self.error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
                return 1
            if size > (1 << 63) - 1:
                raise self.fail("Image size must be less than 8 EiB!")
        if fmt not in FORMATS:
            raise self.fail(f"{filename}: Unknown file format '{fmt}'")
        if backing_file and fmt == "raw":
            raise self.fail(f"{filename}: Backing file not supported for file format 'raw'")
        if backing_file and "-u" not in opts or (backing_file and size is None):
            path = backing_path(filename, backing_file)
            try:
                with open_image_chain(path, backing_fmt, read_only=True) as back:
                    detected, back_size = back.format, back.length()
            except QemuError as e:
                self.error(f"{filename}: {e.desc}")
                self.err.write("Could not open backing image.\n")
                return 1
            if backing_fmt is None:
                self.error(f"{filename}: Backing file specified without backing format")
                self.err.write(f"Detected format of {detected}.")  # qemu-img prints no newline
                return 1
            if size is None:
                size = back_size
        if backing_file and backing_fmt is None:
            self.error(f"{filename}: Backing file specified without backing format")
            return 1
        if size is None:
            raise self.fail(f"{filename}: Image creation needs a size parameter")
        try:
            line = creation_message(filename, fmt, size, backing_file=backing_file, backing_fmt=backing_fmt,
                                    cluster_size=cluster_size)
            if not quiet:
                self.out.write(line + "\n")
            create_image(filename, fmt, size, backing_file=backing_file, backing_fmt=backing_fmt,
                         cluster_size=cluster_size)
        except QemuError as e:
            raise self.fail(f"{filename}: {e.desc}") from None
        return 0

    def _size_option(self, args: list[str], key: str, value: str) -> int:
        try:
            return qemu_strtosz(value)
        except OSError:
            raise self.fail(f"Parameter '{key}' expects a non-negative number below 2^64\n"
                            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                            "and exabytes, respectively.") from None

    # ---- info ---------------------------------------------------------------------------------
    def image_info(self, img: OpenedImage) -> dict[str, Any]:
        """ImageInfo in QAPI field order (bdrv_query_image_info)."""
        info: dict[str, Any] = {
            "filename": img.filename,
            "format": img.format,
            "dirty-flag": bool(img.qcow2 and img.qcow2.dirty),
            "actual-size": img.file.allocated_size(),
            "virtual-size": img.length(),
        }
        if img.qcow2:
            info["cluster-size"] = img.qcow2.cluster_size
            if img.qcow2.backing_file:
                info["backing-filename"] = img.qcow2.backing_file
                info["full-backing-filename"] = backing_path(img.filename, img.qcow2.backing_file)
                if img.qcow2.backing_format:
                    info["backing-filename-format"] = img.qcow2.backing_format
            info["format-specific"] = {"type": "qcow2", "data": img.qcow2.format_specific()}
        if self.profile.img_info_children:
            # QEMU 10.0's BlockGraphInfo: the protocol child, as a node of its own.
            file_info: dict[str, Any] = {
                # bdrv_getlength counts whole sectors: the file length rounded up to 512
                "children": [], "virtual-size": sectors_to_bytes(img.file.length()),
                "filename": img.filename,
                "format": "file", "actual-size": img.file.allocated_size(),
                "format-specific": {"type": "file", "data": {}}, "dirty-flag": False}
            info["children"] = [{"name": "file", "info": file_info}]
        return info

    def cmd_info(self, argv: list[str]) -> int:
        opts, args = self.parse(argv, "f:hU", ["help", "format=", "output=", "backing-chain", "force-share",
                                               "image-opts", "object="])
        ofmt = self.output_format(opts)
        fmt = self.option(opts, "-f", "--format")
        filename = self.one_file(args)
        chain = "--backing-chain" in opts
        img = self.open(filename, fmt, backing=chain)
        try:
            infos = [self.image_info(i) for i in (img.chain() if chain else [img])]
        finally:
            img.close()
        if ofmt == "json":
            if chain:
                self.out.write(_pretty_json([qdict_order(i) for i in infos], 0) + "\n")
            else:
                self.out.write(qobject_json(infos[0]) + "\n")
            return 0
        for n, info in enumerate(infos):
            if n:
                self.out.write("\n")
            self.out.write(self.human_info(info))
        return 0

    @staticmethod
    def human_info(info: dict[str, Any]) -> str:
        """bdrv_image_info_dump."""
        lines = [f"image: {info['filename']}", f"file format: {info['format']}",
                 f"virtual size: {size_to_str(info['virtual-size'])} ({info['virtual-size']} bytes)",
                 f"disk size: {size_to_str(info['actual-size'])}"]
        if "cluster-size" in info:
            lines.append(f"cluster_size: {info['cluster-size']}")
        if info.get("dirty-flag"):
            lines.append("cleanly shut down: no")
        if "backing-filename" in info:
            line = f"backing file: {info['backing-filename']}"
            if info["full-backing-filename"] != info["backing-filename"]:
                line += f" (actual path: {info['full-backing-filename']})"
            lines.append(line)
            if "backing-filename-format" in info:
                lines.append(f"backing file format: {info['backing-filename-format']}")
        if "format-specific" in info:
            lines.append("Format specific information:")
            dump_qobject(qdict_order(info["format-specific"]["data"]), 1, lines)
        for child in info.get("children", []):
            # bdrv_node_info_dump(protocol=true); an empty format-specific prints nothing.
            sub = child["info"]
            lines += [f"Child node '/{child['name']}':", f"    filename: {sub['filename']}",
                      f"    protocol type: {sub['format']}",
                      f"    file length: {size_to_str(sub['virtual-size'])} ({sub['virtual-size']} bytes)",
                      f"    disk size: {size_to_str(sub['actual-size'])}"]
        return "\n".join(lines) + "\n"

    # ---- check --------------------------------------------------------------------------------
    def cmd_check(self, argv: list[str]) -> int:
        opts, args = self.parse(argv, "hf:r:TqU", ["help", "format=", "repair=", "output=", "force-share",
                                                   "image-opts", "object="])
        ofmt = self.output_format(opts)
        fmt = self.option(opts, "-f", "--format")
        quiet = "-q" in opts
        if "-r" in opts or "--repair" in opts:
            mode = self.option(opts, "-r", "--repair")
            if mode not in ("leaks", "all"):
                raise self.fail(f"Unknown option value for -r (expecting 'leaks' or 'all'): {mode}")
            raise self.fail("Repairing images is not supported by the emulator")
        filename = self.one_file(args)
        img = self.open(filename, fmt)
        try:
            if img.qcow2 is None:
                raise self.fail("This image format does not support checks", 63)
            try:
                result = img.qcow2.check()
            except OSError as e:
                raise self.fail(f"Check failed: {e.strerror}") from None
        finally:
            img.close()
        for msg in result["messages"]:
            self.err.write(msg + "\n")
        check: dict[str, Any] = {"filename": filename, "format": img.format, "check-errors": result["check-errors"]}
        for key in ("image-end-offset", "corruptions", "leaks", "total-clusters", "allocated-clusters",
                    "fragmented-clusters", "compressed-clusters"):
            if result[key]:
                check[key] = result[key]
        if ofmt == "json":
            ordered: dict[str, Any] = {k: check[k] for k in ("filename", "format", "check-errors", "image-end-offset",
                                              "corruptions", "leaks", "total-clusters", "allocated-clusters",
                                              "fragmented-clusters", "compressed-clusters") if k in check}
            self.out.write(qobject_json(ordered) + "\n")
        elif not quiet:
            self.out.write(self.human_check(result))
        if result["check-errors"]:
            raise self.fail("Check failed")
        if result["corruptions"]:
            return 2
        return 3 if result["leaks"] else 0

    @staticmethod
    def human_check(r: dict[str, Any]) -> str:
        """dump_human_image_check."""
        out = []
        if not (r["corruptions"] or r["leaks"] or r["check-errors"]):
            out.append("No errors were found on the image.\n")
        else:
            if r["corruptions"]:
                out.append(f"\n{r['corruptions']} errors were found on the image.\n"
                           "Data may be corrupted, or further writes to the image may corrupt it.\n")
            if r["leaks"]:
                out.append(f"\n{r['leaks']} leaked clusters were found on the image.\n"
                           "This means waste of disk space, but no harm to data.\n")
            if r["check-errors"]:
                out.append(f"\n{r['check-errors']} internal errors have occurred during the check.\n")
        total, alloc = r["total-clusters"], r["allocated-clusters"]
        if total and alloc:
            out.append(f"{alloc}/{total} = {alloc * 100.0 / total:0.2f}% allocated, "
                       f"{r['fragmented-clusters'] * 100.0 / alloc:0.2f}% fragmented, "
                       f"{r['compressed-clusters'] * 100.0 / alloc:0.2f}% compressed clusters\n")
        if r["image-end-offset"]:
            out.append(f"Image end offset: {r['image-end-offset']}\n")
        return "".join(out)

    # ---- compare ------------------------------------------------------------------------------
    def cmd_compare(self, argv: list[str]) -> int:
        opts, args = self.parse(argv, "hf:F:T:pqsU", ["help", "object=", "image-opts", "force-share"])
        quiet = "-q" in opts
        strict = "-s" in opts
        fmt1 = opts.get("-f", [None])[-1]
        fmt2 = opts.get("-F", [fmt1])[-1]
        if len(args) != 2:
            self.err.write(f"{PROG}: Expecting two image file names\n"
                           f"Try '{PROG} --help' for more information\n")
            return 1

        def say(text: str) -> None:
            if not quiet:
                self.out.write(text + "\n")

        try:
            img1 = self.open(args[0], fmt1)
        except _Exit:
            return 2
        try:
            img2 = self.open(args[1], fmt2)
        except _Exit:
            img1.close()
            return 2
        try:
            return self._compare(img1, img2, strict, say)
        except OSError as e:
            self.error(f"Error while reading: {e.strerror}")
            return 4
        finally:
            img1.close()
            img2.close()

    def _compare(self, img1: OpenedImage, img2: OpenedImage, strict: bool, say: Any) -> int:
        size1, size2 = img1.length(), img2.length()
        if strict and size1 != size2:
            say("Strict mode: Image size mismatch!")
            return 1
        total = min(size1, size2)
        offset = 0
        status1, status2 = _StatusRuns(img1), _StatusRuns(img2)
        while offset < total:
            n1, st1 = status1(offset, total - offset)
            n2, st2 = status2(offset, total - offset)
            chunk = min(n1, n2)
            if strict and st1 != st2:
                say(f"Strict mode: Offset {offset} block status mismatch!")
                return 1
            a1, a2 = bool(st1 & BLOCK_ALLOCATED), bool(st2 & BLOCK_ALLOCATED)
            if st1 & BLOCK_ZERO and st2 & BLOCK_ZERO:
                pass
            elif a1 == a2:
                if a1:
                    chunk = min(chunk, IO_BUF_SIZE)
                    b1, b2 = img1.pread(offset, chunk), img2.pread(offset, chunk)
                    if b1 != b2:
                        say(f"Content mismatch at offset {offset + _first_diff_sector(b1, b2)}!")
                        return 1
            else:
                chunk = min(chunk, IO_BUF_SIZE)
                if self._nonzero(img1 if a1 else img2, offset, chunk, say):
                    return 1
            offset += chunk
        if size1 != size2:
            say("Warning: Image size mismatch!")
            over = img1 if size1 > size2 else img2
            offset, end = total, max(size1, size2)
            while offset < end:
                chunk, st = over.status_above(offset, end - offset)
                if not st & BLOCK_ZERO:
                    chunk = min(chunk, IO_BUF_SIZE)
                    if self._nonzero(over, offset, chunk, say):
                        return 1
                offset += chunk
        say("Images are identical.")
        return 0

    @staticmethod
    def _nonzero(img: OpenedImage, offset: int, length: int, say: Any) -> bool:
        data = img.pread(offset, length)
        stripped = data.lstrip(b"\0")
        if stripped:
            say(f"Content mismatch at offset {offset + len(data) - len(stripped)}!")
            return True
        return False

    # ---- map ----------------------------------------------------------------------------------
    def cmd_map(self, argv: list[str]) -> int:
        opts, args = self.parse(argv, "f:hU", ["help", "format=", "output=", "object=", "image-opts",
                                               "force-share", "start-offset=", "max-length="])
        ofmt = self.output_format(opts)
        fmt = self.option(opts, "-f", "--format")
        filename = self.one_file(args)
        img = self.open(filename, fmt)
        try:
            return self._map(img, ofmt)
        finally:
            img.close()

    def _map_entry(self, img: OpenedImage, offset: int, length: int) -> dict[str, Any]:
        """qemu-img's get_block_status: walk down until a layer says DATA or ZERO."""
        depth, layer = 0, img
        while True:
            n, flags, host = layer.layer_status(offset, length)
            length = n
            if flags & (BLOCK_DATA | BLOCK_ZERO) or layer.backing is None:
                break
            layer = layer.backing
            depth += 1
        has_offset = host is not None and bool(flags & (BLOCK_DATA | BLOCK_ZERO))
        return {"start": offset, "length": n, "depth": depth, "present": bool(flags & BLOCK_ALLOCATED),
                "zero": bool(flags & BLOCK_ZERO), "data": bool(flags & BLOCK_DATA),
                "offset": host if has_offset else None, "filename": layer.filename if has_offset else None}

    def _map(self, img: OpenedImage, ofmt: str) -> int:
        length = img.length()
        if ofmt == "human":
            self.out.write(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File\n")
        else:
            self.out.write("[")
        curr: dict[str, Any] = {"start": 0, "length": 0}
        first = True
        while curr["start"] + curr["length"] < length:
            off = curr["start"] + curr["length"]
            nxt = self._map_entry(img, off, length - off)
            if _mergeable(curr, nxt):
                curr["length"] += nxt["length"]
                continue
            if curr["length"]:
                self._dump_entry(ofmt, curr, nxt, first)
                first = False
            curr = nxt
        if curr["length"]:
            self._dump_entry(ofmt, curr, None, first)
        if ofmt == "json":
            self.out.write("]\n")
        return 0

    def _dump_entry(self, ofmt: str, e: dict[str, Any], nxt: dict[str, Any] | None, first: bool) -> None:
        if ofmt == "json":
            tf = {True: "true", False: "false"}
            text = (f'{{ "start": {e["start"]}, "length": {e["length"]}, "depth": {e["depth"]}, '
                    f'"present": {tf[e["present"]]}, "zero": {tf[e["zero"]]}, "data": {tf[e["data"]]}')
            if self.profile.img_map_compressed:
                text += ', "compressed": false'  # compressed clusters are refused at open
            if e["offset"] is not None:
                text += f', "offset": {e["offset"]}'
            text += "}"
            if nxt is not None:
                text += ",\n"
            self.out.write(text)
            return
        if e["data"] and e["offset"] is None:
            raise self.fail("File contains external, encrypted or compressed clusters.")
        if e["data"] and not e["zero"]:
            self.out.write(f"{_hexpad(e['start'])}{_hexpad(e['length'])}{_hexpad(e['offset'] or 0)}"
                           f"{e['filename'] or ''}\n")
        if nxt is not None and (not nxt["data"] or nxt["zero"]):
            nxt["data"], nxt["zero"] = False, True


def _hexpad(v: int) -> str:
    """printf("%#-16"PRIx64): 0 prints as "0", others as 0x..., left-aligned in 16 columns."""
    return f"{f'0x{v:x}' if v else '0':<16}"


def _mergeable(curr: dict[str, Any], nxt: dict[str, Any]) -> bool:
    """qemu-img's entry_mergeable."""
    if not curr["length"]:
        return False
    for key in ("zero", "data", "depth", "present"):
        if curr[key] != nxt[key]:
            return False
    if (curr["filename"] is None) != (nxt["filename"] is None) or curr["filename"] != nxt["filename"]:
        return False
    if (curr["offset"] is None) != (nxt["offset"] is None):
        return False
    return curr["offset"] is None or curr["offset"] + curr["length"] == nxt["offset"]


def _first_diff_sector(b1: bytes, b2: bytes) -> int:
    """compare_buffers: 0 if the first sector differs, else the start of the first differing one."""
    for i in range(0, len(b1), 512):
        if b1[i:i + 512] != b2[i:i + 512]:
            return i
    return len(b1)


def cmd_rebase(tool: Tool, argv: list[str]) -> int:
    """qemu-img rebase -u: change the backing file name in the header only (unsafe mode).

    The safe mode (copying data that differs between the old and new backing) is not implemented
    and is refused clearly rather than done wrong.
    """
    opts, args = tool.parse(argv, "F:b:f:hqut:T:pU", ["help", "object=", "quiet", "image-opts"])
    if "-u" not in opts:
        raise tool.fail("rebase without -u (safe mode) is not supported by blocktxn img")
    if not args:
        raise tool.fail("Expecting one image file name")
    if len(args) > 1:
        raise tool.fail(f"Unexpected argument: {args[1]}")
    filename = args[0]
    fmt = opts.get("-f", [None])[-1]
    backing = opts.get("-b", [""])[-1]
    backing_fmt = opts.get("-F", [None])[-1]
    storage = FileStorage(filename)
    try:
        if (fmt or probe_format(storage)) != "qcow2":
            raise tool.fail(f"Could not change the backing file to '{backing}': Operation not supported")
        image = Qcow2Image.open(storage)
        try:
            image.change_backing_file(backing or None, backing_fmt if backing else None)
        finally:
            image.close()
    except QemuError as exc:
        raise tool.fail(f"Could not change the backing file to '{backing}': {exc.desc}") from None
    finally:
        storage.close()
    return 0


HELP = f"""\
blocktxn img: a {PROG} work-alike over the blocktxn emulator's image code
usage: {PROG} [standard options] command [command options]
QEMU disk image utility (the subset below)

    '-h', '--help'       display this help and exit

Command syntax:
  check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-U] filename
  compare [-f fmt] [-F fmt] [-p] [-q] [-s] [-U] filename1 filename2
  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]
  info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename
  map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename
  rebase [-q] [-f fmt] [-U] -u -b backing_file [-F backing_fmt] filename

Command parameters:
  'filename' is a disk image filename
  'fmt' is the disk image format (raw or qcow2). It is guessed automatically in most cases
  'size' is the disk image size in bytes. Optional suffixes
    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),
    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are
    supported. 'b' is ignored.
  'options' is a comma separated list of format specific options in a
    name=value format (qcow2: size, cluster_size, backing_file, backing_fmt and
    the defaults of the other options)
  '-u' for rebasing: only the backing file name in the header changes (the
       safe mode is not supported); for image creation, allow creating
       without opening the backing file
  '-h' with or without a command shows this help
  '-p' accepted for compatibility; no progress is shown
  '-q' use Quiet mode - do not print any output (except errors)
  '--output' takes the format in which the output must be done (human or json)

Parameters to check subcommand:
  '-r' tries to repair any inconsistencies that are found during the check.
       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes all
       kinds of errors.

Parameters to compare subcommand:
  '-f' first image format
  '-F' second image format
  '-s' run in Strict mode - fail on different image size or sector allocation

Supported formats: {" ".join(sorted(FORMATS))}
"""

COMMANDS = {"create": Tool.cmd_create, "info": Tool.cmd_info, "check": Tool.cmd_check,
            "compare": Tool.cmd_compare, "map": Tool.cmd_map, "rebase": cmd_rebase}


def main(argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run `qemu-img`-style ARGV (without the program name); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    option = None
    if argv and argv[0] in ("--blocktxn-version", "-blocktxn-version"):
        option = argv[1] if len(argv) > 1 else ""
        argv = argv[2:]
    try:
        profile = select(option)
    except UnsupportedVersion as exc:
        (err or sys.stderr).write(f"{PROG}: {exc}\n")
        return 1
    tool = Tool(out or sys.stdout, err or sys.stderr, profile)
    if argv and argv[0] in ("-h", "--help"):
        tool.out.write(HELP)
        return 0
    if not argv:
        tool.error("Not enough arguments")
        tool.err.write(f"Try '{PROG} --help' for more information\n")
        return 1
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        tool.error(f"Command not found: {argv[0]}")
        return 1
    try:
        return cmd(tool, argv[1:])
    except _Exit as e:
        return e.code
    finally:
        tool.out.flush()


if __name__ == "__main__":
    sys.exit(main())
