"""QEMU's option table (qemu-options.def for x86_64) as data: each option and whether it takes an
argument, and what the emulator does with it.

`ACCEPTED` options are implemented (see emulator/cmdline.py); `IGNORED` ones are accepted and do
nothing without a guest (as QEMU with no guest code to run would observably do); every other
known option gets "-opt: not supported by the blocktxn emulator", and an unknown one QEMU's
"invalid option".
"""

from __future__ import annotations

# Options that take an argument (HAS_ARG in qemu-options.def).
WITH_ARG = frozenset(["M", "machine", "cpu", "accel", "smp", "numa", "add-fd", "set", "global", "boot", "m", "mem-path", "mem-prealloc", "k", "audio-help", "audiodev", "soundhw", "device", "name", "uuid", "fda", "fdb", "hda", "hdb", "hdc", "hdd", "cdrom", "blockdev", "drive", "mtdblock", "sd", "pflash", "snapshot-unused", "fsdev", "virtfs", "virtfs_synth", "iscsi", "usbdevice", "display", "vga", "full-screen", "g", "spice", "portrait", "rotate", "vnc", "monitor", "qmp", "qmp-pretty", "mon", "debugcon", "pidfile", "singlestep-unused", "gdb", "d", "D", "seed", "L", "bios", "kernel", "initrd", "append", "dtb", "fw_cfg", "serial", "parallel", "chardev", "tpmdev", "netdev", "nic", "net", "bt", "smbios", "acpitable", "icount", "watchdog-action", "echr", "incoming", "object", "run-with", "chroot", "runas", "sandbox", "msg", "trace", "plugin", "qtest", "qtest-log", "action", "overcommit", "compat", "rtc", "iscsi-unused", "option-rom", "prom-env", "semihosting-config", "readconfig", "writeconfig", "xen-domid", "xen-attach", "xen-domid-restrict", "device-unused", "add-fd", "loadvm", "tb-size", "blocktxn-version"])

# Options without an argument.
FLAGS = frozenset(["h", "help", "version", "S", "nodefaults", "nographic", "no-user-config", "nouserconfig", "no-shutdown", "no-reboot", "daemonize", "snapshot", "enable-kvm", "enable-fips", "no-hpet", "no-acpi", "no-fd-bootchk", "win2k-hack", "no-quit", "alt-grab", "ctrl-grab", "sdl", "curses", "full-screen", "preconfig", "s", "semihosting", "only-migratable", "xen-attach", "old-param", "mem-prealloc"]) - WITH_ARG

IMPLEMENTED = frozenset(["M", "machine", "accel", "S", "nodefaults", "display", "vga", "nographic", "serial", "parallel", "monitor", "qmp", "qmp-pretty", "mon", "chardev", "blockdev", "drive", "device", "object", "qtest", "qtest-log", "name", "m", "smp", "version", "h", "help", "no-user-config", "nouserconfig", "no-shutdown", "enable-kvm", "blocktxn-version", "global"])

IGNORED = frozenset(["cpu", "uuid", "boot", "k", "no-reboot", "rtc", "msg", "trace", "sandbox", "overcommit", "compat", "seed", "L", "no-hpet", "no-acpi", "watchdog-action", "action"])


def takes_arg(name: str) -> bool | None:
    """True/False for a known option, None for one QEMU does not know."""
    if name in WITH_ARG:
        return True
    if name in FLAGS:
        return False
    return None
