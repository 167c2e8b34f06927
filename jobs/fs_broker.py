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
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

PATH = "jobs.fs_broker:Transport"  # Celery's ``broker_transport`` for ``filesystem://``


class Channel(filesystem.Channel):
    # kombu's own signatures disagree (AbstractChannel says ``message``); this is the
    # filesystem channel's, which its callers use
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put ``payload`` onto ``queue``: written in full before its name is visible."""
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
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
