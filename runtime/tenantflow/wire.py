"""Messages between the engine and its runner processes (`runners.py`, `runner.py`).

Each message is a pickled object behind a 4-byte length, on a Unix stream socket. Both
ends are this package's own code: the engine and the runners it spawned (tenant code
runs inside Wasm in a runner and cannot reach the socket), so pickle is safe here.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from typing import Any

_HEADER = struct.Struct("<I")
MAX_MESSAGE_BYTES = 1 << 30  # the largest thing sent is component bytes (~20 MB)
BUFFER_BYTES = 4 * 1024 * 1024  # per socket direction: replies may queue while a guest runs
_CHUNK = 1 << 16


class ChannelClosed(EOFError):
    """The other end went away (its process exited or closed the socket)."""


class Channel:
    """One end of a socket pair. `send` is thread-safe; reading is for one thread only."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._buffer = bytearray()
        self._start = 0  # where the next unread message begins in `_buffer`
        self._eof = False
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
            except OSError:  # capped by the system: the default works, just queues less
                pass

    @classmethod
    def pair(cls) -> tuple["Channel", socket.socket]:
        """A channel for this process and the other end's socket (to hand to a child)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(ours), theirs

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        header = _HEADER.pack(len(data))
        with self._send_lock:
            if len(data) < _CHUNK:
                self.sock.sendall(header + data)
            else:  # no copy of a large payload
                self.sock.sendall(header)
                self.sock.sendall(data)

    def recv(self) -> Any:
        """The next message, waiting for it."""
        while True:
            found, message = self._pop()
            if found:
                return message
            if self._eof:
                raise ChannelClosed()
            self._fill(self.sock.recv(_CHUNK))

    def recv_ready(self) -> list[Any]:
        """The messages that have arrived, without waiting (none if none). Raises
        ChannelClosed once the other end is gone and every message before was returned."""
        try:
            while not self._eof:
                chunk = self.sock.recv(_CHUNK, socket.MSG_DONTWAIT)
                self._fill(chunk)
                if len(chunk) < _CHUNK:
                    break
        except BlockingIOError:
            pass
        messages = []
        while True:
            found, message = self._pop()
            if not found:
                break
            messages.append(message)
        if not messages and self._eof:
            raise ChannelClosed()
        return messages

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _fill(self, chunk: bytes) -> None:
        if not chunk:
            self._eof = True
            return
        if self._start and self._start == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        self._buffer += chunk

    def _pop(self) -> tuple[bool, Any]:
        available = len(self._buffer) - self._start
        if available < _HEADER.size:
            return False, None
        (size,) = _HEADER.unpack_from(self._buffer, self._start)
        if size > MAX_MESSAGE_BYTES:
            raise ValueError(f"message of {size} bytes on a tenantflow channel: the stream is corrupt")
        end = self._start + _HEADER.size + size
        if len(self._buffer) < end:
            return False, None
        message = pickle.loads(memoryview(self._buffer)[self._start + _HEADER.size : end])
        self._start = end
        if self._start > _CHUNK and self._start * 2 > len(self._buffer):  # drop what was read
            del self._buffer[: self._start]
            self._start = 0
        return True, message
