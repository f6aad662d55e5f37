"""The qemu-io command engine (qemu-io-cmds.c), shared by HMP `qemu-io DEV "CMD"` and `blocktxn io`.

A command line is split on spaces, options are parsed GNU-getopt style, numbers as qemu-io's
cvtnum (qemu_strtosz: k/M/G/T/P/E binary suffixes, 0x hex, fractions with a suffix), and the
output is qemu-io's, byte for byte except the measured timings.  As in qemu-io, results and most
command errors go to stdout (`out`), usage/argument-count/unknown-command errors to stderr
(`err`), and error_report() messages (e.g. "Block node is read-only") through `report`.

The target is anything with pread/pwrite/pwrite_zeroes/discard/flush/block_status/length (a
BlockNode or an OpenedImage); an optional `read_only` attribute makes write commands fail the
way a read-only BlockBackend does.  aio_write completes synchronously.
"""

from __future__ import annotations

import errno
import getopt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from emulator.cutils import INT64_MAX, qemu_strtoi64, qemu_strtosz

from .node import BLOCK_ALLOCATED

BDRV_REQUEST_MAX_BYTES = 0x7FFFFFFF & ~511  # INT_MAX rounded down to a sector: 2147483136
BDRV_SECTOR_SIZE = 512


class IoTarget(Protocol):
    """What qemu-io needs from the device it works on."""

    def pread(self, offset: int, length: int) -> bytes: ...
    def pwrite(self, offset: int, data: bytes) -> None: ...
    def pwrite_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None: ...
    def discard(self, offset: int, length: int) -> None: ...
    def flush(self) -> None: ...
    def block_status(self, offset: int, length: int) -> tuple[int, int]: ...
    def length(self) -> int: ...


# ---- number parsing and formatting (cutils.c / qemu-io-cmds.c) --------------------------------
def cvtnum(s: str) -> int:
    """qemu-io's cvtnum: a non-negative int64 or OSError(EINVAL/ERANGE)."""
    value = qemu_strtosz(s)
    if value > INT64_MAX:
        raise OSError(errno.ERANGE, "Numerical result out of range")
    return value


def cvtnum_error(e: OSError, arg: str) -> str:
    """print_cvtnum_err's text."""
    if e.errno == errno.EINVAL:
        return f"Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {arg}"
    if e.errno == errno.ERANGE:
        return f"Parsing error: argument too large -- {arg}"
    return f"Parsing error: {arg}"


def cvtstr(value: float) -> str:
    """qemu-io's cvtstr: 1.500 KiB, 64 MiB, 512 bytes."""
    for shift, suffix in ((60, " EiB"), (50, " PiB"), (40, " TiB"), (30, " GiB"), (20, " MiB"), (10, " KiB")):
        if value >= 1 << shift:
            text = f"{value / (1 << shift):.3f}"
            break
    else:
        suffix = " bytes"
        text = f"{value:f}"
    i = text.find(".000")
    return text[:i] + suffix if i >= 0 else text + suffix


def timestr(seconds: float, verbose: bool) -> str:
    """qemu-io's timestr: "00.00 sec", or "H:MM:SS.ss" (verbose or >= 1 s)."""
    sec = int(seconds)
    frac = seconds - sec
    if verbose or sec:
        return f"{sec // 3600}:{(sec % 3600) // 60:02d}:{sec % 60 + frac:05.2f}"
    return f"{frac:05.2f} sec"


def report_line(op: str, seconds: float, offset: int, count: int, total: int, cnt: int, cflag: bool) -> str:
    """print_report's text (two lines, or one machine-readable line with -C)."""
    t = max(seconds, 1e-9)
    if cflag:
        return f"{total},{cnt},{timestr(seconds, True)},{total / t:.3f},{cnt / t:.3f}\n"
    return (f"{op} {total}/{count} bytes at offset {offset}\n"
            f"{cvtstr(float(total))}, {cnt} ops; {timestr(seconds, False)} "
            f"({cvtstr(total / t)}/sec and {cnt / t:.4f} ops/sec)\n")


