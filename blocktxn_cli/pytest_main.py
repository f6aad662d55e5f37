"""``python blocktxn_cli/pytest_main.py PROG [pytest args]``: pytest, with PROG in its messages.

blocktxn runs pytest in a child process; without this, pytest's usage errors would be branded
with the interpreter's ``__main__.py`` instead of the blocktxn command the user typed.  It is run
as a file, not with ``-m``, so that the conformance package is first imported by pytest (which
rewrites its assertions) rather than before it.  It also chooses where bytecode is kept
(keep_bytecode_outside_the_tree).
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import pytest

#: Where bytecode goes when the environment says not to write it beside the sources.
BYTECODE_CACHE = Path(sys.prefix) / "blocktxn-pycache"


def keep_bytecode_outside_the_tree() -> None:
    """With PYTHONDONTWRITEBYTECODE set, every run compiled the emulator and re-did pytest's
    assertion rewriting of every case module from source (about 0.6 s a run).  Bytecode is kept
    instead under BYTECODE_CACHE (sys.pycache_prefix), away from the source tree, which is what
    that setting protects; here and in pytest-xdist's workers.  An explicit PYTHONPYCACHEPREFIX
    is used as it is."""
    if not sys.dont_write_bytecode:
        return
    prefix = os.environ.get("PYTHONPYCACHEPREFIX") or str(BYTECODE_CACHE)
    os.environ["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix = prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False


def main() -> int:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not this folder
    keep_bytecode_outside_the_tree()
    prog, args = sys.argv[1], sys.argv[2:]
    sys.argv = [prog, *args]
    # pytest.main() calls itself "pytest.main()" in usage errors; the function behind it takes the
    # name to use (pytest 8.4 and newer). Older pytest: its own name it is.
    from _pytest import config

    run = getattr(config, "_main", None)
    if run is not None and "prog" in inspect.signature(run).parameters:
        return int(run(args=args, prog=prog))
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main())
