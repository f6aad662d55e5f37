"""The QEMU command line, as much of it as a block-layer test uses, with QEMU 7.2's errors.

    -M/-machine none[,accel=tcg]  -nodefaults  -display none  -S  -accel tcg
    -qmp unix:PATH,server=on,wait=off | tcp:HOST:PORT,server=on,wait=off  (or server,nowait)
    -chardev socket,id=ID,path=PATH[,server=on,wait=off]  -mon chardev=ID,mode=control
    -blockdev JSON or key=value  -drive file=...,if=none,id=...  -version  -h
    -blocktxn-version 7.2|10.0   (else $BLOCKTXN_QEMU_VERSION, else the newest)

parse_args() turns argv into a Config or raises CmdlineError carrying QEMU's message and the
option it is about; the caller prints `qemu-system-x86_64: -opt ARG: message` and exits 1.
Options are parsed with QEMU's QemuOpts rules (`a=b,flag,noflag`, ",," escapes a comma);
-blockdev values go through keyval and the QAPI visitor, exactly as QMP blockdev-add arguments.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emulator import PACKAGE
from emulator.commands import TYPES
from emulator.error import QemuError
from emulator.versions import (
    DEFAULT_PROFILE,
    VERSION_ENV,
    QemuProfile,
    UnsupportedVersion,
    select,
    supported_text,
)

from .qmp.jsonparser import parse_json
from .qmp.keyval import keyval_parse
from .qmp.server import Endpoint
from .qmp.visitor import QapiSchema, qapi_bool_parse, visit_value

if TYPE_CHECKING:
    from emulator.machine import Machine

PROG = "qemu-system-x86_64"


def version_text(profile: QemuProfile | None = None) -> str:
    """What `-version` prints for `profile` (the selected one by default)."""
    profile = profile if profile is not None else select()
    return (f"QEMU emulator version {profile.version_string} ({PACKAGE})\n"
            f"{profile.copyright_line}\n")


def help_text(profile: QemuProfile | None = None) -> str:
    return version_text(profile) + f"""usage: {PROG} [options]

The blocktxn emulator accepts the part of QEMU's command line that block-layer tests use:

-machine [type=]none[,accel=tcg]   (also -M)  the only machine: no guest
-accel tcg                         accepted and ignored
-nodefaults, -display none, -nographic, -no-user-config, -no-shutdown, -name NAME
-S                                 start in the prelaunch state (query-status, cont)
-qmp unix:PATH,server=on,wait=off  QMP monitor on a unix socket (also tcp:HOST:PORT,...)
-chardev socket,id=ID,path=PATH[,server=on,wait=off]
-mon chardev=ID,mode=control       QMP monitor on a chardev (connects out without server=on)
-blockdev OPTIONS                  add a block node (JSON or key=value, as blockdev-add)
-drive file=F,format=FMT,if=none,id=ID[,node-name=N,cache=...,aio=...]
-blocktxn-version VERSION          behave as QEMU VERSION ({supported_text()}, or a full triple such
                                   as 7.2.22); default: ${VERSION_ENV}, else the newest
