"""``blocktxn iotests``: QEMU's own iotests, unmodified, against the emulator (runner), with a fork
server that starts every emulator process warm (forkserver, and forkclient run as QEMU_PROG).

Nothing is imported here: forkclient must start with builtin modules only."""
