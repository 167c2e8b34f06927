"""Async jobs on the server stack, the classifier in the front vs on its own (the direct path).

``python -m bench.direct [--jobs N]``: the same photos through ``/v1/jobs`` on two stacks
(PostgreSQL, Redis, an S3-protocol server, one Celery worker): ``bentoml serve
service:VisionQueue`` with its classifier inside, then ``bentoml serve service:Classifier``
plus a front and a worker with ``VQ_CLASSIFIER_URL``, whose workers crop and call the
classifier themselves. Prints jobs/s and each process' CPU per job (docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.__main__ import async_jobs_with_cpu, payloads, stack_env
from bench.load import run_async_jobs


@contextlib.contextmanager
def classifier(env: dict[str, str], direct: bool, log_dir: Path) -> Iterator[dict[str, str]]:
    """Yield the env of a stack: as given, or with a classifier served on its own."""
    if not direct:
        yield env
        return
    from tests.support.servers import bento_server

    with bento_server(env, log_dir / "classifier.log", service="service:Classifier") as url:
        yield {**env, "VQ_CLASSIFIER_URL": url}


def measure(direct: bool, jobs: int, per_request: int, workdir: Path) -> dict[str, Any]:
    """Run ``jobs`` jobs (after a warm-up) on one topology; return throughput and CPU per job."""
    from model_store.store import ensure_model
    from tests.support.stack import production_stack

    name = "direct" if direct else "in-front"
    stored = ensure_model("random", seed=0)
    env = stack_env(stored.tag, workdir / f"data-{name}")
    data = payloads()
    log_dir = workdir / f"logs-{name}"
    log_dir.mkdir(parents=True)
    with (
        classifier(env, direct, log_dir) as topology_env,
        production_stack(topology_env, log_dir, redis_db=12) as stack,
    ):
        stack.start_worker(concurrency=16)
        run_async_jobs(stack.url, data, 32, stack.database_url, per_request=per_request)
        load_before = os.getloadavg()[0]
        result = async_jobs_with_cpu(stack, env, data, jobs, per_request)
        result["load"] = [load_before, os.getloadavg()[0]]
    result["topology"] = name
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.direct")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--per-request", type=int, default=10, help="images per /v1/jobs request")
    parser.add_argument("--only", choices=("in-front", "direct"), default=None)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="vq-bench-direct-"))
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml"))
    for direct in (False, True):
        if args.only and args.only != ("direct" if direct else "in-front"):
            continue
        result = measure(direct, args.jobs, args.per_request, workdir)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
