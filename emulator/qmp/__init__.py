"""The QMP layer: QEMU's wire protocol over unix/TCP sockets.

Modules, one concern each: qobject (QEMU's JSON output and QDict order), jsonparser (QEMU's JSON
lexer/streamer/parser), framing (greeting, message encoding), visitor (QAPI input visitor),
keyval (key=value,... option syntax), errors (QMP error texts), dispatch (qmp_dispatch),
session (one connection), events (event fan-out), server (endpoints and shutdown).
"""

from typing import TYPE_CHECKING, Any

__all__ = ["Endpoint", "EndpointError", "QmpServer"]

if TYPE_CHECKING:
    from .server import Endpoint, EndpointError, QmpServer


def __getattr__(name: str) -> Any:
    """Import the server (asyncio, every command) only when asked: parsing a command line
    through jsonparser/keyval/visitor must not pay for it."""
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
