"""blocktxn emulator: a reference emulator of QEMU's block layer, jobs and transactions, as
QEMU 7.2 or QEMU 10.0 (emulator/versions.py holds the differences).

Layering (dependencies point one way): CLI -> qmp/ -> commands/ -> jobs/ -> block/.
"""

from emulator.versions import DEFAULT_PROFILE

PACKAGE = "blocktxn-emulator"

#: VersionInfo of the default profile (an instance reports its own Machine.profile).
QEMU_VERSION = {"qemu": {"micro": DEFAULT_PROFILE.version[2], "minor": DEFAULT_PROFILE.version[1],
                         "major": DEFAULT_PROFILE.version[0]}, "package": PACKAGE}
