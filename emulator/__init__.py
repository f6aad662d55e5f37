"""blocktxn emulator: a reference emulator of QEMU's block layer, jobs and transactions, as
QEMU 7.2 or QEMU 10.0 (emulator/versions.py holds the differences).

Layering (dependencies point one way): CLI -> qmp/ -> commands/ -> jobs/ -> block/.
"""

from emulator.versions import PACKAGE

__all__ = ["PACKAGE"]
