"""Kombu's filesystem transport (the embedded broker), publishing each message atomically.

kombu 5.7's filesystem channel creates a message file under its final name and only then
writes it. A consumer polling meanwhile moves the still-empty file away and fails to decode
it: the worker dies with ``JSONDecodeError`` and the message is lost. At a 50 ms poll
interval ``make run``'s start-up hit it most times. Here a message is written under a name
no consumer reads (``.part``), then renamed into place, which is atomic on one filesystem.
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


class Transport(filesystem.Transport):
    Channel = Channel
