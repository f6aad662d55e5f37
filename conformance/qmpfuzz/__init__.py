"""A QMP input fuzzer: generated hostile input (inputs), a raw-socket client that bounds every
wait (client), and campaigns that run it against the emulator and real QEMU and compare the
answers (campaign)."""
