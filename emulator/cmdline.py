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
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emulator import qerror
from emulator.cutils import id_wellformed
from emulator.error import QemuError
from emulator.versions import (
    DEFAULT_PROFILE,
    PACKAGE,
    VERSION_ENV,
    QemuProfile,
    UnsupportedVersion,
    select,
    supported_text,
)

from .machine import options as option_table
from .machine import types as machine_types
from .machine.chardev import Endpoint, fd_is_listening
from .machine.devices import ALIASES
from .qmp.jsonparser import parse_json
from .qmp.keyval import keyval_parse
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

    action: str = "run"  # "run", "version", "help", "machine-help", "device-help", "format-help"
    #: The QEMU version to behave as (-blocktxn-version, else $BLOCKTXN_QEMU_VERSION, else newest).
    profile: QemuProfile = DEFAULT_PROFILE
    start_paused: bool = False
    #: The profile's name ("7.2", "10.0"): the machine model's texts are looked up by it.
    version: str = DEFAULT_PROFILE.name
    #: -machine type (None: the version's default machine, as QEMU).
    machine: str | None = None
    #: Accelerators in the order asked (the first one that works is used).
    accels: list[str] = field(default_factory=list)
    monitors: list[Endpoint] = field(default_factory=list)
    #: The qtest chardev (-qtest), its option text for errors, and -qtest-log.
    qtest: Endpoint | None = None
    qtest_spec: str = ""
    qtest_log: str | None = None
    #: (location, {"driver": ..., props}) per -device.
    devices: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: (location, {"qom-type": ..., "id": ..., props}) per -object.
    objects: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: Text -device DRIVER,help prints.
    help_output: str = ""
    #: (location, BlockdevOptions) per -blockdev, visited and converted.
    blockdevs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: (location, options) per -drive, as QemuOpts strings.
    drives: list[tuple[str, dict[str, str]]] = field(default_factory=list)




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
                raise QemuError(qerror.INVALID_PARAMETER % key)
            if kind == "bool" and qapi_bool_parse(value) is None:
                raise QemuError(qerror.INVALID_PARAMETER_VALUE % (key, "'on' or 'off'"))
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


ACCELERATORS = ("qtest", "tcg", "kvm")
VGA_TYPES = ("none", "std", "cirrus", "vmware", "qxl", "xenfb", "tcx", "cg3", "virtio")
#: -object types the emulator knows (the block layer's throttle groups, iothreads, secrets).
OBJECT_TYPES = ("throttle-group", "iothread", "secret", "memory-backend-ram", "memory-backend-file")


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
    if "fd" in opts:
        text = opts["fd"]
        if not text.isdigit():
            raise QemuError(qerror.FD_NUMBER_UNPARSABLE % text)
        fd = int(text)
        try:
            is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
        except OSError:
            is_socket = False
        if not is_socket:
            raise QemuError(f"File descriptor '{fd}' is not a socket")
        return Endpoint("fd", fd=fd, listen=fd_is_listening(fd))
    raise QemuError(qerror.FD_NUMBER_UNPARSABLE % (opts.get('fd', '')))


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
    if text == "stdio":
        return Endpoint("stdio", listen=False)
    if text in ("null", "pty", "vc") or text.startswith(("file:", "pipe:", "udp:", "vc:")):
        raise QemuError(qerror.EMULATOR_NO_CHARDEV % text.split(':')[0])
    raise QemuError(f"'{text}' is not a valid char driver")


# ---- the whole command line ---------------------------------------------------------------------

