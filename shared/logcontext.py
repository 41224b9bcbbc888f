"""The correlation id of the send in progress, on every log record emitted while handling it.

A trigger opens ``correlation(...)`` around one send; the id lives in a contextvar (so it follows the
send into every task it spawns) and a log-record factory copies it onto each record as the
``correlation_id`` attribute, for every logger and handler alike: format it with ``%(correlation_id)s``,
and Application Insights' logging exporter carries it as a custom dimension.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_installed = False
# A caller-supplied id is echoed in a response header and in logs: keep it short and printable.
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def accept_correlation_id(candidate: str | None) -> str:
    """The caller's id when it is a sane token, else a new one."""
    if candidate and _ACCEPTABLE.match(candidate.strip()):
        return candidate.strip()
    return str(uuid.uuid4())


def install_log_context() -> None:
    """Make every log record carry ``correlation_id`` (idempotent; called by the triggers)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.correlation_id = _current.get() or "-"
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


@contextmanager
def correlation(correlation_id: str) -> Iterator[str]:
    install_log_context()
    token = _current.set(correlation_id)
    try:
        yield correlation_id
    finally:
        _current.reset(token)
