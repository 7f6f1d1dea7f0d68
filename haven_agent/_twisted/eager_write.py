# -*- test-case-name: tests._twisted.test_eager_write -*-
"""
Writing to a socket transport, and half-closing it, at once instead of on
the next reactor turn.

Twisted's `FileDescriptor.write` only queues bytes: it registers the socket
for writability, and the bytes leave on a later reactor iteration, after
which the socket is unregistered again. For a proxy that answers small
requests that is two `epoll_ctl` calls and one more trip round the reactor
per write, on each side of every request: most of what a keep-alive
`GET /_ping` costs the agent beyond TLS itself. asyncio's transports, by
contrast, try `send()` first and queue only what the kernel did not take.

`write_now` does the same on top of Twisted: when the transport holds no
unsent bytes (so nothing can be overtaken) and is not closing, the bytes go
straight to `socket.send()`; whatever is left, and every write to a
transport that is not a plain socket transport, takes the ordinary
`transport.write()` path with its buffering, flow control and error
handling. It reads private attributes of `twisted.internet.abstract`'s
`FileDescriptor`, which is why setup.cfg pins the Twisted release line.
"""

from __future__ import annotations

from typing import Any


def _idle_socket(transport: Any) -> Any:
    """
    The socket of C{transport} when bytes may go to it directly: a plain
    socket transport, open, not closing either way, holding no unsent
    bytes that they could overtake. None otherwise.
    """
    sock = getattr(transport, "socket", None)
    if (
        sock is None
        or transport._tempDataLen
        or transport.dataBuffer
        or transport.disconnecting
        or transport._writeDisconnecting
        or transport._writeDisconnected
        or not transport.connected
        or transport.TLS
    ):
        return None
    return sock


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once where that is safe.
    """
    sock = _idle_socket(transport)
    if sock is None or not data:
        transport.write(data)
        return
    try:
        sent = sock.send(data)
    except OSError:
        # Would block, or the connection is broken: let the ordinary path
        # queue the bytes, or find the error and report connectionLost.
        sent = 0
    if sent < len(data):
        transport.write(data[sent:] if sent else data)


def close_write_now(transport: Any) -> None:
    """
    Half-close C{transport} (a TCP FIN, or its UNIX socket's) at once when
    nothing is queued before it and no producer is registered.

    Twisted's `loseWriteConnection` registers the socket for writability,
    sends nothing on the next reactor turn, then shuts it down and
    unregisters it: two `epoll_ctl` calls and a trip round the reactor for
    a half-close that has nothing to wait for. Here the shutdown happens
    the way that turn would do it (`_closeWriteConnection`, which tells an
    `IHalfCloseableProtocol` that its write side is done); anything else
    takes the ordinary path.
    """
    if _idle_socket(transport) is None or transport.producer is not None:
        transport.loseWriteConnection()
        return
    transport._writeDisconnected = True
    transport._closeWriteConnection()