class _Parser:
    def __init__(self) -> None:
        self.config = Config()
        self.chardevs: dict[str, _Chardev] = {}
        self._schema: QapiSchema | None = None
        #: -machine property names, checked once the machine type is known.
        self.machine_props: list[str] = []

    def parse(self, argv: list[str]) -> Config:
        pairs = self._split(argv)
        self.config.profile = self._profile(pairs)
        self.config.version = self.config.profile.name
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
            if self.config.action != "run":
                return self.config
        mtype = machine_types.lookup(self.config.version, self.config.machine)
        if mtype is None:
            raise CmdlineError(self._unsupported_machine(self.config.machine or ""))
        for key in self.machine_props:
            message = machine_types.check_property(mtype, key)
            if message:
                raise CmdlineError(message)
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
            takes = option_table.takes_arg(name)
            if takes is None:
                raise CmdlineError("invalid option", word)
            if takes:
                if i >= len(argv):
                    raise CmdlineError("requires an argument", word)
                pairs.append((name, argv[i]))
                i += 1
            else:
                pairs.append((name, None))
        return pairs

    def _option(self, name: str, arg: str | None) -> None:
        if name in ("M", "machine"):
            self._machine(arg or "")
        elif name == "accel":
            opts = parse_qemu_opts(arg or "", "accel")
            accel = opts.get("accel", "")
            if accel not in ACCELERATORS:
                raise QemuError(f"invalid accelerator {accel}")
            self.config.accels.append(accel)
        elif name == "vga":
            if (arg or "") not in VGA_TYPES:
                raise CmdlineError(f"unknown vga type: {arg}")
        elif name in ("serial", "parallel"):
            self._serial(name, arg or "")
        elif name == "monitor":
            self._monitor(arg or "")
        elif name == "qmp-pretty":
            self._qmp(arg or "", pretty=True)
        elif name == "device":
            self._device(arg or "")
        elif name == "object":
            self._object(arg or "")
        elif name == "qtest":
            self._qtest(arg or "")
        elif name == "qtest-log":
            self.config.qtest_log = arg
        elif name == "display":
            kind = parse_qemu_opts(arg or "", "type").get("type", "")
            if kind in ("gtk", "sdl"):  # UI modules Debian ships in qemu-system-gui
                text = self.config.profile.errors.DISPLAY_MODULE_MISSING % {"prog": PROG, "kind": kind}
                raise CmdlineError(f"Display '{kind}' is not available.", text=text)
            if kind in ("vnc", "curses", "egl-headless", "spice-app", "dbus", "cocoa"):
                raise CmdlineError(f"Display '{kind}' is not available.")
            if kind != "none":
                raise QemuError(qerror.PARAMETER_VALUE_REFUSED % ("type", kind))
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
            opts = parse_qemu_opts(arg or "")
            if opts.get("format") == "help":
                self.config.action = "format-help"
                return
            self.config.drives.append((f"-drive {arg}", opts))
        elif name not in option_table.IMPLEMENTED and name not in option_table.IGNORED:
            raise QemuError("this option is not supported by the blocktxn emulator")
        # -blocktxn-version: chosen before the other options (parse)
        # -nodefaults, -nographic, -no-user-config, -no-shutdown, -name, -m, -smp, and the
        # options of option_table.IGNORED: nothing to do without a guest

    def _unsupported_machine(self, name: str) -> str:
        """QEMU's text for an unknown -machine type (it names the type since 8.x)."""
        return (self.config.profile.errors.MACHINE_UNSUPPORTED % name
                + "\nUse -machine help to list supported machines")

    def _machine(self, arg: str) -> None:
        opts = parse_qemu_opts(arg, "type")
        kind = opts.get("type")
        if kind == "help":
            self.config.action = "machine-help"
            return
        if kind is not None:
            self.config.machine = kind
            if machine_types.lookup(self.config.version, kind) is None:
                raise CmdlineError(self._unsupported_machine(kind))
        self.machine_props.extend(key for key in opts if key != "type")
        accel = opts.get("accel")
        if accel is not None:
            for name in accel.split(":"):
                if name in ACCELERATORS:
                    self.config.accels.append(name)
                    break
            else:
                raise CmdlineError(f"invalid accelerator {accel}")

    def _serial(self, name: str, arg: str) -> None:
        if arg in ("none", "null") or arg.startswith("chardev:"):
            return
        try:
            parse_qmp_compat(arg)
        except QemuError as exc:
            location = f"-{name} {arg}"
            device = "serial" if name == "serial" else "parallel"
            raise CmdlineError(exc.desc, location, text=(
                f"{PROG}: {location}: {exc.desc}\n"
                f"{PROG}: {location}: could not connect {device} device to character backend "
                f"'{arg}'\n")) from exc

    def _monitor(self, arg: str) -> None:
        if arg == "none":
            return
        if arg.startswith("chardev:"):
            self._mon(f"chardev={arg[8:]},mode=readline")
            return
        self._qmp(arg, option="monitor", mode="readline")

    def _device(self, arg: str) -> None:
        driver, _, rest = arg.partition(",")
        if driver == "help" or driver == "?":
            self.config.action = "device-help"
            return
        if "=" in driver:
            raise QemuError(qerror.MISSING_PARAMETER % "driver")
        opts = {"driver": driver, **parse_qemu_opts(rest)}
        if opts.get("help") == "on" or "?" in opts:
            self.config.action = "device-help"
            self.config.help_output = f"{ALIASES.get(driver, driver)} options:\n"
            return
        self.config.devices.append((f"-device {arg}", opts))

    def _object(self, arg: str) -> None:
        opts = parse_qemu_opts(arg, "qom-type")
        qom_type = opts.get("qom-type", "")
        if qom_type not in OBJECT_TYPES:
            raise QemuError(qerror.PARAMETER_VALUE_REFUSED % ("qom-type", qom_type))
        object_id = opts.get("id")
        if not object_id:
            raise QemuError(qerror.MISSING_PARAMETER % "id")
        if any(o.get("id") == object_id for _, o in self.config.objects):
            raise QemuError(f"Duplicate ID '{object_id}' for object")
        self.config.objects.append((f"-object {arg}", opts))

    def _qtest(self, arg: str) -> None:
        if arg.startswith("chardev:"):
            chardev = self.chardevs.get(arg[8:])
            if chardev is None:
                raise CmdlineError(f"Cannot find character device '{arg[8:]}'")
            chardev.used = True
            self.config.qtest = chardev.endpoint
        else:
            try:
                self.config.qtest = parse_qmp_compat(arg)
            except QemuError as exc:
                raise CmdlineError(exc.desc, text=(
                    f"{PROG}: {exc.desc}\n"
                    f"{PROG}: Failed to initialize device for qtest: \"{arg}\"\n")) from exc
        self.config.qtest_spec = arg

    def _qmp(self, arg: str, *, pretty: bool = False, option: str = "",
             mode: str = "control") -> None:
        option = option or ("qmp-pretty" if pretty else "qmp")
        location = f"-{option} {arg}"
        if arg.startswith("chardev:"):
            self._mon(f"chardev={arg[8:]},mode={mode}" + (",pretty=on" if pretty else ""))
            return
        try:
            endpoint = parse_qmp_compat(arg)
        except QemuError as exc:
            lines = [exc.desc] if exc.desc else []
            lines.append(f"parse error: {arg}")
            raise CmdlineError(lines[0], location,
                               text="".join(f"{PROG}: {location}: {line}\n" for line in lines)) from exc
        self.config.monitors.append(dataclasses.replace(endpoint, origin=location, mode=mode,
                                                        pretty=pretty))

    def _chardev(self, arg: str, location: str) -> None:
        backend = split_opts(arg)[0] if "=" not in split_opts(arg)[0] else ""
        if backend not in CHARDEV_BACKENDS:
            raise QemuError(f"'{backend}' is not a valid char driver name")
        if backend not in ("socket", "stdio", "null"):
            raise QemuError(qerror.EMULATOR_NO_CHARDEV % backend)
        opts = parse_qemu_opts(arg, "backend", allowed=SOCKET_CHARDEV_KEYS)
        chardev_id = opts.get("id")
        if not chardev_id:
            raise QemuError("chardev: no id specified")
        if chardev_id in self.chardevs:
            raise QemuError(f"Duplicate ID '{chardev_id}' for chardev")
        if backend == "stdio":
            endpoint = Endpoint("stdio", listen=False)
        elif backend == "null":
            endpoint = Endpoint("null", listen=False)
        else:
            endpoint = _socket_endpoint(opts)
        self.chardevs[chardev_id] = _Chardev(location, dataclasses.replace(endpoint, origin=location))

    def _mon(self, arg: str) -> None:
        opts = parse_qemu_opts(arg, "chardev", allowed=MON_KEYS)
        mode = opts.get("mode", "readline")
        if mode not in ("readline", "control"):
            raise QemuError(qerror.PARAMETER_VALUE_REFUSED % ("mode", mode))
        chardev = self.chardevs.get(opts.get("chardev", ""))
        if chardev is None:
            raise QemuError(f"chardev \"{opts.get('chardev', '')}\" not found")
        if chardev.used:
            raise QemuError(qerror.DEVICE_IN_USE % opts['chardev'])
        chardev.used = True
        if chardev.endpoint.kind == "null":
            return
        self.config.monitors.append(dataclasses.replace(chardev.endpoint, mode=mode,
                                                        pretty=_bool(opts, "pretty", False)))

    @property
    def schema(self) -> QapiSchema:
        """The QAPI schema (importing every command module: only -blockdev needs it)."""
        if self._schema is None:
            from emulator.commands import TYPES

            self._schema = QapiSchema(self.config.profile.qapi_types(TYPES))
        return self._schema

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