def dump_buffer(data: bytes, offset: int) -> str:
    """read -v's hex dump."""
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        hexes = "".join(f"{b:02x} " for b in chunk)
        text = "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else "." for b in chunk)
        lines.append(f"{offset + i:08x}:  {hexes} {text}\n")
    return "".join(lines)


# ---- command table ---------------------------------------------------------------------------
class _Usage(Exception):
    """Print the command's usage line and fail."""


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    oneline: str
    argmin: int
    argmax: int
    needs_write: bool = False
    help: str = ""


_READ_HELP = """
 reads a range of bytes from the given offset

 Example:
 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 -b, -- read from the VM state rather than the virtual disk
 -C, -- report statistics in a machine parsable format
 -l, -- length for pattern verification (only with -P)
 -p, -- ignored for backwards compatibility
 -P, -- use a pattern to verify read data
 -q, -- quiet mode, do not show I/O statistics
 -s, -- start offset for pattern verification (only with -P)
 -v, -- dump buffer to standard output

"""
_WRITE_HELP = """
 writes a range of bytes from the given offset

 Example:
 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 -b, -- write to the VM state rather than the virtual disk
 -c, -- write compressed data with blk_write_compressed
 -f, -- use Force Unit Access semantics
 -n, -- with -z, don't allow slow fallback
 -p, -- ignored for backwards compatibility
 -P, -- use different pattern to fill file
 -s, -- use a pattern file to fill the write buffer
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes using blk_co_pwrite_zeroes

"""
_AIO_WRITE_HELP = """
 asynchronously writes a range of bytes from the given offset source
 from multiple buffers

 Example:
 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 The write is performed asynchronously and the aio_flush command must be
 used to ensure all outstanding aio requests have been completed.
 Note that due to its asynchronous nature, this command will be
 considered successful once the request is submitted, independently
 of potential I/O errors or pattern mismatches.
 -P, -- use different pattern to fill file
 -C, -- report statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -i, -- treat request as invalid, for exercising stats
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes using blk_aio_pwrite_zeroes

"""
_DISCARD_HELP = """
 discards a range of bytes from the given offset

 Example:
 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file

 Discards a segment of the currently open file.
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics

"""

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("aio_flush", "", "completes all outstanding aio requests", 0, 0),
    Command("aio_write", "[-Cfiquz] [-P pattern] off len [len..]",
            "asynchronously writes a number of bytes", 1, -1, True, _AIO_WRITE_HELP),
    Command("alloc", "offset [count]", "checks if offset is allocated in the file", 1, 2),
    Command("break", "event tag", "sets a breakpoint on event and tags the stopped request as tag",
            2, 2),
    Command("discard", "[-Cq] off len", "discards a number of bytes at a specified offset", 2, -1, True,
            _DISCARD_HELP),
    Command("flush", "", "flush all in-core file state to disk", 0, 0),
    Command("help", "[command]", "help for one or all commands", 0, 1),
    Command("length", "", "gets the length of the current file", 0, 0),
    Command("map", "", "prints the allocated areas of a file", 0, 0),
    Command("quit", "", "exit the program", 0, 0),
    Command("remove_break", "tag", "remove a breakpoint by tag", 1, 1),
    Command("resume", "tag", "resumes the request tagged as tag", 1, 1),
    Command("wait_break", "tag", "waits for the suspension of a request", 1, 1),
    Command("read", "[-abCqv] [-P pattern [-s off] [-l len]] off len",
            "reads a number of bytes at a specified offset", 2, -1, False, _READ_HELP),
    Command("write", "[-bcCfnquz] [-P pattern | -s source_file] off len",
            "writes a number of bytes at a specified offset", 2, -1, True, _WRITE_HELP),
)}
_ALTNAMES = {"r": "read", "w": "write", "q": "quit", "?": "help"}


