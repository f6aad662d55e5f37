"""blocktxn emulator: a reference emulator of QEMU 7.2's block layer, jobs and transactions.

Layering (dependencies point one way): CLI -> qmp/ -> commands/ -> jobs/ -> block/.
"""

QEMU_VERSION = {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "blocktxn-emulator"}