def check_drive(opts: dict[str, str], *, board: bool = True) -> None:
    """The checks of QEMU's drive_new() that come before opening the image (`board`: the
    machine has buses for board-created drives, unlike `-M none`)."""
    drive_id = opts.get("id")
    if drive_id is not None and not id_wellformed(drive_id):
        raise QemuError(qerror.ID_NOT_WELLFORMED)
    if "cache" in opts and opts["cache"] not in DRIVE_CACHE_MODES:
        raise QemuError("invalid cache option")
    if "aio" in opts and opts["aio"] not in DRIVE_AIO_MODES:
        raise QemuError("invalid aio option")
    interface = opts.get("if", "ide")
    if interface not in DRIVE_INTERFACES:
        raise QemuError(f"unsupported bus type '{interface}'")
    if interface not in ("none", "ide", "virtio", "scsi") and not board:
        raise QemuError(qerror.MACHINE_NO_DRIVE_BUS % (interface, 0, 0))
    if interface not in ("none", "ide", "virtio", "scsi"):
        raise QemuError(f"if={interface} is not supported by the blocktxn emulator")
    media = opts.get("media", "disk")
    if media not in ("disk", "cdrom"):
        raise QemuError(f"'{media}' invalid media")


#: Devices per bus of the interfaces that have buses (drive_new's if_max_devs).
IF_MAX_DEVS = {"ide": 2, "scsi": 7}


