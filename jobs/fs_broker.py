"""Kombu's filesystem transport (the embedded broker), publishing each message atomically.

kombu 5.7's filesystem channel creates a message file under its final name and only then
writes it. A consumer polling meanwhile moves the still-empty file away and fails to decode
it: the worker dies with ``JSONDecodeError`` and the message is lost. At a 50 ms poll
interval ``make run``'s start-up hit it most times. Here a message is written under a name
no consumer reads (``.part``), then renamed into place, which is atomic on one filesystem.

Its exchange tables (the broadcast bindings that ``celery inspect`` and Flower use) had the
same flaw: the first binder creates the table file empty and locks it a moment later, and a
reader in between fails with ``JSONDecodeError`` (Flower logged "Inspect method ... failed"
at every start of ``make run``). Here a table file is created with its content, atomically.

A message that carries a job (the ``vq_job_id`` header, see ``job_headers``) is named after
it, so the sweeper can tell which pending jobs still have a message waiting
(``queued_job_ids``): kombu deletes a message file the moment a worker takes it, so a worker
killed before it leased the job would otherwise leave the job pending with no message at all.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

if TYPE_CHECKING:
    from visionqueue.core.settings import Settings

PATH = "jobs.fs_broker:Transport"  # Celery's ``broker_transport`` for ``filesystem://``
JOB_HEADER = "vq_job_id"
_JOB_ID = re.compile(r"[0-9A-Za-z-]{1,64}")  # what may go into a file name


def job_headers(job_id: str) -> dict[str, str]:
    """Return the message headers that name ``job_id`` (on any broker; this one uses them)."""
    return {JOB_HEADER: job_id}


def queue_folder(settings: Settings) -> Path | None:
    """Return the embedded broker's message folder, or None when another broker is set."""
    if not settings.broker_url.startswith("filesystem://"):
        return None
    return settings.broker_dir / "in"


def queued_job_ids(folder: Path) -> set[str]:
    """Return the jobs whose message waits in ``folder`` (being written or ready to take)."""
    ids: set[str] = set()
    if not folder.is_dir():  # nothing was ever published
        return ids
    with os.scandir(folder) as entries:
        for entry in entries:
            # "<ms>_<job>~<nonce>.<queue>.msg" (".part" while it is written)
            head = entry.name.partition(".")[0]
            job, marked, _ = head.partition("_")[2].partition("~")
            if marked:
                ids.add(job)
    return ids


class Channel(filesystem.Channel):
    # kombu's own signatures disagree (AbstractChannel says ``message``); this is the
    # filesystem channel's, which its callers use
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put ``payload`` onto ``queue``: written in full before its name is visible."""
        job = (payload.get("headers") or {}).get(JOB_HEADER)
        named = isinstance(job, str) and _JOB_ID.fullmatch(job)
        tag = f"{job}~{uuid.uuid4().hex[:12]}" if named else uuid.uuid4()
        name = f"{round(time.monotonic() * 1000)}_{tag}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # consumers match names ending in "<queue>.msg" only
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        """Bind ``queue`` to ``exchange``; a new table file appears with its first binding."""
        table = self._exchange_file(exchange)
        if not table.exists():
            self.control_folder.mkdir(exist_ok=True)
            entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
            partial = table.with_name(f"{table.name}.{uuid.uuid4().hex}.part")
            try:
                partial.write_bytes(str_to_bytes(dumps([entry])))
                os.link(partial, table)  # fails if another binder created it first
                return
            except FileExistsError:
                pass  # the table exists now: add to it under its lock, as kombu does
            except OSError as exc:
                raise ChannelError(f"Cannot create {table}") from exc
            finally:
                partial.unlink(missing_ok=True)
        super()._queue_bind(exchange, routing_key, pattern, queue)


class Transport(filesystem.Transport):
    Channel = Channel
