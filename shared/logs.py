"""The API's and the workers' log lines: plain text (the default, for a terminal) or JSON lines
(``LODESTAR_LOG_FORMAT=json``, python-json-logger's formatter), with ``task_id``, ``tenant``, ``worker`` and ``attempt``
on every line (null where no task is concerned; ``worker`` is the process, "host:pid", when nothing else is bound).

The fields come from a context variable: the worker binds them around a task (``worker/tasks.py``), the API around
a request (``api/__init__.py``: the task id of the path, the tenant once the key is checked). gevent gives each
greenlet its own context, as threads have theirs.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FIELDS = ("task_id", "tenant", "worker", "attempt")
"""The context fields on every line."""
FORMATS = ("text", "json")
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s " + " ".join(f"%({f})s" for f in FIELDS)
"""The keys of a JSON line besides ``exc_info`` and ``extra`` ones: ``ts``, ``level``, ``logger``, ``message``, then
:data:`FIELDS`."""

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("lodestar_log_context", default={})  # noqa: B039 (never mutated)
_host = socket.gethostname()


def bind(**fields: Any) -> None:
    """Add ``fields`` (of :data:`FIELDS`) to the current context's lines, until the enclosing :func:`bound` (or
    :func:`clear`) ends."""
    _context.set({**_context.get(), **fields})


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Lines logged inside the block carry ``fields`` (and whatever :func:`bind` adds inside it)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict[str, Any]:
    """A copy of the fields bound in the current context (those of :data:`FIELDS` and any other)."""
    return dict(_context.get())


def clear() -> None:
    """Forget every bound field in the current context (the end of an API request)."""
    _context.set({})


class ContextFilter(logging.Filter):
    """Puts :data:`FIELDS` on every record that passes (bound values, else None; ``worker``: "host:pid"). Celery's
    own lines about a ``lodestar.run_task`` message (received, succeeded...) get its id, the task's."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, ctx.get(name))
        data = getattr(record, "data", None)  # Celery's "received" / "succeeded" lines of a run message
        if record.task_id is None and isinstance(data, dict) and data.get("name") == "lodestar.run_task":  # type: ignore[attr-defined]
            record.task_id = data.get("id")
        if record.worker is None:  # type: ignore[attr-defined]
            record.worker = f"{_host}:{os.getpid()}"
        return True


def check_format(log_format: str) -> str:
    """The format, checked.

    Raises:
        ValueError: not one of :data:`FORMATS` (the message names ``LODESTAR_LOG_FORMAT``).
    """
    if log_format not in FORMATS:
        raise ValueError(f"LODESTAR_LOG_FORMAT: expected text or json, got {log_format!r}")
    return log_format


def json_formatter() -> logging.Formatter:
    """One JSON object per line: ``ts`` (ISO 8601), ``level``, ``logger``, ``message``, the :data:`FIELDS`."""
    return JsonFormatter(JSON_FORMAT, rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
                         json_ensure_ascii=False)


def apply(log_format: str, handlers: Iterable[logging.Handler]) -> None:
    """Give ``handlers`` the context filter, and in ``json`` format the JSON formatter (text: their own format).

    Raises:
        ValueError: an unknown format.
    """
    check_format(log_format)
    for handler in handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if log_format == "json":
            handler.setFormatter(json_formatter())


def configure(log_format: str, loggers: Iterable[str] = ()) -> None:
    """Set up this process's lines: the root logger's handlers (a stderr handler at INFO is added in ``json``
    format when it has none) and those of ``loggers`` (e.g. gunicorn's ``gunicorn.error``).

    Raises:
        ValueError: an unknown format.
    """
    root = logging.getLogger()
    if check_format(log_format) == "json" and not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
        if root.level == logging.WARNING or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    handlers = list(root.handlers)
    for name in loggers:
        handlers += logging.getLogger(name).handlers
    apply(log_format, handlers)