def _errstr(e: BaseException) -> str:
    if isinstance(e, OSError):
        return e.strerror or os.strerror(e.errno or errno.EIO)
    return str(e)


class QemuIo:
    """One qemu-io session on a target: runs command lines, remembers `quit`."""

    def __init__(self, target: IoTarget, out: TextIO, err: TextIO | None = None,
                 report: Callable[[str], None] | None = None, progname: str = "qemu-io") -> None:
        self.target = target
        self.out = out
        self.err = err if err is not None else out
        self._report = report
        self.progname = progname
        self.quit_requested = False

    # ---- plumbing -----------------------------------------------------------------------------
    def _print(self, text: str) -> None:
        self.out.write(text)

    def _eprint(self, text: str) -> None:
        self.err.write(text)

    def error_report(self, msg: str) -> None:
        """QEMU's error_report(): "progname: msg" on stderr (monitor text under HMP)."""
        if self._report is not None:
            self._report(msg)
        else:
            self._eprint(f"{self.progname}: {msg}\n")

    def _getopt(self, cmd: Command, argv: list[str], optstring: str) -> tuple[list[tuple[str, str]], list[str]]:
        try:
            return getopt.gnu_getopt(argv[1:], optstring)
        except getopt.GetoptError as e:
            if "requires argument" in e.msg:
                self._eprint(f"{argv[0]}: option requires an argument -- '{e.opt}'\n")
            else:
                self._eprint(f"{argv[0]}: invalid option -- '{e.opt}'\n")
            raise _Usage from None

    def _num(self, arg: str) -> int:
        try:
            return cvtnum(arg)
        except OSError as e:
            self._print(cvtnum_error(e, arg) + "\n")
            raise _Failed from None

    def _pattern(self, arg: str) -> int:
        """parse_pattern: strtol(arg, 0) must consume everything and fit in a byte."""
        try:
            value = qemu_strtoi64(arg)
        except OSError:
            value = -1
        if value < 0 or value > 255:
            self._print(f"{arg} is not a valid pattern byte\n")
            raise _Failed
        return value

    def _length_ok(self, count: int, arg: str) -> None:
        if count > BDRV_REQUEST_MAX_BYTES:
            self._print(f"length cannot exceed {BDRV_REQUEST_MAX_BYTES}, given {arg}\n")
            raise _Failed

    def _check_request(self, offset: int, count: int) -> None:
        """blk_check_byte_request."""
        if offset < 0 or count < 0 or offset > self.target.length() or self.target.length() - offset < count:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    # ---- entry point --------------------------------------------------------------------------
    def run(self, cmdline: str) -> bool:
        """Run one command line; False if it failed (qemu-io exits 1 if any command failed)."""
        argv = [p for p in cmdline.split(" ") if p]
        if not argv:
            return True
        name = _ALTNAMES.get(argv[0], argv[0])
        cmd = COMMANDS.get(name)
        if cmd is None:
            self._eprint(f'command "{argv[0]}" not found\n')
            return False
        nargs = len(argv) - 1
        if nargs < cmd.argmin or (cmd.argmax != -1 and nargs > cmd.argmax):
            if cmd.argmax == -1:
                self._eprint(f"bad argument count {nargs} to {argv[0]}, expected at least {cmd.argmin} arguments\n")
            elif cmd.argmin == cmd.argmax:
                self._eprint(f"bad argument count {nargs} to {argv[0]}, expected {cmd.argmin} arguments\n")
            else:
                self._eprint(f"bad argument count {nargs} to {argv[0]}, expected between {cmd.argmin} and "
                             f"{cmd.argmax} arguments\n")
            return False
        if cmd.needs_write and getattr(self.target, "read_only", False):
            self.error_report("Block node is read-only")
            return False
        try:
            return getattr(self, "_cmd_" + cmd.name)(cmd, argv)
        except _Usage:
            self._print(f"{cmd.name} {cmd.args} -- {cmd.oneline}\n")
            return False
        except _Failed:
            return False

    # ---- commands -----------------------------------------------------------------------------
    def _cmd_read(self, cmd: Command, argv: list[str]) -> bool:
        opts, args = self._getopt(cmd, argv, "bCl:pqs:P:v")
        cflag = qflag = vflag = pflag = lflag = sflag = False
        pattern = pattern_offset = pattern_count = 0
        for o, a in opts:
            if o == "-b":
                self._print("read: reading VM state is not supported by the emulator\n")
                raise _Failed
            if o == "-C":
                cflag = True
            elif o == "-l":
                lflag, pattern_count = True, self._num(a)
            elif o == "-P":
                pflag, pattern = True, self._pattern(a)
            elif o == "-q":
                qflag = True
            elif o == "-s":
                sflag, pattern_offset = True, self._num(a)
            elif o == "-v":
                vflag = True
        if len(args) != 2:
            raise _Usage
        offset = self._num(args[0])
        count = self._num(args[1])
        self._length_ok(count, args[1])
        if not pflag and (lflag or sflag):
            raise _Usage
        if not lflag:
            pattern_count = count - pattern_offset
        if pattern_count < 0 or pattern_count + pattern_offset > count:
            self._print("pattern verification range exceeds end of read data\n")
            return False
        t1 = time.monotonic()
        try:
            self._check_request(offset, count)
            data = self.target.pread(offset, count) if count else b""
        except OSError as e:
            self._print(f"read failed: {_errstr(e)}\n")
            return False
        elapsed = time.monotonic() - t1
        ok = True
        if pflag:
            window = data[pattern_offset:pattern_offset + pattern_count]
            if window != bytes([pattern]) * pattern_count:
                self._print(f"Pattern verification failed at offset {offset + pattern_offset}, "
                            f"{pattern_count} bytes\n")
                ok = False
        if qflag:
            return ok
        if vflag:
            self._print(dump_buffer(data, offset))
        self._print(report_line("read", elapsed, offset, count, count, 1, cflag))
        return ok

    def _cmd_write(self, cmd: Command, argv: list[str]) -> bool:
        opts, args = self._getopt(cmd, argv, "bcCfnpP:quzs:")
        flags = {o for o, _ in opts}
        pattern = 0xCD
        source = None
        for o, a in opts:
            if o == "-P":
                pattern = self._pattern(a)
            elif o == "-s":
                source = a
        if len(args) != 2:
            raise _Usage
        zflag, pflag, sflag = "-z" in flags, "-P" in flags, "-s" in flags
        if "-b" in flags and zflag:
            self._print("-b and -z cannot be specified at the same time\n")
            return False
        if "-f" in flags and "-b" in flags:
            self._print("-f and -b cannot be specified at the same time\n")
            return False
        if "-f" in flags and "-c" in flags:
            self._print("-f and -c cannot be specified at the same time\n")
            return False
        if "-u" in flags and not zflag:
            self._print("-u requires -z to be specified\n")
            return False
        if "-n" in flags and not zflag:
            self._print("-n requires -z to be specified\n")
            return False
        if zflag + pflag + sflag > 1:
            self._print("Only one of -z, -P, and -s can be specified at the same time\n")
            return False
        offset = self._num(args[0])
        count = self._num(args[1])
        if "-n" not in flags:
            self._length_ok(count, args[1])
        if "-b" in flags or "-c" in flags:
            what = "writing VM state" if "-b" in flags else "compressed writes"
            self._print(f"write failed: {os.strerror(errno.ENOTSUP)} ({what} not supported by the emulator)\n")
            return False
        data = b""
        if not zflag:
            if source is not None:
                try:
                    with open(source, "rb") as f:
                        data = f.read(count)
                except OSError as e:
                    self._print(f"Failed to open file '{source}': {_errstr(e)}\n")
                    return False
                if len(data) < count:
                    self._print(f"Failed to read file '{source}': {os.strerror(errno.EINVAL)}\n")
                    return False
            else:
                data = bytes([pattern]) * count
        t1 = time.monotonic()
        try:
            self._check_request(offset, count)
            if zflag:
                self.target.pwrite_zeroes(offset, count, "-u" in flags)
            elif count:
                self.target.pwrite(offset, data)
        except OSError as e:
            self._print(f"write failed: {_errstr(e)}\n")
            return False
        elapsed = time.monotonic() - t1
        if "-q" not in flags:
            self._print(report_line("wrote", elapsed, offset, count, count, 1, "-C" in flags))
        return True

    def _cmd_aio_write(self, cmd: Command, argv: list[str]) -> bool:
        opts, args = self._getopt(cmd, argv, "CfiqP:uz")
        flags = {o for o, _ in opts}
        pattern = 0xCD
        for o, a in opts:
            if o == "-P":
                pattern = self._pattern(a)
        if not args:
            raise _Usage
        zflag = "-z" in flags
        if "-u" in flags and not zflag:
            self._print("-u requires -z to be specified\n")
            return False
        if zflag and len(args) != 2:
            self._print("-z supports only a single length parameter\n")
            return False
        offset = self._num(args[0])
        total = 0
        for arg in args[1:]:
            n = self._num(arg)
            if n > 0x7FFFFFFF:
                self._print(f"too large length argument -- {arg}\n")
                return False
            total += n
        if "-i" in flags:
            return True  # an invalid request, only for accounting statistics
        t1 = time.monotonic()
        try:
            self._check_request(offset, total)
            if zflag:
                self.target.pwrite_zeroes(offset, total, "-u" in flags)
            elif total:
                self.target.pwrite(offset, bytes([pattern]) * total)
        except OSError as e:
            self._print(f"aio_write failed: {_errstr(e)}\n")
            return True  # qemu-io counts a submitted aio request as a success
        if "-q" not in flags:
            self._print(report_line("wrote", time.monotonic() - t1, offset, total, total, 1, "-C" in flags))
        return True

    def _cmd_aio_flush(self, cmd: Command, argv: list[str]) -> bool:
        return True  # requests complete synchronously; nothing is outstanding

    def _cmd_flush(self, cmd: Command, argv: list[str]) -> bool:
        try:
            self.target.flush()
        except OSError:
            return False
        return True

    def _cmd_discard(self, cmd: Command, argv: list[str]) -> bool:
        opts, args = self._getopt(cmd, argv, "Cq")
        flags = {o for o, _ in opts}
        if len(args) != 2:
            raise _Usage
        offset = self._num(args[0])
        count = self._num(args[1])
        self._length_ok(count, args[1])
        t1 = time.monotonic()
        try:
            self._check_request(offset, count)
            if count:
                self.target.discard(offset, count)
        except OSError as e:
            self._print(f"discard failed: {_errstr(e)}\n")
            return False
        if "-q" not in flags:
            self._print(report_line("discard", time.monotonic() - t1, offset, count, count, 1, "-C" in flags))
        return True

    def _is_allocated(self, offset: int, count: int) -> tuple[int, bool]:
        """bdrv_is_allocated: (bytes, allocated) of the top layer; (0, False) past the end."""
        length = self.target.length()
        if offset >= length or count <= 0:
            return 0, False
        n, flags = self.target.block_status(offset, min(count, length - offset))
        return n, bool(flags & BLOCK_ALLOCATED)

    def _cmd_alloc(self, cmd: Command, argv: list[str]) -> bool:
        start = offset = self._num(argv[1])
        count = self._num(argv[2]) if len(argv) == 3 else BDRV_SECTOR_SIZE
        remaining, sum_alloc = count, 0
        try:
            while remaining:
                num, allocated = self._is_allocated(offset, remaining)
                offset += num
                remaining -= num
                if allocated:
                    sum_alloc += num
                if num == 0:
                    count -= remaining
                    remaining = 0
        except OSError as e:
            self._print(f"is_allocated failed: {_errstr(e)}\n")
            return False
        self._print(f"{sum_alloc}/{count} bytes allocated at offset {cvtstr(float(start))}\n")
        return True

    def _cmd_map(self, cmd: Command, argv: list[str]) -> bool:
        offset, remaining = 0, self.target.length()
        try:
            while remaining:
                num, allocated = self._is_allocated(offset, remaining)
                if not num:
                    self.error_report("Unexpected end of image")
                    return False
                while num < remaining:
                    more, more_alloc = self._is_allocated(offset + num, remaining - num)
                    if not more or more_alloc != allocated:
                        break
                    num += more
                status = "    allocated" if allocated else "not allocated"
                self._print(f"{cvtstr(float(num))} (0x{num:x}) bytes {status} at offset "
                            f"{cvtstr(float(offset))} (0x{offset:x})\n")
                offset += num
                remaining -= num
        except OSError as e:
            self.error_report(f"Failed to get allocation status: {_errstr(e)}")
            return False
        return True

    def _cmd_length(self, cmd: Command, argv: list[str]) -> bool:
        self._print(cvtstr(float(self.target.length())) + "\n")
        return True

    # ---- blkdebug breakpoints (bdrv_debug_*: the first blkdebug node down the primary chain) --
    def _blkdebug(self) -> Any:
        node: Any = self.target
        seen = 0
        while node is not None and seen < 64:
            if hasattr(node, "add_breakpoint"):
                return node
            primary = getattr(node, "primary_child", None)
            node = primary() if primary is not None else None
            seen += 1
        return None

    def _cmd_break(self, cmd: Command, argv: list[str]) -> bool:
        node = self._blkdebug()
        ret = node.add_breakpoint(argv[1], argv[2]) if node is not None else -errno.ENOTSUP
        if ret < 0:
            self._print(f"Could not set breakpoint: {os.strerror(-ret)}\n")
            return False
        return True

    def _cmd_remove_break(self, cmd: Command, argv: list[str]) -> bool:
        node = self._blkdebug()
        ret = node.remove_breakpoint(argv[1]) if node is not None else -errno.ENOTSUP
        if ret < 0:
            self._print(f"Could not remove breakpoint {argv[1]}: {os.strerror(-ret)}\n")
            return False
        return True

    def _cmd_resume(self, cmd: Command, argv: list[str]) -> bool:
        node = self._blkdebug()
        ret = node.resume(argv[1]) if node is not None else -errno.ENOTSUP
        if ret < 0:
            self._print(f"Could not resume request: {os.strerror(-ret)}\n")
            return False
        return True

    def _cmd_wait_break(self, cmd: Command, argv: list[str]) -> bool:
        """QEMU polls until a request stops at the tag; the emulator cannot wait inside a
        command, so this only returns (requests that can stop have already stopped)."""
        return True

    def _cmd_help(self, cmd: Command, argv: list[str]) -> bool:
        if len(argv) == 1:
            for c in sorted(COMMANDS.values(), key=lambda c: c.name):
                self._print(f"{c.name} {c.args} -- {c.oneline}\n" if c.args or c.name == "map"
                            else f"{c.name} -- {c.oneline}\n")
            self._print("\nUse 'help commandname' for extended help.\n")
            return True
        found = COMMANDS.get(_ALTNAMES.get(argv[1], argv[1]))
        if found is None:
            self._print(f"command {argv[1]} not found\n")
            return False
        self._print(f"{argv[1]} {found.args} -- {found.oneline}\n" if found.args or found.name == "map"
                    else f"{argv[1]} -- {found.oneline}\n")
        self._print(found.help)
        return True

    def _cmd_quit(self, cmd: Command, argv: list[str]) -> bool:
        self.quit_requested = True
        return True


class _Failed(Exception):
    """The command already printed why it failed."""


def run_command(target: IoTarget, cmdline: str, out: TextIO, err: TextIO | None = None,
                report: Callable[[str], None] | None = None) -> bool:
    """Run one qemu-io command line on `target`; False if the command failed."""
    return QemuIo(target, out, err, report).run(cmdline)
