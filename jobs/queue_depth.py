"""Read the true broker backlog: messages waiting in each queue, asked of the broker."""

from __future__ import annotations

from typing import Any


def queue_depths(celery_app: Any, queues: tuple[str, ...]) -> dict[str, int]:
    """Return ``{queue: waiting messages}``; a queue the broker does not know counts 0.

    Kombu's virtual transports (Redis, filesystem) are asked for the queue's size directly
    (Redis' LLEN, the folder's file count): their passive ``queue_declare`` answers "no
    such queue" under a ``global_keyprefix``, which made the gauge read 0 over a full queue.
    AMQP brokers answer a passive ``queue_declare`` with the message count. Reserved and
    unacked messages are not counted.
    """
    depths: dict[str, int] = {}
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        for name in queues:
            channel = conn.channel()
            try:
                size = getattr(channel, "_size", None)
                if size is not None:
                    depths[name] = int(size(name))
                else:
                    depths[name] = int(
                        channel.queue_declare(queue=name, passive=True).message_count
                    )
            except Exception:  # passive declare of a missing queue raises (AMQP 404)
                depths[name] = 0
            finally:
                channel.close()
    return depths
