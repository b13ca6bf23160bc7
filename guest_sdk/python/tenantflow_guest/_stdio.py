"""stdout/stderr that never lose data.

Inside a component `sys.stdout` is a TextIOWrapper straight over an unbuffered FileIO,
and the host's output stream accepts a few KiB per write. TextIOWrapper ignores short
writes of a raw stream, so the rest of a long print() silently vanished. The streams
installed here retry until every byte is written (the host bounds what it keeps).
"""

from __future__ import annotations

import io
import sys
from typing import Any


class _WriteAll(io.RawIOBase):
    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self._raw.fileno())

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = self._raw.write(view[done:])
            if not n:  # the stream is closed or refuses more: report what went out
                break
            done += n
        return done


def install() -> None:
    """Replace sys.stdout/sys.stderr (at build time, so the snapshot keeps them)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        raw = getattr(stream, "buffer", None)
        if raw is None or isinstance(raw, _WriteAll):
            continue
        wrapped = io.TextIOWrapper(
            _WriteAll(raw),  # type: ignore[arg-type]
            encoding="utf-8",
            errors="backslashreplace",
            write_through=True,
        )
        setattr(sys, name, wrapped)
