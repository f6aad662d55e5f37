"""blocktxn conformance suite: the same QMP cases run against the emulator and a real QEMU 7.2.

The pytest plugin (conformance.plugin) launches a target per case, records the QMP conversation
and events, normalizes them (conformance.normalize) and compares them with golden logs recorded
from real QEMU (conformance.golden).
"""
