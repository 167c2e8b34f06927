"""Background work runs on threads of lowered CPU priority (Linux nice values, per thread)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from visionqueue.dataplane.cpu_priority import background_executor, thread_is_idle, thread_nice

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="nice values are per thread on Linux"
)


def test_a_background_pool_runs_at_its_nice_value_and_leaves_the_caller_alone() -> None:
    mine = thread_nice(threading.get_native_id())
    with background_executor(2, 10, "test-bg") as pool:
        seen = {
            pool.submit(lambda: thread_nice(threading.get_native_id())).result() for _ in range(4)
        }
    assert seen == {max(mine, 10)}
    assert thread_nice(threading.get_native_id()) == mine


def test_an_idle_pool_runs_at_sched_idle_and_leaves_the_caller_alone() -> None:
    def policy() -> tuple[bool, int]:
        tid = threading.get_native_id()
        return thread_is_idle(tid), thread_nice(tid)

    mine = policy()
    with background_executor(2, 10, "test-idle", idle=True) as pool:
        seen = {pool.submit(policy).result() for _ in range(4)}
    assert seen == {(True, max(mine[1], 10))}
    assert policy() == mine and not mine[0]


def test_a_nice_of_zero_changes_nothing() -> None:
    with background_executor(1, 0, "test-bg0") as pool:
        seen = pool.submit(lambda: thread_nice(threading.get_native_id())).result()
    assert seen == thread_nice(threading.get_native_id())


LOWER = """
import os, threading, time
from visionqueue.dataplane.cpu_priority import lower_this_process, thread_nice
started = threading.Event()
t = threading.Thread(target=lambda: (started.set(), time.sleep(1)), daemon=True)
t.start(); started.wait()
lower_this_process(7)
after = threading.Thread(target=lambda: print(thread_nice(threading.get_native_id())))
after.start(); after.join()
nices = set()
for tid in os.listdir("/proc/self/task"):
    try:
        nices.add(thread_nice(int(tid)))
    except ProcessLookupError:  # a thread that ended after the listing
        pass
print(sorted(nices))
"""


def test_lowering_a_process_reaches_its_threads_and_those_started_later() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOWER],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.split("\n")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert out[0] == str(max(base, 7))  # a thread started after it inherits it
    assert out[1] == f"[{max(base, 7)}]"  # every thread that was running


SESSION = """
from visionqueue.dataplane.cpu_priority import lower_this_process
lower_this_process(9)
print(open("/proc/self/autogroup").read().split()[-1:])
"""


def _group_nice() -> list[str]:
    # Linux prints nothing for the root group (init's session, where a CI runner's processes
    # may live): its weight cannot be set, and it reads as []
    return Path("/proc/self/autogroup").read_text().split()[-1:]


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="a kernel without autogroups")
@pytest.mark.parametrize("own_session", [True, False])
def test_a_process_in_a_session_of_its_own_lowers_its_scheduling_group_too(
    own_session: bool,
) -> None:
    # with autogroups, Linux shares a core between sessions before it looks at nice values
    done = subprocess.run(
        [sys.executable, "-c", SESSION],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=own_session,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ours = _group_nice()
    # a process sharing its session (a worker run from a terminal) leaves the session alone
    assert done.stdout.strip() == str(["9"] if own_session else ours)
    assert _group_nice() == ours
