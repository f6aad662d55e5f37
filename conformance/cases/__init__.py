"""Conformance cases: each runs per target and is compared with a golden log from real QEMU."""
