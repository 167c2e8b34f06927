"""Stop ``make run``'s whole stack when the launcher dies, however it dies.

The launcher starts this process before anything else and keeps the write end of a pipe
whose read end only this process holds. When the launcher exits (Ctrl-C, a crash, an OOM
kill, ``kill -9``, a closed terminal) the kernel closes its end, the read here returns EOF,
and every process that carries the launcher's stack id in its environment is stopped:
the Bento server and the service workers it starts in sessions of their own, the Celery
worker and its beat process, Flower. The launcher's own ``PR_SET_PDEATHSIG`` only reaches
its direct children; this reaches their children too.

Run as ``python -m visionqueue.watchdog FD STACK_ID``; it imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import psutil

# Environment variable that marks every process of one ``make run`` (children inherit it).
STACK_ENV = "VISIONQUEUE_STACK_ID"


def stack_processes(stack_id: str) -> list[psutil.Process]:
    """Return the live processes whose environment carries ``stack_id`` (not this one)."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(STACK_ENV) == stack_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def stop_stack(stack_id: str, grace: float = 10.0) -> int:
    """SIGTERM every process of the stack, SIGKILL what is left after ``grace``; return the count."""
    procs = stack_processes(stack_id)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    # a supervisor that had not seen its SIGTERM yet may have restarted a worker meanwhile
    for _ in range(5):
        alive = [*alive, *(p for p in stack_processes(stack_id) if p not in alive)]
        if not alive:
            break
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _, alive = psutil.wait_procs(alive, timeout=2)
    return len(procs)


def main(argv: list[str]) -> int:
    fd, stack_id = int(argv[0]), argv[1]
    # Ctrl-C and a closed terminal are the launcher's to handle; this process outlives it
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    while os.read(fd, 512):  # the launcher never writes: EOF means it is gone
        pass
    stopped = stop_stack(stack_id)
    if stopped:
        print(
            f"[visionqueue] watchdog: the launcher is gone; stopped {stopped} processes", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
