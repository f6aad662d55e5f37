"""The QMP layer: QEMU's wire protocol over unix/TCP sockets.

Modules, one concern each: qobject (QEMU's JSON output and QDict order), jsonparser (QEMU's JSON
lexer/streamer/parser), framing (greeting, message encoding), visitor (QAPI input visitor),
keyval (key=value,... option syntax), errors (QMP error texts), dispatch (qmp_dispatch),
session (one connection), events (event fan-out), server (endpoints and shutdown).
"""

from .server import Endpoint, EndpointError, QmpServer

__all__ = ["Endpoint", "EndpointError", "QmpServer"]
