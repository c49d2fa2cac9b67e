"""Logging: one structlog pipeline for embedhost's own logs, uvicorn's and the workers'.

:func:`setup_logging` routes every stdlib logger (ours, uvicorn's error and access loggers,
warnings) through one :class:`structlog.stdlib.ProcessorFormatter`: JSON lines
(``server.log_format: json``, for production) or a readable console rendering. Context bound
with :func:`structlog.contextvars.bind_contextvars` (the request id, the trace id) is merged
into every line logged while a request is served, whichever library logs it.

The request line itself is written by ``api/observability.py``. No line carries an API key
or input text: requests are described by counts and lengths (texts only with
``logs.log_inputs``, a debugging option).

This module imports nothing from the package.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_current: dict[str, str] | None = None


def _uvicorn_access_fields(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    """uvicorn's access line, as fields: its record args are (client, method, path, http, status)."""
    args = event.pop("positional_args", None)
    record = event.get("_record")
    if (
        record is not None
        and record.name == "uvicorn.access"
        and isinstance(args, tuple)
        and len(args) == 5
    ):
        client, method, path, http_version, status = args
        event.update(
            client=client, method=method, path=path, http_version=http_version, status=status
        )
    return event


def _drop_color_message(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    # uvicorn passes a coloured duplicate of its message in ``extra``.
    event.pop("color_message", None)
    return event


def setup_logging(
    level: str = "info",
    fmt: str = "console",
    *,
    stream: TextIO | None = None,
    process: str = "api",
    instance: str | None = None,
    destination: str = "stderr",
) -> None:
    """Configure structlog and the stdlib root logger for this process.

    ``process`` (``api`` or ``worker``) is added to every line so that one stream holding
    both kinds of processes can be told apart; ``instance`` (``server.instance_id``) too, so
    that the logs of several replicas gathered in one place name the replica of each line.
    """
    global _current
    _current = {"level": level, "format": fmt, "destination": destination}
    if stream is None and destination == "stdout":
        # server.log_stream: stdout, where container runtimes and twelve-factor
        # collectors expect the log stream (the default stays stderr, beside CLI output).
        stream = sys.stdout
    if instance:
        _current["instance"] = instance
    common: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if process != "api":
        common.append(_add_process(process))
    if instance:
        common.append(_add_field("instance", instance))
    # Lines from stdlib loggers (ours, uvicorn's, libraries').
    foreign: list[Processor] = [
        *common,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        _uvicorn_access_fields,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        final: list[Processor] = [structlog.processors.format_exc_info, renderer]
    else:
        out = stream or sys.stderr
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        final = [renderer]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign,
        pass_foreign_args=True,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *common,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _add_process(kind: str) -> Processor:
    def add(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        event.setdefault("process", kind)
        return event

    return add


def _add_field(key: str, value: str) -> Processor:
    def add(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        event.setdefault(key, value)
        return event

    return add


def worker_log_config() -> dict[str, str] | None:
    """The level and format this process was set up with, for the worker processes it spawns."""
    return dict(_current) if _current is not None else None
