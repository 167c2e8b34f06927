"""Process-wide logging: level, plain or JSON lines, correlation ids, secret redaction.

Every message has its control characters escaped (``\\n`` as ``\\x0a``): a ``%0a`` in a
request path must not write a forged line into a plain-text log. Tracebacks keep their lines.

``configure_logging(settings)`` runs once per process from its start-up hook (the Bento
services' ``__init__``, Celery's ``setup_logging`` signal). It decorates the handlers that
exist (BentoML's, in a Bento worker) or adds one to stderr (a Celery worker), so every
record gets ``job_id``/``request_id`` from ``log_context`` and has secrets masked. In a
worker it also keeps periodic housekeeping quiet unless it does something.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO
from urllib.parse import urlsplit

from visionqueue.core.settings import Settings

MASK = "***"
# Shorter values would mask ordinary words; no real key is this short.
MIN_SECRET_LENGTH = 4
# Request loggers at INFO: the clients log every URL (presigned S3 URLs, webhook targets with
# tokens); uvicorn's access log repeats BentoML's.
NOISY_LOGGERS = (
    "httpx",
    "httpcore",
    "urllib3",
    "botocore",
    "python_multipart",
    "multipart",
    "uvicorn.access",
)
PLAIN_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
CORRELATION_FIELDS = ("job_id", "request_id")
# Where Celery logs, at INFO, every task it sends on schedule, receives and finishes.
TASK_LIFECYCLE_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")
HANDLER_NAME = "visionqueue"

_job_id: ContextVar[str | None] = ContextVar("vq_log_job_id", default=None)
_request_id: ContextVar[str | None] = ContextVar("vq_log_request_id", default=None)

_PATTERNS = (
    # Authorization headers in any spelling: "Authorization: Bearer x", {'authorization': 'x'}
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(\w+\s+)?[^\s'\",;}]+"), rf"\1\2{MASK}"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",;}]+"), rf"\1{MASK}"),
    # user:password@ in URLs (database, broker)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), rf"\1{MASK}@"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), f"whsec_{MASK}"),
)


# C0 controls but tab, DEL, C1 controls, and the Unicode line and paragraph separators
_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control_characters(text: str) -> str:
    """Write each control character (a newline too) as a visible ``\\xNN``/``\\uNNNN`` escape."""
    return _CONTROL_CHARACTERS.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text
    )


@contextlib.contextmanager
def log_context(*, job_id: str | None = None, request_id: str | None = None) -> Iterator[None]:
    """Tag every record logged in this block (this thread or task) with these ids."""
    tokens = []
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class CorrelationFilter(logging.Filter):
    """Copy the current ``job_id`` / ``request_id`` onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _job_id.get()
        if job_id is not None and getattr(record, "job_id", None) is None:
            record.job_id = job_id
        request_id = _request_id.get()
        bento_span = getattr(record, "request_id", None)
        if request_id is not None:
            record.request_id = request_id
        elif isinstance(bento_span, int):
            # BentoML's trace filter sets its span id; render it as X-BentoML-Request-ID does
            record.request_id = format(bento_span, "016x")
        return True


class RedactionFilter(logging.Filter):
    """Mask secret values and credential patterns in the message and traceback; escape the
    message's control characters (one record, one line)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, values))) if values else None

    def redact(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-args: keep the template, drop the arguments
            message = str(record.msg)
        record.msg, record.args = escape_control_characters(self.redact(message)), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class HousekeepingFilter(logging.Filter):
    """Drop Celery's INFO lines (sent, received, succeeded) about the named periodic tasks.

    A sweep every few seconds would otherwise log three lines each time; the tasks log
    themselves when they change something, and their failures (WARNING and up) still show.
    """

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        self.task_names = frozenset(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        args = record.args
        # celery.app.trace / .strategy pass one dict with "name"; celery.beat (name, task)
        values = [args.get("name")] if isinstance(args, Mapping) else list(args or ())
        return not any(isinstance(v, str) and v in self.task_names for v in values)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, correlation ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CORRELATION_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = str(value)
        component = getattr(record, "component", None)  # BentoML's "[service:name:worker]"
        if component:
            entry["component"] = str(component).strip("[]")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """The plain format, with ``job_id=`` / ``request_id=`` appended when a record has them."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [
            f"{key}={value}"
            for key in CORRELATION_FIELDS
            if (value := getattr(record, key, None)) is not None
        ]
        if not ids:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} {' '.join(ids)}{newline}{rest}"


def secret_values(settings: Settings) -> list[str]:
    """Return every secret the settings hold, as plain strings."""
    values = [key.get_secret_value() for key in settings.server.api_keys]
    values.append(settings.server.signing_key.get_secret_value())
    values.append(settings.s3.secret_key.get_secret_value())
    for secret in settings.webhook.secrets:
        value = secret.get_secret_value()
        values += [value, value.removeprefix("whsec_")]
    for url in (settings.database.url, settings.broker.url):
        with contextlib.suppress(ValueError):
            if password := urlsplit(url).password:
                values.append(password)
    return values


def _all_handlers() -> list[logging.Handler]:
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    seen: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            seen.setdefault(id(handler), handler)
    return list(seen.values())


def _replace_filter(target: logging.Filterer, new: logging.Filter) -> None:
    for old in [f for f in target.filters if type(f) is type(new)]:
        target.removeFilter(old)
    target.addFilter(new)


def configure_logging(
    settings: Settings, *, stream: TextIO | None = None, housekeeping_tasks: Iterable[str] = ()
) -> None:
    """Apply ``VQ_LOG_LEVEL`` / ``VQ_LOG_JSON``, correlation ids and redaction to every handler.

    Existing handlers (BentoML's) keep their format unless JSON is asked for; when the root
    logger has none, or ``stream`` is given, a handler writing there (default stderr) is added.
    Celery's routine INFO lines about ``housekeeping_tasks`` (periodic task names) are dropped.
    """
    obs = settings.observability
    level = logging.getLevelNamesMapping().get(obs.log_level.strip().upper())
    if level is None:
        raise ValueError(f"VQ_LOG_LEVEL={obs.log_level!r} is not a logging level")
    root = logging.getLogger()
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    formatter: logging.Formatter = JsonFormatter() if obs.log_json else PlainFormatter(PLAIN_FORMAT)
    own = next((h for h in root.handlers if h.get_name() == HANDLER_NAME), None)
    if own is None and (stream is not None or not root.handlers):
        own = logging.StreamHandler(stream or sys.stderr)
        own.set_name(HANDLER_NAME)
        root.addHandler(own)
    elif isinstance(own, logging.StreamHandler) and stream is not None:
        own.setStream(stream)
    if own is not None:
        own.setFormatter(formatter)
    redaction = RedactionFilter(secret_values(settings))
    for handler in _all_handlers():
        # order matters: ids first, then redaction sees the final message
        _replace_filter(handler, CorrelationFilter())
        _replace_filter(handler, redaction)
        if obs.log_json:
            handler.setFormatter(formatter)
    quiet = HousekeepingFilter(housekeeping_tasks)
    for name in TASK_LIFECYCLE_LOGGERS:
        _replace_filter(logging.getLogger(name), quiet)