-version                           print the version
-h, -help                          print this help
"""


class CmdlineError(Exception):
    """A command-line error: QEMU's message, and the `-option argument` it is about (if any)."""

    def __init__(self, message: str, location: str | None = None, *, text: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self._text = text

    def format(self) -> str:
        """The stderr text QEMU prints (every line ends in a newline)."""
        if self._text is not None:
            return self._text
        first, *rest = self.message.split("\n")
        prefix = f"{PROG}: {self.location}: " if self.location else f"{PROG}: "
        return "".join([prefix + first + "\n", *(line + "\n" for line in rest)])


@dataclass
class Config:
    """What a command line asks for."""

    action: str = "run"  # "run", "version" or "help"
    #: The QEMU version to behave as (-blocktxn-version, else $BLOCKTXN_QEMU_VERSION, else newest).
    profile: QemuProfile = DEFAULT_PROFILE
    start_paused: bool = False
    monitors: list[Endpoint] = field(default_factory=list)
    #: (location, BlockdevOptions) per -blockdev, visited and converted.
    blockdevs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: (location, options) per -drive, as QemuOpts strings.
    drives: list[tuple[str, dict[str, str]]] = field(default_factory=list)


# Options and whether they take an argument (QEMU's qemu-options.def, the part supported here).
OPTIONS_WITH_ARG = {"M", "machine", "display", "accel", "qmp", "chardev", "mon", "blockdev",
                    "drive", "name", "m", "smp", "blocktxn-version"}
FLAG_OPTIONS = {"nodefaults", "S", "version", "h", "help", "nographic", "no-user-config",
                "no-shutdown"}


# ---- QemuOpts ---------------------------------------------------------------------------------

def split_opts(text: str) -> list[str]:
    """Split on commas; ",," stands for a literal comma."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def parse_qemu_opts(text: str, implied: str | None = None, *, allowed: dict[str, str] | None = None
                    ) -> dict[str, str]:
    """QemuOpts: `key=value`, `flag` (=on), `noflag` (=off); the first bare value may be `implied`.

    `allowed` maps known keys to their type ("str" or "bool"); others are rejected as QEMU does.
    """
    opts: dict[str, str] = {}
    for index, part in enumerate(split_opts(text)):
        if not part:
            continue
        if index == 0 and implied and "=" not in part:
            key, value = implied, part
        elif "=" in part:
            key, value = part.split("=", 1)
        elif part.startswith("no") and allowed is not None and allowed.get(part[2:]) == "bool":
            key, value = part[2:], "off"
        else:
            key, value = part, "on"
        if allowed is not None:
            kind = allowed.get(key)
            if kind is None:
                raise QemuError(f"Invalid parameter '{key}'")
            if kind == "bool" and qapi_bool_parse(value) is None:
                raise QemuError(f"Parameter '{key}' expects 'on' or 'off'")
        opts[key] = value
    return opts


def _bool(opts: dict[str, str], key: str, default: bool) -> bool:
    value = opts.get(key)
    if value is None:
        return default
    parsed = qapi_bool_parse(value)
    return default if parsed is None else parsed


# ---- chardevs and monitors ----------------------------------------------------------------------

SOCKET_CHARDEV_KEYS = {
    "id": "str", "backend": "str", "path": "str", "host": "str", "port": "str", "to": "str",
    "fd": "str", "server": "bool", "wait": "bool", "telnet": "bool", "tn3270": "bool",
    "websocket": "bool", "nodelay": "bool", "delay": "bool", "reconnect": "str", "ipv4": "bool",
    "ipv6": "bool", "tls-creds": "str", "tls-authz": "str", "abstract": "bool", "tight": "bool",
    "mux": "bool", "logfile": "str", "logappend": "bool",
}
MON_KEYS = {"id": "str", "chardev": "str", "mode": "str", "pretty": "bool"}
CHARDEV_BACKENDS = {"socket", "null", "stdio", "pty", "file", "pipe", "udp", "serial", "parallel",
                    "vc", "ringbuf", "memory", "msmouse", "wctablet", "braille", "testdev",
                    "spicevmc", "spiceport", "qemu-vdagent", "dbus"}


@dataclass
class _Chardev:
    location: str
    endpoint: Endpoint
    used: bool = False


def _socket_endpoint(opts: dict[str, str]) -> Endpoint:
    server = _bool(opts, "server", False)
    wait = _bool(opts, "wait", True) if server else False
    if "path" in opts:
        return Endpoint("unix", path=opts["path"], listen=server, wait=wait)
    if "host" in opts or "port" in opts:
        return Endpoint("tcp", host=opts.get("host", ""), port=opts.get("port", "0"),
                        listen=server, wait=wait)
    raise QemuError(f"Unable to parse FD number {opts.get('fd', '')}")


def parse_qmp_compat(text: str) -> Endpoint:
    """-qmp's chardev shorthand (qemu_chr_parse_compat): unix:PATH,... or tcp:HOST:PORT,..."""
    if text.startswith("unix:"):
        opts = parse_qemu_opts(text[5:], "path", allowed=SOCKET_CHARDEV_KEYS)
        return _socket_endpoint(opts)
    if text.startswith("tcp:"):
        rest = text[4:]
        hostport, _, tail = rest.partition(",")
        host, sep, port = hostport.partition(":")
        if not sep or not port:
            raise QemuError("")  # QEMU gives only "parse error" here
        opts = parse_qemu_opts(tail, allowed=SOCKET_CHARDEV_KEYS) if tail else {}
        opts.update(host=host, port=port)
        return _socket_endpoint(opts)
    if text in ("stdio", "null", "pty", "vc") or text.startswith(("file:", "pipe:", "udp:", "vc:")):
        raise QemuError(f"char driver '{text.split(':')[0]}' is not supported by the blocktxn emulator")
    raise QemuError(f"'{text}' is not a valid char driver")


# ---- the whole command line ---------------------------------------------------------------------

class _Parser:
    def __init__(self) -> None:
        self.config = Config()
        self.chardevs: dict[str, _Chardev] = {}
        self.schema = QapiSchema(TYPES)
        self.compat_monitors = 0

    def parse(self, argv: list[str]) -> Config:
        pairs = self._split(argv)
        self.config.profile = self._profile(pairs)
        self.schema = QapiSchema(self.config.profile.qapi_types(TYPES))
        for name, arg in pairs:
            if name in ("version",):
                self.config.action = "version"
                return self.config
            if name in ("h", "help"):
                self.config.action = "help"
                return self.config
        for name, arg in pairs:
            location = f"-{name} {arg}" if arg is not None else f"-{name}"
            try:
                self._option(name, arg)
            except QemuError as exc:
                raise CmdlineError(exc.desc, location) from exc
        return self.config

    @staticmethod
    def _profile(pairs: list[tuple[str, str | None]]) -> QemuProfile:
        """The last -blocktxn-version wins (as QEMU's options); it beats the environment."""
        option: str | None = None
        for name, arg in pairs:
            if name == "blocktxn-version":
                option = arg or ""
        try:
            return select(option)
        except UnsupportedVersion as exc:
            location = (f"-blocktxn-version {option}" if option is not None
                        else f"{VERSION_ENV}={os.environ.get(VERSION_ENV, '')}")
            raise CmdlineError(str(exc), location) from exc

    @staticmethod
    def _split(argv: list[str]) -> list[tuple[str, str | None]]:
        pairs: list[tuple[str, str | None]] = []
        i = 0
        while i < len(argv):
            word = argv[i]
            i += 1
            if not word.startswith("-") or word == "-":
                if not os.path.exists(word):
                    raise CmdlineError(f"Could not open '{word}': No such file or directory", word)
                raise CmdlineError("a disk image argument is not supported by the blocktxn emulator; "
                                   "use -drive or -blockdev", word)
            name = word[2:] if word.startswith("--") else word[1:]
            if name in OPTIONS_WITH_ARG:
                if i >= len(argv):
                    raise CmdlineError("requires an argument", word)
                pairs.append((name, argv[i]))
                i += 1
            elif name in FLAG_OPTIONS:
                pairs.append((name, None))
            else:
                raise CmdlineError("invalid option", word)
        return pairs

    def _option(self, name: str, arg: str | None) -> None:
        if name in ("M", "machine"):
            self._machine(arg or "")
        elif name == "accel":
            opts = parse_qemu_opts(arg or "", "accel")
            if opts.get("accel") != "tcg":
                raise QemuError(f"invalid accelerator {opts.get('accel', '')}")
        elif name == "display":
            kind = parse_qemu_opts(arg or "", "type").get("type", "")
            if kind in ("gtk", "sdl"):  # UI modules Debian ships in qemu-system-gui
                text = self.config.profile.errors.DISPLAY_MODULE_MISSING % {"prog": PROG, "kind": kind}
                raise CmdlineError(f"Display '{kind}' is not available.", text=text)
            if kind in ("vnc", "curses", "egl-headless", "spice-app", "dbus", "cocoa"):
                raise CmdlineError(f"Display '{kind}' is not available.")
            if kind != "none":
                raise QemuError(f"Parameter 'type' does not accept value '{kind}'")
        elif name == "S":
            self.config.start_paused = True
        elif name == "qmp":
            self._qmp(arg or "")
        elif name == "chardev":
            self._chardev(arg or "", f"-chardev {arg}")
        elif name == "mon":
            self._mon(arg or "")
        elif name == "blockdev":
            self._blockdev(arg or "")
        elif name == "drive":
            self.config.drives.append((f"-drive {arg}", parse_qemu_opts(arg or "")))
        # -blocktxn-version: chosen before the other options (parse)
        # -nodefaults, -nographic, -no-user-config, -no-shutdown, -name, -m, -smp: nothing to do

    def _machine(self, arg: str) -> None:
        opts = parse_qemu_opts(arg, "type")
        if opts.get("type", "none") != "none":
            raise CmdlineError(self.config.profile.errors.MACHINE_UNSUPPORTED % opts.get("type", "")
                               + "\nUse -machine help to list supported machines")
        accel = opts.get("accel")
        if accel is not None and "tcg" not in accel.split(":"):
            raise CmdlineError(f"invalid accelerator {accel}")

    def _qmp(self, arg: str) -> None:
        location = f"-qmp {arg}"
        if arg.startswith("chardev:"):
            self._mon(f"chardev={arg[8:]},mode=control")
            return
        try:
            endpoint = parse_qmp_compat(arg)
        except QemuError as exc:
            lines = [exc.desc] if exc.desc else []
            lines.append(f"parse error: {arg}")
            raise CmdlineError(lines[0], location,
                               text="".join(f"{PROG}: {location}: {line}\n" for line in lines)) from exc
        self.compat_monitors += 1
        self.config.monitors.append(dataclasses.replace(endpoint, origin=location))

    def _chardev(self, arg: str, location: str) -> None:
        backend = split_opts(arg)[0] if "=" not in split_opts(arg)[0] else ""
        if backend not in CHARDEV_BACKENDS:
            raise QemuError(f"'{backend}' is not a valid char driver name")
        if backend != "socket":
            raise QemuError(f"char driver '{backend}' is not supported by the blocktxn emulator")
        opts = parse_qemu_opts(arg, "backend", allowed=SOCKET_CHARDEV_KEYS)
        chardev_id = opts.get("id")
        if not chardev_id:
            raise QemuError("chardev: no id specified")
        if chardev_id in self.chardevs:
            raise QemuError(f"Duplicate ID '{chardev_id}' for chardev")
        self.chardevs[chardev_id] = _Chardev(location, dataclasses.replace(_socket_endpoint(opts),
                                                                           origin=location))

    def _mon(self, arg: str) -> None:
        opts = parse_qemu_opts(arg, "chardev", allowed=MON_KEYS)
        mode = opts.get("mode", "readline")
        if mode not in ("readline", "control"):
            raise QemuError(f"Parameter 'mode' does not accept value '{mode}'")
        chardev = self.chardevs.get(opts.get("chardev", ""))
        if chardev is None:
            raise QemuError(f"chardev \"{opts.get('chardev', '')}\" not found")
        if chardev.used:
            raise QemuError(f"Device '{opts['chardev']}' is in use")
        if mode != "control":
            raise QemuError("the HMP monitor (mode=readline) is not supported by the blocktxn emulator")
        if _bool(opts, "pretty", False):
            raise QemuError("pretty=on is not supported by the blocktxn emulator")
        chardev.used = True
        self.config.monitors.append(chardev.endpoint)

    def _blockdev(self, arg: str) -> None:
        if arg.startswith("{"):
            value = parse_json(arg)
            options = visit_value(self.schema, "BlockdevOptions", value)
        else:
            options = visit_value(self.schema, "BlockdevOptions", keyval_parse(arg, "driver"),
                                  keyval=True)
        self.config.blockdevs.append((f"-blockdev {arg}", options))


def parse_args(argv: list[str]) -> Config:
    """Parse a QEMU command line (without the program name)."""
    return _Parser().parse(argv)


# ---- applying the block options ----------------------------------------------------------------

DRIVE_INTERFACES = ("none", "ide", "scsi", "floppy", "pflash", "mtd", "sd", "virtio", "xen")
DRIVE_CACHE_MODES = ("none", "writeback", "unsafe", "directsync", "writethrough")
DRIVE_AIO_MODES = ("threads", "native", "io_uring")


def check_drive(opts: dict[str, str]) -> None:
    """The checks of QEMU's drive_new() that come before opening the image."""
    drive_id = opts.get("id")
    if drive_id is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", drive_id):
        raise QemuError("Parameter 'id' expects an identifier\n"
                        "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.")
    if "cache" in opts and opts["cache"] not in DRIVE_CACHE_MODES:
        raise QemuError("invalid cache option")
    if "aio" in opts and opts["aio"] not in DRIVE_AIO_MODES:
        raise QemuError("invalid aio option")
    interface = opts.get("if", "ide")
    if interface not in DRIVE_INTERFACES:
        raise QemuError(f"unsupported bus type '{interface}'")
    if interface == "virtio":
        raise QemuError("No 'PCI' bus found for device 'virtio-blk-pci'")
    if interface not in ("none", "ide"):
        raise QemuError(f"if={interface} is not supported by the blocktxn emulator")


def apply_block_options(config: Config, machine: Machine) -> None:
    """Create the -blockdev nodes and -drive backends, in command-line order within each kind."""
    for location, options in config.blockdevs:
        try:
            machine.block.blockdev_add(options)
        except QemuError as exc:
            raise CmdlineError(exc.desc, location) from exc
    for location, opts in config.drives:
        try:
            check_drive(opts)
            machine.block.drive_add(opts)
        except QemuError as exc:
            raise CmdlineError(exc.desc, location) from exc
