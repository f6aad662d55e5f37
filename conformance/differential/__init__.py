"""Differential testing (``blocktxn fuzz``): hypothesis drives real QEMU and the emulator through
the same scenarios and compares them after every step.

fuzz (the run and its command line), plan, gen and model (scenarios drawn from the seed alone,
the model learnt from the reference), steps (the step vocabulary, also used by the cases it
writes), runner (lockstep execution and comparison), case (a divergence as a conformance case),
crashes (known crashes of real QEMU that are not provoked), targets (which QEMU, which profile).
"""
