"""Background lanes in a process of their own, in a scheduling group of their own.

Job and bulk forward passes run side by side in lanes at ``SCHED_IDLE`` (``cpu_priority``).
But Linux shares a core between scheduling groups (a session's autogroup, a cgroup) before
it looks at a thread's policy or nice value: lane threads inside the classifier's process
sit in the classifier's group, which has then spent most of both cores on lanes when a
person's forward pass wakes in that same group, and the front's, the S3 server's and the
database's groups go first. Measured (docs/priority.md, session 10): with the lanes in a
group of their own, ``/predict`` beside a dataset batch had a lower p50 and a shorter tail in
both A/B pairs, and the batch drained about a tenth slower beside it.

So, by default (``VQ_BACKGROUND_PROCESS``), each classifier worker starts one lane process:
a session of its own (its own autogroup, at nice 19, where autogroups apply) whose lane
threads run the single-threaded ONNX Runtime sessions at ``SCHED_IDLE``. The classifier's
lane threads normalise the crops as before, send the float32 batch over a socketpair of
their own and wait; the lane process answers the logits. Nothing is pickled: a frame is a
JSON header and the raw array.

A lane process that dies is started again and the pass retried once; one that cannot be
started fails the pass like any other error (a job's pass is retried by its worker). The
lane process ends when the classifier does: its connections close.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from collections import OrderedDict
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from model_store.onnx_backend import OnnxRunner
from model_store.runtimes import CPU_PROVIDER
from visionqueue.dataplane.cpu_priority import (
    idle_this_thread,
    lower_this_session,
    lower_this_thread,
)

logger = logging.getLogger("visionqueue.service")

SESSION_NICE = 19  # the lane process' scheduling group: lanes have no housekeeping to starve
GRAPHS_KEPT = 8  # sessions the lane process keeps open (promotions add versions)


class LaneError(RuntimeError):
    """A background pass the lane process could not run."""


class LaneProcess:
    """The classifier worker's side: starts the lane process on first use, hands each calling
    thread a connection of its own, and starts the process again if it dies."""

    def __init__(self, lanes: int, nice: int, idle: bool) -> None:
        self.lanes = lanes
        self._nice = nice
        self._idle = idle
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._generation = 0
        # (generation, connection): a connection of an earlier process is dropped when met
        self._free: queue.SimpleQueue[tuple[int, Connection]] = queue.SimpleQueue()

    @property
    def pid(self) -> int | None:
        """The running lane process' pid (None before the first background pass)."""
        return self._proc.pid if self._proc is not None else None

    def runner(self, graph: Path) -> LaneRunner:
        """A background runner of ``graph`` (an ONNX file) for ``BatchClassifier``."""
        return LaneRunner(self, graph)

    def logits(self, graph: Path, batch: np.ndarray) -> np.ndarray:
        """Run ``batch`` (normalised float32) on ``graph`` in the lane process."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        for attempt in (1, 2):
            generation, conn = self._connection()
            try:
                conn.send_bytes(json.dumps({"graph": str(graph), "shape": batch.shape}).encode())
                conn.send_bytes(batch.data.cast("B"))
                header = json.loads(conn.recv_bytes())
                out = None if "error" in header else np.empty(header["shape"], np.float32)
                if out is not None:
                    conn.recv_bytes_into(out.data.cast("B"))
            except (EOFError, OSError) as exc:
                conn.close()
                self._replace(generation)
                if attempt == 2:
                    raise LaneError(f"the lane process failed twice: {exc!r}") from exc
                logger.warning("lane process lost (%r): started again, pass retried", exc)
                continue
            except Exception as exc:  # a frame out of step: this connection is unusable
                conn.close()
                self._replace(generation)
                raise LaneError(f"the lane process answered out of step: {exc!r}") from exc
            self._free.put((generation, conn))
            if out is None:  # the model's error, answered: the connection stays usable
                raise LaneError(header["error"])
            return out
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every idle connection and end the lane process."""
        with self._lock:
            self._generation += 1
            proc, self._proc = self._proc, None
        while True:
            try:
                self._free.get_nowait()[1].close()
            except queue.Empty:
                break
        if proc is not None:
            proc.kill()
            proc.wait()

    def _connection(self) -> tuple[int, Connection]:
        with self._lock:
            if self._proc is None:
                self._start()
        while True:
            generation, conn = self._free.get()
            if generation == self._generation:
                return generation, conn
            conn.close()

    def _replace(self, generation: int) -> None:
        """Start the lane process again, unless another thread already did."""
        with self._lock:
            if generation != self._generation:
                return
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None  # a start that fails is tried again by the next pass
            self._start()

    def _start(self) -> None:
        pairs = [socket.socketpair() for _ in range(self.lanes)]
        child_fds = [child.fileno() for _, child in pairs]
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", __name__, "--nice", str(self._nice)]
        command += ["--policy", "idle" if self._idle else "nice", *map(str, child_fds)]
        try:
            self._proc = subprocess.Popen(
                command,
                pass_fds=child_fds,
                start_new_session=True,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            for parent, _ in pairs:
                parent.close()
            raise LaneError(f"could not start the lane process: {exc!r}") from exc
        finally:
            for _, child in pairs:
                child.close()
        self._generation += 1
        for parent, _ in pairs:
            self._free.put((self._generation, Connection(parent.detach())))
        logger.info("lane process %d started: %d lanes", self._proc.pid, self.lanes)


class LaneRunner:
    """``OnnxRunner``'s ``logits`` for background passes, run in the lane process."""

    provider = CPU_PROVIDER

    def __init__(self, lanes: LaneProcess, path: Path) -> None:
        self._lanes = lanes
        self.path = path

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._lanes.logits(self.path, batch)


class _Graphs:
    """The lane process' single-threaded sessions, by graph file, shared by its lanes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[str, OnnxRunner] = OrderedDict()

    def get(self, path: str) -> OnnxRunner:
        with self._lock:
            runner = self._open.get(path)
            if runner is None:
                runner = self._open[path] = OnnxRunner(Path(path), 1)
                while len(self._open) > GRAPHS_KEPT:
                    self._open.popitem(last=False)
            self._open.move_to_end(path)
            return runner


def _serve(conn: Connection, graphs: _Graphs, nice: int, idle: bool) -> None:
    """One lane: answer passes on ``conn`` until the classifier closes it."""
    (idle_this_thread if idle else lower_this_thread)(nice)
    while True:
        try:
            header = json.loads(conn.recv_bytes())
            batch = np.empty(header["shape"], dtype=np.float32)
            conn.recv_bytes_into(batch.data.cast("B"))
        except (EOFError, OSError):
            return  # the classifier has gone
        try:
            out = np.ascontiguousarray(graphs.get(header["graph"]).logits(batch), np.float32)
        except Exception as exc:  # the model's error, answered; the lane goes on
            try:
                conn.send_bytes(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
            except OSError:
                return
            continue
        try:
            conn.send_bytes(json.dumps({"shape": out.shape}).encode())
            conn.send_bytes(out.data.cast("B"))
        except OSError:
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--policy", choices=("idle", "nice"), default="idle")
    parser.add_argument("fds", type=int, nargs="+", help="one connected socket per lane")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s lane process: %(message)s")
    lower_this_session(SESSION_NICE)  # started as the leader of a session of its own
    graphs = _Graphs()
    lanes = [
        threading.Thread(
            target=_serve,
            args=(Connection(fd), graphs, args.nice, args.policy == "idle"),
            name=f"vq-lane-{i}",
        )
        for i, fd in enumerate(args.fds)
    ]
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join()


if __name__ == "__main__":
    main()
