"""Engines per process and URL, SQLite settings, sessions and error mapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from persistence.db import db_errors, dispose_engines, get_engine, session_scope
from visionqueue.core.errors import DatabaseUnavailable


def test_one_engine_per_url(tmp_path: Path) -> None:
    first, second = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    try:
        assert get_engine(first) is get_engine(first)
        assert get_engine(first) is not get_engine(second)
    finally:
        dispose_engines(first)
        dispose_engines(second)


def test_forked_child_builds_its_own_engine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fork.db"
    parent_engine = get_engine(url)
    try:
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                child_engine = get_engine(url)
                with child_engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                code = 0 if child_engine is not parent_engine else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert get_engine(url) is parent_engine
    finally:
        dispose_engines(url)


def test_sqlite_is_set_up_for_concurrent_writers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/vq.db"
    try:
        with get_engine(url).connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 1000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        dispose_engines(url)


def test_session_scope_commits_or_rolls_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/scope.db"
    engine = get_engine(url)
    try:
        with session_scope(engine) as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
            session.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(RuntimeError), session_scope(engine) as session:
            session.execute(text("INSERT INTO t VALUES (2)"))
            raise RuntimeError("boom")
        with session_scope(engine) as session:
            assert session.execute(text("SELECT x FROM t")).scalars().all() == [1]
    finally:
        dispose_engines(url)


def test_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    url = f"sqlite:///{tmp_path}/file/../file/vq.db"
    try:
        with pytest.raises(DatabaseUnavailable) as caught, session_scope(get_engine(url)) as s:
            s.execute(text("SELECT 1"))
        assert "file" not in caught.value.message
    finally:
        dispose_engines(url)


def test_db_errors_leaves_other_errors_alone() -> None:
    with pytest.raises(KeyError), db_errors():
        raise KeyError("x")


def test_wal_switch_waits_out_a_concurrent_writer() -> None:
    import sqlite3

    from persistence.db import _enable_wal

    class LockedTwice:
        calls = 0

        def execute(self, sql: str) -> None:
            self.calls += 1
            if self.calls <= 2:
                raise sqlite3.OperationalError("database is locked")

    cursor = LockedTwice()
    _enable_wal(cursor)
    assert cursor.calls == 3


def test_the_sqlite_files_are_readable_by_our_user_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/private/vq.db"
    old = os.umask(0o022)  # the usual umask: files would be 0644
    try:
        with get_engine(url).begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "private").iterdir()}
        assert modes and set(modes.values()) == {0o600}, modes  # vq.db, -wal, -shm
    finally:
        os.umask(old)
        dispose_engines(url)
