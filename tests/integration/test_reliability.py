"""Nothing accepted is lost: a worker SIGKILLed at each window, on both backends, repeatedly.

Each run submits jobs with a webhook, lets a worker die at an armed crash point
(``jobs.crash_points``) or by SIGKILL mid-batch, starts a clean worker, and checks every
accepted job ends completed/failed and every owed event ends delivered (or exhausted).
The counts are printed per backend and crash point (``-s``); docs/reliability.md records
them. ``RELIABILITY_RUNS`` sets the runs per crash point (default 1 in `make test`; the table in
docs/reliability.md was made with 3).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobs.crash_points import (
    AFTER_COMPLETION_COMMIT,
    AFTER_RETRY_PLANNED,
    BATCH_BEFORE_COMPLETION,
    SWEEP_BEFORE_PUBLISH,
)
from persistence.models import Job, WebhookOutbox, utcnow
from tests.integration.jobs_factories import (
    database,
    job_rows,
    small_jpegs,
    wait_all_final,
    wait_until,
)
from tests.integration.webhook_receiver import WebhookReceiver
from tests.support.launcher import BANNER, BANNER_END, launcher_env, start_launcher, started_by
from tests.support.servers import bento_server
from tests.support.stack import Stack, migrate, production_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = int(os.environ.get("RELIABILITY_RUNS", "1"))
JOBS_PER_RUN = 3
# Short leases, sweeps and retries keep each run to seconds; the recovery test uses defaults.
FAST = {
    "VQ_WORKER_LEASE_S": "5",
    "VQ_WORKER_SWEEP_INTERVAL_S": "2",
    "VQ_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1",
    "VQ_WEBHOOK_TIMEOUT_S": "2",
    "VQ_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
}
RESULTS: dict[tuple[str, str], Counter[str]] = {}


@pytest.fixture(scope="module")
def embedded(server_env: dict[str, str], session_dir: Path) -> Iterator[Stack]:
    """The embedded default: SQLite and the filesystem broker in one data folder."""
    log_dir = session_dir / "reliability-embedded"
    log_dir.mkdir(parents=True, exist_ok=True)
    data = log_dir / "data"
    env = {
        **server_env,
        "VQ_DATA_DIR": str(data),
        "VQ_WORKER_METRICS_PORT": "0",
        "VQ_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    }
    migrate(env)
    with bento_server(env, log_dir / "bento.log") as url:
        env["VQ_WORKER_CLASSIFIER_URL"] = url
        db_url = f"sqlite:///{(data / 'visionqueue.db').resolve()}"
        running = Stack(url, env, db_url, "filesystem://", "", log_dir)
        try:
            yield running
        finally:
            running.stop_workers()


@pytest.fixture(scope="module")
def server_stack(server_env: dict[str, str], session_dir: Path) -> Iterator[Stack]:
    """PostgreSQL, Redis and an S3 server of this module's own.

    Not the session's shared stack: its database and queues hold what earlier modules left
    (pending jobs, their taken messages, webhook events still retrying), which a worker
    started here would work through first, so a recovery time measured there says how much
    was left over, not how fast a lost job comes back.
    """
    with production_stack(server_env, session_dir / "reliability-stack") as running:
        yield running


@pytest.fixture(params=["embedded", "postgres+redis"])
def rig(request: pytest.FixtureRequest) -> Iterator[tuple[str, Stack]]:
    name = request.param
    stack: Stack = request.getfixturevalue("embedded" if name == "embedded" else "server_stack")
    yield name, stack
    stack.stop_workers()


def submit(stack: Stack, hook: str | None, n: int, seed: int) -> list[str]:
    ids = []
    for data in small_jpegs(n, seed=seed):
        form = {"webhook_url": hook} if hook else {}
        resp = httpx.post(
            f"{stack.url}/classify", files={"image": ("a.jpg", data)}, data=form, timeout=60
        )
        assert resp.status_code == 202, resp.text
        ids.append(str(resp.json()["task_id"]))
    return ids


def outbox_rows(stack: Stack, ids: list[str]) -> dict[str, WebhookOutbox]:
    with database(stack.database_url) as engine, Session(engine) as session:
        rows = session.scalars(select(WebhookOutbox).where(WebhookOutbox.job_id.in_(ids)))
        return {row.job_id: row for row in rows}


def wait_events_settled(stack: Stack, ids: list[str], timeout: float) -> dict[str, WebhookOutbox]:
    def settled() -> dict[str, WebhookOutbox] | None:
        rows = outbox_rows(stack, ids)
        done = len(rows) == len(ids) and all(r.status != "pending" for r in rows.values())
        return rows if done else None

    return wait_until(settled, timeout, "every owed webhook delivered or exhausted", interval=0.5)  # type: ignore[no-any-return]


def abandoned_job(stack: Stack, like: str, hook: str) -> str:
    """Insert a job (the image of ``like``) as a dead worker leaves it: lapsed lease, no message."""
    with database(stack.database_url) as engine, Session(engine) as session, session.begin():
        model = session.get(Job, like)
        assert model is not None
        job = Job(
            image_key=model.image_key,
            image_sha256=model.image_sha256,
            content_type=model.content_type,
            image_size=model.image_size,
            width=model.width,
            height=model.height,
            metadata_={},
            webhook_url=hook,
            owner=model.owner,
            status="processing",
            attempts=1,
            created_at=utcnow(),
            started_at=utcnow(),
            leased_by="gone",
            lease_until=utcnow() - timedelta(seconds=1),
        )
        session.add(job)
        session.flush()
        return job.id


def start_armed(stack: Stack, **kwargs: Any) -> Any:
    """Start a worker armed to crash; it may crash before it logs that it is ready."""
    try:
        return stack.start_worker(**kwargs)
    except RuntimeError:  # "worker exited" during its start: the crash point fired
        return stack.workers[-1]


def wait_dead(proc: Any, timeout: float) -> None:
    wait_until(lambda: proc.poll() is not None, timeout, "the armed worker to crash", interval=0.2)


def tally(key: tuple[str, str], stack: Stack, ids: list[str], receiver: WebhookReceiver) -> None:
    with database(stack.database_url) as engine:
        jobs = job_rows(engine, ids)
    events = outbox_rows(stack, ids)
    # 2xx answers the receiver gave, by event id (the stack sends unsigned, dev mode)
    heard = {r.headers.get("webhook-id") for r in receiver.requests}
    counts = RESULTS.setdefault(key, Counter())
    counts["runs"] += 1
    counts["accepted"] += len(ids)
    counts["completed"] += sum(j.status == "completed" for j in jobs.values())
    counts["failed"] += sum(j.status == "failed" for j in jobs.values())
    counts["delivered"] += sum(
        e.status == "delivered" and e.event_id in heard for e in events.values()
    )
    counts["exhausted"] += sum(e.status == "exhausted" for e in events.values())
    lost = [i for i in ids if jobs[i].status not in ("completed", "failed")]
    lost += [i for i in ids if i not in events or events[i].status == "pending"]
    counts["lost"] += len(lost)
    assert lost == [], lost


CRASH_POINTS = [
    AFTER_COMPLETION_COMMIT,
    AFTER_RETRY_PLANNED,
    SWEEP_BEFORE_PUBLISH,
    BATCH_BEFORE_COMPLETION,
]
# the armed worker waits for all of a run's jobs, so it dies holding one batch of them
CRASH_ENV = {BATCH_BEFORE_COMPLETION: {"VQ_WORKER_BATCH_WAIT_MS": "1000"}}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_worker_killed_at_each_window_loses_nothing(rig: tuple[str, Stack], point: str) -> None:
    backend, stack = rig
    for run in range(RUNS):
        with WebhookReceiver() as receiver:
            hook = receiver.url()
            if point == AFTER_RETRY_PLANNED:
                receiver.respond(500)  # the first attempt fails: a retry is planned
            ids = submit(stack, hook, JOBS_PER_RUN, seed=9000 + run)
            if point == SWEEP_BEFORE_PUBLISH:
                # a job a dead worker left behind, its message gone: the sweep claims it,
                # then dies before it publishes anything
                ids.append(abandoned_job(stack, ids[0], hook))
            prefix = stack.env.get("VQ_BROKER_QUEUE_PREFIX", "")
            armed = start_armed(
                stack,
                concurrency=4,
                name=f"armed-{uuid.uuid4().hex[:6]}",
                beat=True,
                env={**FAST, **CRASH_ENV.get(point, {}), "VQTEST_CRASH_AT": point},
                # the sweep point: a sweeper only, so the crash is the sweep's alone (a job
                # message it had received unstarted would be a different window, below)
                queues=f"{prefix}maintenance" if point == SWEEP_BEFORE_PUBLISH else None,
            )
            wait_dead(armed, 90)
            stack.workers.remove(armed)
            crashed_at = time.monotonic()
            stack.start_worker(
                concurrency=4, name=f"rescue-{uuid.uuid4().hex[:6]}", beat=True, env=FAST
            )
            with database(stack.database_url) as engine:
                wait_all_final(engine, ids, timeout=120)
            wait_events_settled(stack, ids, timeout=120)
            recovered_s = time.monotonic() - crashed_at
            stack.stop_workers()
            tally((backend, point), stack, ids, receiver)
            RESULTS[(backend, point)]["max_recovery_s"] = max(
                RESULTS[(backend, point)]["max_recovery_s"], round(recovered_s)
            )
    print(f"\n{backend} {point}: {dict(RESULTS[(backend, point)])}")


def resumed(engine: Any, killed: set[str], since: Any) -> bool:
    rows = job_rows(engine, list(killed))
    return all(
        r.status in ("completed", "failed") or (r.started_at is not None and r.started_at > since)
        for r in rows.values()
    )


def test_a_dead_workers_jobs_resume_within_30s_of_a_live_worker(
    rig: tuple[str, Stack],
) -> None:
    """Default lease (15 s) and sweep interval (10 s): measured, not a fixed timeout."""
    backend, stack = rig
    defaults = {"VQ_WORKER_LEASE_S": "15", "VQ_WORKER_SWEEP_INTERVAL_S": "10"}
    measured = []
    for run in range(RUNS):
        doomed = stack.start_worker(
            concurrency=4, name=f"doomed-{uuid.uuid4().hex[:6]}", beat=True, env=defaults
        )
        # enough jobs to keep it busy for seconds: with 12 it once finished them all between
        # two looks at the database, and the test never saw one in flight
        ids = submit(stack, None, 40, seed=9500 + run)
        with database(stack.database_url) as engine:

            def frozen_mid_batch(
                e: Any = engine, i: list[str] = ids, pid: int = doomed.pid
            ) -> bool:
                # freeze the worker, then look: a batch that ended between a look and a kill
                # (CI once saw it) would otherwise leave nothing in flight to resume
                os.killpg(pid, signal.SIGSTOP)
                if any(r.status == "processing" for r in job_rows(e, i).values()):
                    return True
                os.killpg(pid, signal.SIGCONT)
                return False

            wait_until(frozen_mid_batch, 60, "the worker frozen with a job in flight", 0.02)
            killed = {i for i, r in job_rows(engine, ids).items() if r.status == "processing"}
            stack.kill_worker(doomed)
            stack.workers.remove(doomed)
            assert killed
            stack.start_worker(
                concurrency=4, name=f"live-{uuid.uuid4().hex[:6]}", beat=True, env=defaults
            )
            live_at = utcnow()
            wait_until(
                lambda e=engine, k=killed, t=live_at: resumed(e, k, t),  # type: ignore[misc]
                60,
                "the dead worker's jobs claimed again",
                interval=0.2,
            )
            rows = job_rows(engine, list(killed))
            starts = [r.started_at for r in rows.values() if r.started_at is not None]
            measured.append(max((s - live_at).total_seconds() for s in starts))
            final = wait_all_final(engine, ids, timeout=120)
        assert {r.status for r in final.values()} == {"completed"}
        # never twice at once: each killed job was claimed once more, the rest once
        assert all(final[i].attempts == 2 for i in killed), [final[i].attempts for i in killed]
        stack.stop_workers()
    print(f"\n{backend}: resumed {measured} s after a live worker started")
    key = (backend, "worker SIGKILLed mid-job")
    RESULTS.setdefault(key, Counter())["max_recovery_s"] = round(max(measured))
    assert max(measured) <= 30, measured


# a consumer that takes one job message the way a worker does (not acknowledged) and is
# SIGKILLed before it leases the job: the window between taking a message and leasing its job
TAKE_ONE_AND_DIE = """
import os, signal, sys
from jobs.celery_app import app
with app.connection_for_read() as conn:
    # messages earlier tests left queued come first: take them too, up to this test's own
    for _ in range(1000):
        message = conn.default_channel.basic_get(sys.argv[1], no_ack=False)
        if message is None or message.headers.get("vq_job_id") == sys.argv[2]:
            break
    print(message.headers["vq_job_id"] if message is not None else "none", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_job_whose_message_a_worker_took_and_died_with_unleased_resumes_within_30s(
    rig: tuple[str, Stack],
) -> None:
    backend, stack = rig
    stack.stop_workers()
    ids = submit(stack, None, 1, seed=9700)
    queue = f"{stack.env.get('VQ_BROKER_QUEUE_PREFIX', '')}visionqueue"
    taker = subprocess.run(
        [sys.executable, "-c", TAKE_ONE_AND_DIE, queue, ids[0]],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert taker.returncode == -signal.SIGKILL, taker.stderr[-2000:]
    assert taker.stdout.strip() == ids[0], taker.stdout
    defaults = {"VQ_WORKER_SWEEP_INTERVAL_S": "10"}  # and the default lease
    name = f"live-{uuid.uuid4().hex[:6]}"
    stack.start_worker(concurrency=2, name=name, beat=True, env=defaults)
    live_at = time.monotonic()
    with database(stack.database_url) as engine:
        try:
            (row,) = wait_all_final(engine, ids, timeout=90).values()
        except TimeoutError as exc:
            log = stack.log_dir / f"worker-{name}.log"
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-4000:]}") from None
    resumed_s = time.monotonic() - live_at
    stack.stop_workers()
    assert (row.status, row.attempts) == ("completed", 1)
    print(f"\n{backend}: a job whose message died unleased completed {resumed_s:.1f} s later")
    key = (backend, "message taken, job not yet leased")
    RESULTS.setdefault(key, Counter())["max_recovery_s"] = round(resumed_s)
    assert resumed_s <= 30, resumed_s


