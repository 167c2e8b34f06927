"""Make a process die with its parent (Linux ``PR_SET_PDEATHSIG``), for every child we start.

The launcher arms its children with it; a worker's embedded beat process arms itself, since a
worker killed outright (SIGKILL, the OOM killer) would otherwise leave its beat running on its
own, still scheduling sweeps.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with(parent_pid: int) -> Callable[[], None] | None:
    """Return a function that makes the calling process get SIGTERM when ``parent_pid`` dies.

    Call it in the child (a ``preexec_fn``, or first thing in a forked process). None where
    ``prctl`` does not exist (not Linux).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return arm
