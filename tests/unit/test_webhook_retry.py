"""Retry planning (schedule, jitter, Retry-After) and the exact event bytes that are signed."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobs.webhooks.delivery import (
    MAX_RETRY_AFTER_S,
    build_event,
    next_delay,
    parse_retry_after,
)
from visionqueue.core.settings import WebhookSettings

SCHEDULE = [5.0, 300.0, 1800.0]


class FixedUniform:
    """Pick the low end, the high end or the middle of every jitter range."""

    def __init__(self, where: float) -> None:
        self.where = where

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.where


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_delay_follows_the_schedule_within_twenty_percent(attempt: int) -> None:
    base = SCHEDULE[attempt - 1]
    assert next_delay(attempt, SCHEDULE, rng=FixedUniform(0.0)) == pytest.approx(base * 0.8)
    assert next_delay(attempt, SCHEDULE, rng=FixedUniform(1.0)) == pytest.approx(base * 1.2)
    rng = random.Random(attempt)
    delays = [next_delay(attempt, SCHEDULE, rng=rng) for _ in range(200)]
    assert all(d is not None and base * 0.8 <= d <= base * 1.2 for d in delays)
    assert len(set(delays)) > 100  # jitter actually spreads retries


def test_schedule_exhausted_means_no_more_attempts() -> None:
    assert next_delay(3, SCHEDULE) is not None
    assert next_delay(4, SCHEDULE) is None
    assert next_delay(4, SCHEDULE, retry_after=10) is None
    assert next_delay(1, []) is None


def test_attempts_are_counted_from_one() -> None:
    with pytest.raises(ValueError):
        next_delay(0, SCHEDULE)


def test_retry_after_longer_than_the_schedule_wins() -> None:
    assert next_delay(1, SCHEDULE, retry_after=120, rng=FixedUniform(1.0)) == 120


def test_retry_after_shorter_than_the_schedule_is_ignored() -> None:
    assert next_delay(2, SCHEDULE, retry_after=7, rng=FixedUniform(0.5)) == pytest.approx(300)


def test_retry_after_is_capped_at_a_day() -> None:
    delay = next_delay(1, SCHEDULE, retry_after=30 * 86_400, rng=FixedUniform(0.5))
    assert delay == MAX_RETRY_AFTER_S == 86_400


def test_default_schedule_spans_about_three_days() -> None:
    schedule = WebhookSettings.model_validate({}).retry_schedule  # defaults, not the env
    assert schedule[:2] == [5, 300]
    assert 2.5 * 86_400 <= sum(schedule) <= 3.5 * 86_400


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("99999999999999999999", MAX_RETRY_AFTER_S),
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),  # in the past: retry now
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_header_parsing(header: str | None, seconds: float | None) -> None:
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == seconds


def test_event_bytes_are_compact_json_with_the_documented_fields() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    body = build_event("job.completed", "evt_1", {"job_id": "j-1", "top1": "tabby"}, now)
    assert isinstance(body, bytes)
    assert b" " not in body
    assert json.loads(body) == {
        "type": "job.completed",
        "id": "evt_1",
        "timestamp": "2026-01-02T01:04:05.678Z",
        "data": {"job_id": "j-1", "top1": "tabby"},
    }
    assert body == build_event("job.completed", "evt_1", {"top1": "tabby", "job_id": "j-1"}, now)


def test_event_keeps_unicode_as_plain_ascii_json() -> None:
    body = build_event("job.failed", "evt_2", {"error": "café ☕"}, datetime.now(UTC))
    assert body.isascii()
    assert json.loads(body)["data"]["error"] == "café ☕"


def test_event_refuses_unknown_types_naive_times_and_nan() -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="event type"):
        build_event("job.exploded", "evt", {}, now)
    with pytest.raises(ValueError, match="timezone"):
        build_event("job.failed", "evt", {}, datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        build_event("job.completed", "evt", {"score": float("nan")}, now)
