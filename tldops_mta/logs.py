"""Structured JSON logs, one line per event, on stdout (journald keeps them).

Every SMTP connection gets a session id bound into its logger so all of its lines tie
together. Library loggers (aiosmtpd logs every command line, addresses included) are held at
WARNING so personal data never reaches the info level through them.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

_SHARED: list[Any] = [
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def setup(level: str = "info", stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # A process (stream None: the daemon's, the worker's) is configured once, at its
        # start: each logger is built once, not anew at every line. The CLI and the fuzzer
        # pass a stream and may configure again, so nothing is kept for them.
        cache_logger_on_first_use=stream is None,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # aiosmtpd logs peers, envelope addresses and every command at INFO.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, LEVELS[level]))


def get(name: str = "tldops") -> Any:
    return structlog.get_logger(name)


def redact_address(addr: str) -> str:
    """Keep the domain and the first letter: enough to tell mail apart, not to contact anyone."""
    local, at, domain = addr.rpartition("@")
    if not at:
        return addr[:1] + "***" if addr else ""
    return f"{local[:1]}***@{domain}"


def redact_in(text: str, address: str) -> str:
    """``text`` with ``address`` in it redacted: for what another server or a library wrote
    (an SMTP refusal names the recipient, an OSError the file named after them)."""
    if not address:
        return text
    return re.sub(re.escape(address), redact_address(address), text, flags=re.IGNORECASE)
