"""Read the true broker backlog: messages waiting in each queue, asked of the broker."""

from __future__ import annotations

from typing import Any


def queue_depths(celery_app: Any, queues: tuple[str, ...]) -> dict[str, int]:
    """Return ``{queue: waiting messages}``; a queue the broker does not know counts 0.

    Uses a passive ``queue_declare`` (AMQP's message count, Redis' LLEN, the
    filesystem transport's file count), so reserved/unacked messages are not counted.
    """
    depths: dict[str, int] = {}
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        for name in queues:
            channel = conn.channel()
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except Exception:  # passive declare of a missing queue raises (AMQP 404)
                depths[name] = 0
            finally:
                channel.close()
    return depths
