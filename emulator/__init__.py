"""blocktxn emulator: a reference emulator of QEMU's block layer, jobs and transactions, as
QEMU 7.2 or QEMU 10.0 (emulator/versions.py holds the differences).

Layering (dependencies point one way): CLI -> qmp/ -> commands/ -> jobs/ -> block/.
"""

from emulator.versions import DEFAULT_PROFILE, UnsupportedVersion, select

PACKAGE = "blocktxn-emulator"

try:
    _PROFILE = select()
except UnsupportedVersion:  # reported where an instance is started, not at import
    _PROFILE = DEFAULT_PROFILE

#: VersionInfo of the profile $BLOCKTXN_QEMU_VERSION selects at import time (else the newest),
#: for reports; an instance answers with its own Machine.profile.
QEMU_VERSION = {"qemu": {"micro": _PROFILE.version[2], "minor": _PROFILE.version[1],
                         "major": _PROFILE.version[0]}, "package": PACKAGE}
