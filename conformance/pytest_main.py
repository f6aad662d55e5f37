"""``python conformance/pytest_main.py PROG [pytest args]``: pytest, with PROG in its messages.

blocktxn runs pytest in a child process; without this, pytest's usage errors would be branded
with the interpreter's ``__main__.py`` instead of the blocktxn command the user typed.  It is run
as a file, not with ``-m``, so that the conformance package is first imported by pytest (which
rewrites its assertions) rather than before it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def main() -> int:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not this folder
    prog, args = sys.argv[1], sys.argv[2:]
    sys.argv = [prog, *args]
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main())
