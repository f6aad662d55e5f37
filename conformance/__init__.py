"""blocktxn conformance suite: the same QMP cases run against the emulator's version profiles and
real QEMUs, compared with goldens recorded from real QEMU.

Laid out by concern (docs/architecture.md has the whole map):

- the pytest plugin and its targets: plugin (the ``blocktxn`` pytest plugin), targets (emulator
  profiles, real QEMU binaries), vm and qmplog (the ``vm`` a case drives and its session log),
  imagetools, recipes, steps (the cases' vocabulary), imagecheck (real qemu-img check of what an
  emulator case wrote);
- compare/: normalization of a session and the golden files it is compared with;
- report/: the terminal summary and the HTML report;
- differential/: ``blocktxn fuzz``, differential testing against real QEMU;
- qmpfuzz/: hostile QMP input against the emulator and real QEMU;
- iotests/: ``blocktxn iotests``, QEMU's own iotests against the emulator;
- cases/: the conformance cases.
"""
