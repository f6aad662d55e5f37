"""How a recorded session is compared: normalize (every rule that turns a QMP session into stable
text, with its evidence) and golden (the golden files recorded from real QEMU, per version)."""
