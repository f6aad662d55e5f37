"""Character devices as the command line describes them: where a monitor or the qtest
protocol lives (a unix or TCP socket, listening or connecting out; an inherited socket `fd=N`;
stdio).  Plain data, so that parsing a command line costs no asyncio import.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    """Where a QMP monitor lives: a unix path or a TCP host:port, listening or connecting."""

    kind: str  # "unix", "tcp", "fd" (an inherited socket) or "stdio"
    path: str = ""
    host: str = ""
    port: str = "0"
    listen: bool = True
    wait: bool = False
    fd: int = -1
    #: "control" (QMP) or "readline" (HMP), and QMP's pretty-printing.
    mode: str = "control"
    pretty: bool = False
    #: The command-line option it came from, for error messages ("-qmp unix:...").
    origin: str = field(default="", compare=False)

    def describe(self) -> str:
        if self.kind in ("fd", "stdio"):
            return f"fd={self.fd}" if self.kind == "fd" else "stdio"
        where = f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"
        return where + (",server=on" if self.listen else "")


def fd_is_listening(fd: int) -> bool:
    """True if the inherited socket `fd` is a listening one (accept on it), else connected."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    finally:
        sock.close()