def default_drive_id(interface: str, index: int, cdrom: bool) -> str:
    """drive_new's name for a -drive without id=: "ide0-cd1", "scsi0-hd0", "virtio0", "none0"."""
    media = ("-cd" if cdrom else "-hd") if interface in ("ide", "scsi") else ""
    max_devs = IF_MAX_DEVS.get(interface, 0)
    if max_devs:
        return f"{interface}{index // max_devs}{media}{index % max_devs}"
    return f"{interface}{media}{index}"


def _drive(machine: Machine, opts: dict[str, str]) -> None:
    interface = opts.get("if", "ide")
    devices = machine.devices
    if interface != "none" and devices is not None:
        # QEMU finds no bus before it opens the image: fail first, as it does.
        devices.check_drive_bus(interface)
    drive_opts = {key: value for key, value in opts.items() if key not in DRIVE_ONLY_KEYS}
    if not opts.get("file") and interface != "none":
        backend = machine.block.empty_drive_add(drive_opts) if hasattr(
            machine.block, "empty_drive_add") else None
        if backend is None:
            raise QemuError("an empty drive (no file=) is not supported by the blocktxn emulator")
    else:
        backend = machine.block.drive_add(drive_opts)
    if devices is not None:
        devices.add_drive_device(interface, backend, opts)


DRIVE_ONLY_KEYS = ("media", "index", "bus", "unit", "serial", "werror", "rerror", "boot", "addr")


def _object(machine: Machine, opts: dict[str, str]) -> None:
    from emulator.commands import COMMANDS

    qom_type, object_id = opts["qom-type"], opts["id"]
    handler = COMMANDS.get("object-add")
    if handler is not None and qom_type not in ("iothread", "secret"):
        props: dict[str, Any] = {k: v for k, v in opts.items() if k not in ("qom-type", "id")}
        handler.handler(machine, qom_type=qom_type, id=object_id, **props)
        return
    if qom_type not in ("iothread", "secret"):
        raise QemuError(qerror.EMULATOR_NO_OBJECT % qom_type)
    machine.objects[object_id] = dict(opts)


def apply_block_options(config: Config, machine: Machine) -> None:
    """Create objects, -blockdev nodes, -drive backends (with their devices) and -device devices,
    in QEMU's order: objects, then block options, then devices."""
    if machine.devices is None:
        machine.configure(config.version, machine_types.lookup(config.version, config.machine),
                          qtest=config.accels[:1] == ["qtest"])
    _each(config.objects, lambda opts: _object(machine, opts))
    _each(config.blockdevs, machine.block.blockdev_add)
    board = machine.devices.machine_type.family != "none"
    units: dict[str, int] = {}

    def add_drive(opts: dict[str, str]) -> None:
        if "if" not in opts:  # the machine's block_default_type: none for -M none, else ide
            opts = {**opts, "if": "ide" if board else "none"}
        index = units.get(opts["if"], 0)
        units[opts["if"]] = index + 1
        if "id" not in opts:
            opts = {**opts, "id": default_drive_id(opts["if"], index, opts.get("media") == "cdrom")}
        check_drive(opts, board=board)
        _drive(machine, opts)

    _each(config.drives, add_drive)
    _each(config.devices, machine.devices.add)


def _each(options: list[tuple[str, Any]], apply: Callable[[Any], object]) -> None:
    """Apply each option in order; QEMU's error names the option it came from."""
    for location, opts in options:
        try:
            apply(opts)
        except QemuError as exc:
            raise CmdlineError(exc.desc, location) from exc
