"""The ``blocktxn`` command (main): the one front end of the emulator, the conformance suite and
the tools.  It sits beside emulator/ and conformance/ because it serves all of them; pytest_main
runs pytest in a child process under blocktxn's name."""
