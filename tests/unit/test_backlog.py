"""Back-pressure: a submission never takes the unfinished backlog past VQ_MAX_BACKLOG."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

from persistence import jobs_repo
from persistence.db import session_scope
from tests.support.rows import create_job_row, migrated_sqlite
from visionqueue.api.submit import check_backlog
from visionqueue.core.errors import TooManyRequests


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with migrated_sqlite(tmp_path) as engine:
        yield engine


def _resources(engine: Engine, limit: int) -> Any:
    settings = SimpleNamespace(server=SimpleNamespace(max_backlog=limit))
    return SimpleNamespace(settings=settings, engine=engine)


def test_a_batch_that_would_overshoot_the_cap_is_refused(engine: Engine) -> None:
    res = _resources(engine, limit=3)
    create_job_row(res.engine)
    finished = create_job_row(res.engine)
    with session_scope(res.engine) as session:  # finished jobs do not count
        assert jobs_repo.claim_job(session, finished) is not None
        assert jobs_repo.fail_job(session, finished, "image_missing", "gone")
    check_backlog(res, 2)  # 1 + 2 == 3: fits exactly
    with pytest.raises(TooManyRequests) as refused:
        check_backlog(res, 3)  # 1 + 3 > 3: used to be accepted, overshooting by 1
    assert refused.value.code == "backlog_full" and refused.value.status == 429


def test_no_cap_means_no_check(engine: Engine) -> None:
    res = _resources(engine, limit=0)
    for _ in range(3):
        create_job_row(res.engine)
    check_backlog(res, 32)
