"""Lower the CPU priority of background work, so a person's request gets the cores first.

On a small host the classifier, the front's decodes and the job workers share a few cores.
The priority queue decides which forward pass runs next, but once job work is running only
the kernel can hand its cores to a request that just arrived. Linux keeps a nice value per
thread: a thread at ``VQ_BACKGROUND_NICE`` (10 by default) gets about a tenth of a core's
time against one at 0 while both want it (at 19, 1/70), and all of it when nothing else
runs, so background work fills what interactive work leaves and never stops. The whole
Celery worker runs at that value, its broker fetches and lease renewals too: at 19 a
saturated host starves them (docs/priority.md, measured), so 10 stays the default.

Linux's autogroups share a core between sessions before nice values count, so a worker that
leads a session of its own lowers its session's group too (``lower_this_session``).

The classifier's lanes go further by default (``VQ_BACKGROUND_POLICY=idle``): Linux's
``SCHED_IDLE`` policy, which the kernel preempts at once for any other thread and which
counts against no other session (``idle_this_thread``; docs/priority.md, measured). A policy
orders threads within one scheduling group only, so the lanes run in a process and session
of their own (``visionqueue.dataplane.lane_process``), whose group is lowered too.

Lowering a priority needs no privilege; raising it back does, so background work runs on
threads of its own that stay low (``background_executor``), never on shared threads.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)


def lower_this_thread(nice: int) -> None:
    """Set the calling thread's nice value to ``nice`` (Linux: nice is per thread)."""
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):  # not Linux, or a sandbox that forbids it
        logger.debug("could not lower this thread's CPU priority", exc_info=True)


def lower_this_process(nice: int) -> None:
    """Set every thread of this process to ``nice`` (threads started later inherit it)."""
    if nice <= 0:
        return
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [threading.get_native_id()]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except (OSError, AttributeError):
            logger.debug("could not lower thread %d's CPU priority", tid, exc_info=True)
    lower_this_session(nice)


def lower_this_session(nice: int) -> None:
    """Give this process' scheduling group (its autogroup) ``nice`` too, if it leads its own
    session.

    With ``sched_autogroup_enabled`` (a common kernel default; it applies to processes in the
    root cgroup, not under systemd's or a container's cgroups) Linux first shares a core
    between sessions, and a thread's nice value only counts against threads of
    its own session: a worker started in a session of its own (``make run`` starts each
    process so) got as much of a core as the classifier's whole session, whatever its threads'
    nice. A process that shares its session (a worker run from a terminal) leaves it alone.
    """
    if nice <= 0 or os.getsid(0) != os.getpid():
        return
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(nice))
    except OSError:  # no autogroups (not Linux, a kernel without them), or forbidden
        logger.debug("could not lower this session's CPU priority", exc_info=True)


def idle_this_thread(nice: int) -> None:
    """Run the calling thread at ``SCHED_IDLE`` (Linux), at ``nice`` where that is refused.

    A nice value only weighs a thread against others of its own scheduling group, and the
    kernel lets it finish its time slice before a thread that wakes takes the core. A
    ``SCHED_IDLE`` thread is preempted the moment any other thread of any group wants its
    core, and the scheduler counts a core that runs only such threads as free when it
    places a waking one: what a classifier lane running beside a person's request (and
    beside the front's decodes, in another session) should be. Lowering the policy needs no
    privilege; raising it back does, so only threads of their own should call this.
    """
    lower_this_thread(nice)  # kept where SCHED_IDLE is refused, harmless where it is not
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):  # not Linux, or a sandbox that forbids it
        logger.debug("could not give this thread the idle scheduling policy", exc_info=True)


def background_executor(
    threads: int, nice: int, name: str, idle: bool = False
) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads that run at ``nice`` (and ``SCHED_IDLE`` if ``idle``)
    from their start."""
    start = idle_this_thread if idle else lower_this_thread
    return ThreadPoolExecutor(threads, name, initializer=start, initargs=(nice,))


def thread_nice(tid: int) -> int:
    """The nice value of thread ``tid`` of this process (for tests and probes)."""
    return os.getpriority(os.PRIO_PROCESS, tid)


def thread_is_idle(tid: int) -> bool:
    """Whether thread ``tid`` runs at ``SCHED_IDLE`` (for tests and probes)."""
    return bool(os.sched_getscheduler(tid) == os.SCHED_IDLE)
