"""Renew the leases of the jobs this worker process runs, from one background thread.

The thread renews every job it holds each third of ``VQ_WORKER_LEASE_S``. If the process
dies (SIGKILL, OOM, power) the renewals stop and the leases lapse, which is how the
sweeper learns that the jobs need another worker. A thread blocked in a job keeps its
lease, so a slow job is never handed out twice while it runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from sqlalchemy import Engine

from persistence import job_leases
from persistence.db import session_scope
from visionqueue.core.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)


def holder_id() -> str:
    """Return a name for this process that no other process, now or later, shares."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseKeeper:
    """The set of jobs this process holds, renewed in the background while non-empty."""

    def __init__(self, engine: Engine, lease_s: float) -> None:
        self.engine = engine
        self.lease_s = lease_s
        self.holder = holder_id()
        self._held: set[str] = set()
        self._unreserved: set[str] = set()  # received, lease not yet written
        self._lock = threading.Lock()
        self._wake = threading.Event()  # stop
        self._kick = threading.Event()  # write new reservations now
        self._thread: threading.Thread | None = None
        self._last_renewed: set[str] = set()  # the ids the last renewal covered

    def hold(self, job_id: str) -> None:
        """Keep renewing ``job_id``'s lease until ``release``."""
        with self._lock:
            self._held.add(job_id)
            self._start()

    def reserve(self, job_id: str) -> None:
        """Hold a pending job whose message this process received but has not started.

        The message is gone from the embedded broker once received, so the job carries this
        process' lease from now on (written at once by the background thread): if the process
        dies before it claims the job, the lease lapses and the sweeper sends the job again,
        as it does for a job that was running.
        """
        with self._lock:
            self._held.add(job_id)
            self._unreserved.add(job_id)
            self._start()
        self._kick.set()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="vq-lease-keeper", daemon=True)
            self._thread.start()

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held.discard(job_id)
            self._unreserved.discard(job_id)

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def renew_now(self) -> int:
        """Renew every held lease once; return how many are still ours."""
        with self._lock:
            held = set(self._held)
            fresh = self._unreserved & held
            self._unreserved.clear()
        self._last_renewed = held
        if not held:
            return 0
        written = False
        try:
            with session_scope(self.engine) as session:
                kept = job_leases.keep_leases(session, self.holder, fresh, held, self.lease_s)
            written = True
            return kept
        finally:
            if not written:  # the reservations are written by the next renewal
                with self._lock:
                    self._unreserved |= fresh & self._held

    def _run(self) -> None:
        while not self._wake.is_set():
            self._kick.wait(self.lease_s / 3)
            self._kick.clear()
            if self._wake.is_set():
                return
            try:
                kept = self.renew_now()
            except DatabaseUnavailable:
                # nobody else can claim while the database is down either
                logger.warning("job leases not renewed: the database is unavailable")
                continue
            except Exception:  # the thread must outlive any one failure
                logger.exception("job leases not renewed")
                continue
            # only ids this renewal covered and still held: jobs received or released while
            # it ran are not lost
            lost = len(self._last_renewed & self.held()) - kept
            if lost > 0:
                logger.warning("%d job leases lapsed and were taken over", lost)

    def stop(self) -> None:
        self._wake.set()
        self._kick.set()
