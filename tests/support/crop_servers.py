"""A classifier worker's crop socket in a process of its own, for tests that kill and restart it.

The process serves the real ``serve_crops`` at a path and answers each crop with a row: the
crop's pixel sum, the worker's number and the class of work its frame carried. A crop of value
0 is never answered; one of 255 fails as a bug in the model would (the classifier's 500).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = """
import asyncio, pathlib, sys
import numpy as np
from visionqueue.dataplane.crop_socket import serve_crops

class Metrics:
    def started(self, api): pass
    def finished(self, api, status, seconds): pass

async def infer(api, crops, work_class, timeout_s):
    if crops.max() == 0:
        await asyncio.Event().wait()
    if crops.max() == 255:
        raise RuntimeError("a bug in the model")
    sums = crops.reshape(len(crops), -1).sum(axis=1, dtype=np.float32)
    name = np.full_like(sums, float(sys.argv[2]))
    return np.stack([sums, name, np.full_like(sums, work_class)], axis=1)

async def main():
    path = pathlib.Path(sys.argv[1])
    server = await serve_crops(path, frozenset({"classify"}), infer, Metrics())
    print("listening", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


@contextlib.contextmanager
def socket_folder() -> Iterator[Path]:
    """A short folder for Unix sockets (a pytest tmp_path can pass AF_UNIX's 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="vqcs-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_crop_server(path: Path, name: int) -> subprocess.Popen[str]:
    """Start a classifier worker listening at ``path``, its rows marked ``name``; wait for it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), str(name)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc
