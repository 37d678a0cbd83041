"""The connection of an SSE response as a :class:`api.fanout.DirectWriter`: under gunicorn's gevent worker the
event hub writes a caught-up stream's next events to its socket itself (``docs/performance.md``, the events row).

gunicorn answers an HTTP/1.1 request whose response has no length with chunked transfer encoding and writes each
item the response yields straight to the socket (``gunicorn.http.wsgi.Response.write``), so a frame written here is
the same bytes gunicorn would have written: ``<length in hex>\\r\\n<frame>\\r\\n`` (HTTP/1.0: the frame as it is).
The hub writes only while the response generator waits, between two of its items; the last chunk (``0\\r\\n\\r\\n``)
is still gunicorn's.
"""

from __future__ import annotations

import _socket
from collections.abc import Callable
from typing import Any

from api.fanout import Delivery, DirectWriter


class SocketWriter:
    """Writes SSE frames to a client socket for the event hub.

    Args:
        sock: the gevent socket of the connection (``environ["gunicorn.socket"]``).
        raw: the non-blocking OS socket under it (gevent's ``_sock``; written by the hub: never blocks).
        frame: the SSE frame of a delivery (memoized per process by the route).
        chunked: wrap each frame as an HTTP/1.1 chunk.
        key: the rendering's name: the same for every stream whose ``frame`` gives the same bytes (the hub renders
            once per key and event); the chunked and the plain framing get different keys here.

    ``send`` is the OS socket's own ``send`` (no Python frame in the hub's loop): bytes taken, BlockingIOError when
    the buffer is full, another OSError when the connection is gone.
    """

    def __init__(self, sock: Any, raw: _socket.socket, frame: Callable[[Delivery], bytes], chunked: bool, key: str):
        self._sock, self._frame, self._chunked = sock, frame, chunked
        self.key = ("chunked " if chunked else "plain ") + key
        self.send: Callable[[bytes], int] = raw.send

    def frame(self, delivery: Delivery) -> bytes | None:
        """The frame, as a chunk when the response is chunked (the hub renders it once per process for all
        streams of the same key)."""
        data = self._frame(delivery)
        return b"%X\r\n%s\r\n" % (len(data), data) if self._chunked else data

    def send_all(self, data: bytes) -> None:
        """``sendall`` on the gevent socket (waits cooperatively). Raises OSError (connection gone)."""
        self._sock.sendall(data)


def socket_writer(environ: dict[str, Any], frame: Callable[[Delivery], bytes], key: str) -> DirectWriter | None:
    """A :class:`SocketWriter` for this request's connection (``key``: the name of ``frame``'s rendering, the same
    for every stream ``frame`` gives the same bytes; the framing is added to it) when it is served by
    gunicorn's gevent worker with a body (a GET), else None (the test client, the gthread worker: the route yields
    every frame itself)."""
    sock = environ.get("gunicorn.socket")
    raw = getattr(sock, "_sock", None)
    if sock is None or not isinstance(raw, _socket.socket) or environ.get("REQUEST_METHOD") != "GET":
        return None
    try:
        from gevent import monkey
    except ImportError:
        return None
    if not monkey.is_module_patched("socket") or raw.gettimeout() != 0.0:
        return None
    return SocketWriter(sock, raw, frame, environ.get("SERVER_PROTOCOL") == "HTTP/1.1", key)
