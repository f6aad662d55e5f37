"""`blocktxn io`: a qemu-io compatible front end over the emulator's qcow2/raw code.

    python -m emulator.tools.io [-f fmt] [-r] [-U] [-d discard] [-c CMD]... FILE

With -c, runs the commands in order (stopping at `quit`); without, reads commands from stdin
after a `qemu-io> ` prompt until `quit` or EOF.  Exit status 0 if every command succeeded, else 1.
"""

from __future__ import annotations

import getopt
import sys
from typing import TextIO

from emulator.block.image import FORMATS, open_image_chain
from emulator.block.qemu_io import COMMANDS, QemuIo
from emulator.error import QemuError

PROG = "qemu-io"
PROMPT = "qemu-io> "
_RAW_PROBE_WARNING = (
    "WARNING: Image format was not specified for '{0}' and probing guessed raw.\n"
    "         Automatically detecting the format is dangerous for raw images, write operations on "
    "block 0 will be restricted.\n"
    "         Specify the 'raw' format explicitly to remove the restrictions.\n"
)


def usage() -> str:
    """qemu-io's --help layout, listing only the options and commands this work-alike implements
    (the other qemu-io options are accepted and ignored)."""
    commands = "".join(f"  {c.name} {c.args}".rstrip() + f"\n      {c.oneline}\n"
                       for c in sorted(COMMANDS.values(), key=lambda c: c.name))
    return (f"Usage: {PROG} [OPTIONS]... [-c STRING]... [file]\n"
            "QEMU Disk exerciser (blocktxn io: a qemu-io work-alike over the blocktxn emulator's "
            "image code)\n\n"
            "  -c, --cmd STRING     execute command with its arguments\n"
            "                       from the given string\n"
            f"  -f, --format FMT     specifies the block driver to use ({', '.join(FORMATS)})\n"
            "  -r, --read-only      export read-only\n"
            "  -d, --discard=MODE   use the given discard mode for the image\n"
            "                       (ignore, off, unmap, on)\n"
            "  -U, --force-share    force shared permissions\n"
            "  -h, --help           display this help and exit\n\n"
            "Without -c, commands are read from standard input after a "
            f"'{PROMPT.strip()} ' prompt.\n\n"
            f"Commands (see '{PROG} -c \"help COMMAND\" FILE' for details):\n{commands}")


def main(argv: list[str] | None = None, *, stdin: TextIO | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run qemu-io style ARGV (without the program name); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        opts, args = getopt.gnu_getopt(argv, "hc:d:f:rsnmkt:T:iU", ["help", "cmd=", "discard=", "format=",
                                                                   "read-only", "force-share"])
    except getopt.GetoptError as e:
        err.write(f"{PROG}: {e.msg}\nTry '{PROG} --help' for more information.\n")
        return 1
    commands: list[str] = []
    fmt: str | None = None
    read_only = force_share = False
    discard = True  # qemu-io opens with BDRV_O_UNMAP (discard=unmap) unless -d says otherwise
    for o, a in opts:
        if o in ("-c", "--cmd"):
            commands.append(a)
        elif o in ("-f", "--format"):
            fmt = a
        elif o in ("-r", "--read-only"):
            read_only = True
        elif o in ("-U", "--force-share"):
            force_share = True
        elif o in ("-d", "--discard"):
            if a not in ("ignore", "off", "unmap", "on"):
                err.write(f"{PROG}: Invalid discard option: {a}\n")
                return 1
            discard = a in ("unmap", "on")
        elif o in ("-h", "--help"):
            out.write(usage())
            return 0
    if len(args) > 1:
        err.write(f"{PROG}: too many arguments\nTry '{PROG} --help' for more information.\n")
        return 1
    if not args:
        # qemu-io without a file: every command needs one.
        for _ in commands:
            err.write("no file open, try 'help open'\n")
        return 1 if commands else 0
    filename = args[0]
    if force_share and not read_only:
        err.write(f"{PROG}: can't open device {filename}: force-share=on can only be used with read-only "
                  "images\n")
        return 1
    if fmt is not None and fmt not in FORMATS:
        err.write(f"{PROG}: can't open device {filename}: Unknown driver '{fmt}'\n")
        return 1
    try:
        image = open_image_chain(filename, fmt, read_only=read_only, discard=discard)
    except QemuError as e:
        err.write(f"{PROG}: can't open device {filename}: {e.desc}\n")
        return 1
    if fmt is None and image.format == "raw" and not read_only:
        err.write(_RAW_PROBE_WARNING.format(filename))
    failed = False
    try:
        session = QemuIo(image, out, err)
        if commands:
            for cmdline in commands:
                if session.quit_requested:
                    break
                failed |= not session.run(cmdline)
                out.flush()
        else:
            while not session.quit_requested:
                out.write(PROMPT)
                out.flush()
                line = stdin.readline()
                if not line:
                    break
                failed |= not session.run(line.rstrip("\n"))
                out.flush()
                err.flush()
    finally:
        try:
            image.flush()
        finally:
            image.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