@contextlib.contextmanager
def never_answering() -> Iterator[str]:
    """A TCP server that accepts connections and never answers a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    finally:
        stop.set()
        for sock in [server, *held]:
            with contextlib.suppress(OSError):
                sock.close()


def latencies(stack: Stack, n: int, seed: int) -> list[float]:
    ids = submit(stack, None, n, seed)
    with database(stack.database_url) as engine:
        rows = wait_all_final(engine, ids, timeout=120)
    return [
        (r.finished_at - r.created_at).total_seconds()  # type: ignore[operator]
        for r in rows.values()
    ]


def test_a_never_answering_receiver_does_not_slow_other_jobs(server_stack: Stack) -> None:
    """Jobs and webhooks on workers of their own, as ``make run`` and compose start them."""
    stack = server_stack
    prefix = stack.env["VQ_BROKER_QUEUE_PREFIX"]
    env = {
        "VQ_WEBHOOK_TIMEOUT_S": "10",
        "VQ_WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION": "2",
        # one short retry: no long countdown message outlives the test on the shared broker
        "VQ_WEBHOOK_RETRY_SCHEDULE": "1",
    }
    stack.start_worker(
        concurrency=4, name="jobs-only", queues=f"{prefix}visionqueue,{prefix}maintenance", env=env
    )
    stack.start_worker(
        concurrency=4, name="hooks-only", queues=f"{prefix}webhooks,{prefix}maintenance", env=env
    )
    stuck: list[str] = []
    try:
        latencies(stack, 4, seed=9900)  # warm-up
        baseline = latencies(stack, 16, seed=9901)
        with never_answering() as sink:
            stuck = submit(stack, sink, 12, seed=9902)
            with database(stack.database_url) as engine:
                wait_all_final(engine, stuck, timeout=120)  # classified: only webhooks left
            time.sleep(1)  # their deliveries are now hanging
            loaded = latencies(stack, 16, seed=9903)
            owed = outbox_rows(stack, stuck)
            # at most the cap of attempts hang at once; the rest wait their turn
            now = utcnow()
            in_flight = [r for r in owed.values() if r.claimed_until and r.claimed_until > now]
            assert len(in_flight) <= 2
    finally:
        stack.stop_workers()
        # the sink is gone: give its events up, so later tests' workers do not try them
        with database(stack.database_url) as engine, Session(engine) as s, s.begin():
            s.execute(
                update(WebhookOutbox)
                .where(WebhookOutbox.job_id.in_(stuck))
                .values(status="exhausted", next_attempt_at=None)
            )
    base, load = statistics.median(baseline), statistics.median(loaded)
    print(
        f"\nmedian job latency: baseline {base:.2f}s, beside a never-answering receiver {load:.2f}s"
    )
    RESULTS[("postgres+redis", "never-answering receiver")] = Counter(
        {"baseline_ms": round(base * 1000), "loaded_ms": round(load * 1000)}
    )
    # within 2x of the baseline (+0.1 s: the medians of 16 jobs on a shared 2-core machine)
    assert load <= 2 * base + 0.1, (baseline, loaded)


def test_killing_the_whole_stack_loses_nothing(tmp_path: Path, stored_model: Any) -> None:
    """``make run`` SIGKILLed whole (every process) mid-batch, then started on the same data."""
    env = launcher_env(
        tmp_path / "data",
        VQ_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        VQ_WEBHOOK_RETRY_SCHEDULE="2,2,2,2",
    )
    db_url = f"sqlite:///{(tmp_path / 'data' / 'visionqueue.db').resolve()}"
    with WebhookReceiver() as receiver:
        for _ in range(4):
            receiver.respond(500)  # webhook retries are in flight when the stack dies
        with start_launcher(env, tmp_path / "launcher.log") as first:
            first.wait_for_output(BANNER)
            where = Stack(first.url, {}, db_url, "filesystem://", "", tmp_path)
            ids = submit(where, receiver.url(), 12, seed=9700)
            wait_until(lambda: len(receiver.requests) >= 3, 120, "webhooks under way")
            # freeze everything first, so no process sees another die and cleans up
            tree = started_by(first.data_dir)
            for signum in (signal.SIGSTOP, signal.SIGKILL):
                for proc in tree:
                    with contextlib.suppress(OSError):
                        os.kill(proc.pid, signum)
            first.proc.wait(10)
        with database(db_url) as engine:
            at_kill = Counter(r.status for r in job_rows(engine, ids).values())
        with start_launcher(env, tmp_path / "launcher.log") as second:
            second.wait_for_output(BANNER_END)
            restarted = time.monotonic()
            with database(db_url) as engine:
                rows = wait_all_final(engine, ids, timeout=180)
            events = wait_events_settled(where, ids, timeout=180)
            settled_s = time.monotonic() - restarted
            second.interrupt_and_wait()
    assert {r.status for r in rows.values()} == {"completed"}
    assert set(events) == set(ids)
    heard = {r.headers.get("webhook-id") for r in receiver.requests}
    for event in events.values():
        assert event.status in ("delivered", "exhausted"), event
        if event.status == "delivered":
            assert event.event_id in heard
    print(f"\nwhole stack killed with {dict(at_kill)}; all settled {settled_s:.0f}s after restart")
    RESULTS[("embedded", "whole stack SIGKILLed")] = Counter(
        {
            "runs": 1,
            "accepted": len(ids),
            "completed": len(rows),
            "delivered": sum(e.status == "delivered" for e in events.values()),
            "exhausted": sum(e.status == "exhausted" for e in events.values()),
            "lost": 0,
            "max_recovery_s": round(settled_s),
        }
    )
