"""`tenantflow serve`: the scheduler and the HTTP API in one process, under uvicorn.

Logs are one structured line per event (JSON, or key=value with `--log-format text`),
including uvicorn's access log. SIGTERM/SIGINT: uvicorn stops accepting connections and
finishes open requests, then the lifespan closes the engine, which lets running
invocations finish within its grace period and leaves the rest to replay on restart.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any, Literal, Optional

LogFormat = Literal["json", "text"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName", "color_message"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ts": dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
    }
    args = record.args
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        client, method, path, http_version, status = args
        data.update(msg="request", client=client, method=method, path=path, status=status)
    else:
        data["msg"] = record.getMessage()
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            data[key] = value
    if record.exc_info:
        data["exc"] = logging.Formatter().formatException(record.exc_info)
    return data


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = str(value)
            if not text or any(c in text for c in ' "=\n\t'):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


def configure_logging(fmt: LogFormat = "json", level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def serve(
    db: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 4,
    processes: int = 0,
    log_format: LogFormat = "json",
    log_level: str = "info",
    artifact_dir: Optional[Path] = None,
    public_metrics: bool = False,
    grace_seconds: float = 10.0,
    retention_days: Optional[float] = None,
) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    import uvicorn

    from .server import create_standalone_app

    configure_logging(log_format, log_level)
    log = logging.getLogger("tenantflow.serve")
    app = create_standalone_app(
        db, workers=workers, processes=processes, artifact_dir=artifact_dir, public_metrics=public_metrics, retention_days=retention_days,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=max(1, int(grace_seconds)),
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM/SIGINT (graceful shutdown), then re-raises the signal into the
    # handlers that were there before it: these make a graceful stop exit with status 0.
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("starting", extra={"db": str(db), "host": host, "port": port, "workers": workers, "processes": processes, "pid": os.getpid()})
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        log.error("did not start (see the errors above)")
        return 1
    log.info("stopped", extra={"signal": signal.Signals(received[0]).name if received else None})
    return 0
