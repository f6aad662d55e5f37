"""A QMP input fuzzer: generated hostile input, a raw-socket client that bounds every wait, and
campaigns against the emulator and real QEMU (inputs; split by concern in the next commit)."""
