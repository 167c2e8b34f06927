"""Logging: JSON line shape, correlation ids, levels, and secrets that never reach the output."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from visionqueue.core.logging_setup import (
    HANDLER_NAME,
    MASK,
    NOISY_LOGGERS,
    TASK_LIFECYCLE_LOGGERS,
    configure_logging,
    log_context,
)
from visionqueue.core.settings import Settings

API_KEY = "vq-api-key-4f2a9c"
SIGNING_KEY = "signing-key-8e1d77"
S3_SECRET = "s3-secret-b5c3a1"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DB_PASSWORD = "db-pass-71c0ee"
SECRETS = (API_KEY, SIGNING_KEY, S3_SECRET, WEBHOOK_SECRET, DB_PASSWORD, "MfKQ9r8GKYqrTwjUPD8IL")


def handlers_everywhere() -> list[logging.Handler]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers]


def own_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME]


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Undo what configure_logging does to this process: handler, filters, formats, levels."""
    root = logging.getLogger()
    level = root.level
    before = {id(h): (h, h.filters[:], h.formatter) for h in handlers_everywhere()}
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    celery_filters = {name: logging.getLogger(name).filters[:] for name in TASK_LIFECYCLE_LOGGERS}
    try:
        yield
    finally:
        for handler in own_handlers():
            root.removeHandler(handler)
        for handler, filters, formatter in before.values():
            handler.filters = filters
            handler.setFormatter(formatter)
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)
        for name, filters in celery_filters.items():
            logging.getLogger(name).filters = filters


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_API_KEYS", f"other-key-000,{API_KEY}")
    monkeypatch.setenv("VQ_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setenv("VQ_S3_SECRET_KEY", S3_SECRET)
    monkeypatch.setenv("VQ_WEBHOOK_SECRETS", WEBHOOK_SECRET)
    monkeypatch.setenv("VQ_DATABASE_URL", f"postgresql+psycopg://vq:{DB_PASSWORD}@db:5432/vq")


def configured(
    monkeypatch: pytest.MonkeyPatch, *, json_lines: bool, level: str = "INFO"
) -> io.StringIO:
    monkeypatch.setenv("VQ_LOG_JSON", str(json_lines).lower())
    monkeypatch.setenv("VQ_LOG_LEVEL", level)
    out = io.StringIO()
    configure_logging(Settings(), stream=out)
    return out


def json_lines(out: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_line_has_time_level_logger_message(monkeypatch: pytest.MonkeyPatch) -> None:
    out = configured(monkeypatch, json_lines=True)
    logging.getLogger("vq.test").warning("queue %s is %d deep", "jobs", 3)
    [line] = json_lines(out)
    assert set(line) == {"time", "level", "logger", "message"}
    assert line["level"] == "WARNING"
    assert line["logger"] == "vq.test"
    assert line["message"] == "queue jobs is 3 deep"
    assert datetime.fromisoformat(line["time"]).utcoffset() is not None


def test_json_line_carries_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    out = configured(monkeypatch, json_lines=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("vq.test").exception("failed")
    [line] = json_lines(out)
    assert line["message"] == "failed"
    assert "RuntimeError: boom" in line["exc_info"]


def test_correlation_ids_inside_log_context_only(monkeypatch: pytest.MonkeyPatch) -> None:
    out = configured(monkeypatch, json_lines=True)
    log = logging.getLogger("vq.test")
    with log_context(job_id="job-1"):
        log.info("outer")
        with log_context(request_id="req-9"):
            log.info("inner")
        log.info("outer again")
    log.info("outside")
    lines = json_lines(out)
    assert [(x.get("job_id"), x.get("request_id")) for x in lines] == [
        ("job-1", None),
        ("job-1", "req-9"),
        ("job-1", None),
        (None, None),
    ]


def test_concurrent_tasks_keep_their_own_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    out = configured(monkeypatch, json_lines=True)
    log = logging.getLogger("vq.test")

    async def job(job_id: str) -> None:
        with log_context(job_id=job_id):
            for step in range(3):
                log.info("%s step %d", job_id, step)
                await asyncio.sleep(0)

    async def both() -> None:
        await asyncio.gather(job("a"), job("b"))

    asyncio.run(both())
    lines = json_lines(out)
    assert len(lines) == 6
    assert all(x["message"].startswith(x["job_id"]) for x in lines)


def test_bentoml_span_id_becomes_the_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    out = configured(monkeypatch, json_lines=True)
    logging.getLogger("vq.test").info("served", extra={"request_id": 0xABC})
    assert json_lines(out)[0]["request_id"] == "0000000000000abc"


def test_plain_lines_append_the_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    out = configured(monkeypatch, json_lines=False)
    with log_context(job_id="job-7"):
        logging.getLogger("vq.test").info("classified")
    line = out.getvalue().strip()
    assert line.endswith("INFO [vq.test] classified job_id=job-7")


def test_level_comes_from_vq_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    out = configured(monkeypatch, json_lines=True, level="warning")
    log = logging.getLogger("vq.test")
    log.info("hidden")
    log.warning("shown")
    assert [x["message"] for x in json_lines(out)] == ["shown"]


def test_unknown_level_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="VQ_LOG_LEVEL"):
        configured(monkeypatch, json_lines=True, level="LOUD")


def test_request_loggers_stay_quiet_at_info(monkeypatch: pytest.MonkeyPatch) -> None:
    out = configured(monkeypatch, json_lines=True)
    logging.getLogger("httpx").info("HTTP Request: GET https://s3/img?X-Amz-Signature=abc")
    assert out.getvalue() == ""


def test_configuring_twice_adds_no_second_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    configured(monkeypatch, json_lines=False)
    out = configured(monkeypatch, json_lines=True)
    logging.getLogger("vq.test").info("once")
    [own] = own_handlers()
    assert len(own.filters) == 2
    assert [x["message"] for x in json_lines(out)] == ["once"]


def test_existing_handlers_get_the_format_and_filters(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A Bento worker's root handler (BentoML's) is reused, not duplicated."""
    theirs = io.StringIO()
    handler = logging.StreamHandler(theirs)
    logging.getLogger().addHandler(handler)
    request.addfinalizer(lambda: logging.getLogger().removeHandler(handler))
    monkeypatch.setenv("VQ_LOG_JSON", "true")
    monkeypatch.setenv("VQ_SIGNING_KEY", SIGNING_KEY)
    configure_logging(Settings())
    logging.getLogger("vq.test").info("key is %s", SIGNING_KEY)
    assert handler in logging.getLogger().handlers
    assert not own_handlers()
    assert json.loads(theirs.getvalue())["message"] == f"key is {MASK}"


@pytest.mark.usefixtures("secret_env")
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "plain"])
def test_secrets_never_reach_the_output(monkeypatch: pytest.MonkeyPatch, as_json: bool) -> None:
    out = configured(monkeypatch, json_lines=as_json)
    log = logging.getLogger("vq.test")
    log.info("keys: %s %s", API_KEY, SIGNING_KEY)
    log.info("s3 secret=" + S3_SECRET)  # pre-formatted messages are masked too
    log.info("headers %s", {"Authorization": f"Bearer {API_KEY}", "webhook-id": "evt_1"})
    log.info("Authorization: Bearer some-unknown-token-123")
    log.info("signing with %s", WEBHOOK_SECRET)
    log.info("connect postgresql://vq:%s@db/vq and redis://:hunter22@cache:6379/0", DB_PASSWORD)
    log.info("bad args %s %s", API_KEY)  # a formatting error must not leak the args either
    try:
        raise ConnectionError(f"cannot reach bucket with key {S3_SECRET}")
    except ConnectionError:
        log.exception("upload failed")
    log.warning("stack of %s", SIGNING_KEY, stack_info=True)
    text = out.getvalue()
    for secret in (*SECRETS, "some-unknown-token-123", "hunter22"):
        assert secret not in text, secret
    assert text.count(MASK) >= 8
    assert "Bearer ***" in text
    assert "postgresql://vq:***@db/vq" in text
    assert "cannot reach bucket with key ***" in text


def test_short_values_are_not_treated_as_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_API_KEYS", "a,test-key-long")
    out = configured(monkeypatch, json_lines=True)
    logging.getLogger("vq.test").info("a cat and test-key-long")
    assert json_lines(out)[0]["message"] == f"a cat and {MASK}"


def test_housekeeping_tasks_log_nothing_routine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery's sent/received/succeeded lines for a periodic sweep go; a job's stay."""
    from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

    monkeypatch.setenv("VQ_LOG_JSON", "true")
    out = io.StringIO()
    configure_logging(Settings(), stream=out, housekeeping_tasks=["vq.sweep"])
    beat = logging.getLogger("celery.beat")
    received = logging.getLogger("celery.worker.strategy")
    trace = logging.getLogger("celery.app.trace")
    for name in ("vq.sweep", "vq.classify_job"):
        beat.info("Scheduler: Sending due task %s (%s)", name.split(".")[1], name)
        received.info(LOG_RECEIVED, {"id": "t1", "name": name})
        trace.info(LOG_SUCCESS, {"id": "t1", "name": name, "return_value": 0, "runtime": 0.1})
    trace.error("Task %(name)s[%(id)s] raised unexpected: %(exc)s", {
        "id": "t2", "name": "vq.sweep", "exc": "OperationalError"
    })  # fmt: skip
    messages = [x["message"] for x in json_lines(out)]
    assert len(messages) == 4, messages
    assert all("classify_job" in m for m in messages[:3]), messages
    assert "vq.sweep[t2] raised unexpected" in messages[3]


@pytest.mark.parametrize("json_lines_on", [False, True])
def test_control_characters_in_a_message_cannot_forge_a_line(
    monkeypatch: pytest.MonkeyPatch, json_lines_on: bool
) -> None:
    out = configured(monkeypatch, json_lines=json_lines_on)
    path = "/nope\n2026-01-01 00:00:00 ERROR [vq.api] forged\r\x1b[2K\u2028x"
    logging.getLogger("vq.test").info("GET %s 404", path)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("vq.test").exception("failed on %s", "a\nb")
    lines = out.getvalue().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines), lines
    text = " ".join(e["message"] for e in json_lines(out)) if json_lines_on else out.getvalue()
    assert "/nope\\x0a2026-01-01" in text and "\\x0d\\x1b[2K\\u2028x" in text
    assert "a\\x0ab" in text
    if not json_lines_on:
        assert "Traceback (most recent call last):" in lines  # tracebacks keep their lines
