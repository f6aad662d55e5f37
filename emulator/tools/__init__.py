"""Command-line tools built on the emulator's block layer: `img` (qemu-img subset) and `io` (qemu-io).

They are offline tools: they open image files directly, not through a running emulator.
"""
