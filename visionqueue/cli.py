"""The ``visionqueue`` command: serve, import the model, classify, submit and watch jobs.

Client commands talk to a server (``--url``, default ``$VQ_URL`` or http://127.0.0.1:3000)
with an optional API key (``--api-key`` or ``$VQ_API_KEY``); ``--json`` prints machine output.
These common options go before or after the command name. After ``make run`` the command is
``.venv/bin/visionqueue`` (or ``visionqueue`` once ``source .venv/bin/activate``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


class CLIError(Exception):
    """A failure to report in one readable line (exit code 1)."""


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=args.timeout)


def _check(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            raise CLIError(f"{error.get('code')}: {error.get('message')} (HTTP {resp.status_code})")
        raise CLIError(f"HTTP {resp.status_code} from {resp.request.url}")
    return body if isinstance(body, dict) else {"value": body}


def _images(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise CLIError(f"no such file or directory: {raw}")
    if not found:
        raise CLIError("no images found")
    return found


def cmd_classify(args: argparse.Namespace) -> int:
    rows = []
    failed = 0
    with _client(args) as client:
        for path in _images(args.images):
            try:
                with path.open("rb") as fh:
                    body = _check(
                        client.post(
                            "/predict",
                            files={"image": (path.name, fh)},
                            data={"top_k": str(args.top_k)},
                        )
                    )
                rows.append({"image": str(path), **body})
            except (CLIError, httpx.HTTPError) as exc:
                failed += 1
                rows.append({"image": str(path), "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if "error" in row:
                print(f"{row['image']}: ERROR {row['error']}")
                continue
            print(row["image"])
            for p in row["predictions"]:
                print(f"  {p['confidence']:7.2%}  {p['class']} ({p['index']})")
            model = row["model"]
            print(f"  model {model['tag']} weights {model['weights']}")
            if model.get("demo"):
                print("  WARNING: demo model (random-init weights): predictions are meaningless")
    return 1 if failed else 0


def _progress(done: int, total: int, failed: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done, {failed} failed"
    )
    sys.stderr.flush()


def cmd_submit(args: argparse.Namespace) -> int:
    paths = _images(args.images)
    ids: dict[str, str] = {}
    data: dict[str, str] = {}
    if args.webhook:
        data["webhook_url"] = args.webhook
    if args.metadata:
        data["metadata"] = args.metadata
    with _client(args) as client:
        for path in paths:
            with path.open("rb") as fh:
                body = _check(client.post("/v1/jobs", files={"images": (path.name, fh)}, data=data))
            ids[body["jobs"][0]["id"]] = str(path)
        if not args.wait:
            out = [{"id": i, "image": p} for i, p in ids.items()]
            print(
                json.dumps(out, indent=2)
                if args.json
                else "\n".join(f"{i}  {p}" for i, p in ids.items())
            )
            return 0
        final: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + args.wait_timeout
        while len(final) < len(ids) and time.monotonic() < deadline:
            for job_id in [i for i in ids if i not in final]:
                job = _check(client.get(f"/v1/jobs/{job_id}"))
                if job["status"] in ("completed", "failed", "cancelled"):
                    final[job_id] = job
            failed = sum(1 for j in final.values() if j["status"] != "completed")
            if not args.json:
                _progress(len(final), len(ids), failed)
            if len(final) < len(ids):
                time.sleep(0.5)
    if not args.json:
        sys.stderr.write("\n")
    failed = sum(1 for j in final.values() if j["status"] != "completed")
    missing = len(ids) - len(final)
    if args.json:
        print(
            json.dumps(
                [
                    {**final.get(i, {"id": i, "status": "timeout"}), "image": p}
                    for i, p in ids.items()
                ],
                indent=2,
            )
        )
    else:
        for job_id, name in ids.items():
            outcome = final.get(job_id)
            if outcome is None:
                print(f"{name}: still running after {args.wait_timeout:.0f}s ({job_id})")
            elif outcome["status"] == "completed":
                top = outcome["result"]["predictions"][0]
                print(f"{name}: {top['class']} ({top['confidence']:.2%})")
            else:
                err = outcome.get("error") or {}
                print(
                    f"{name}: {outcome['status'].upper()} {err.get('code', '')}: {err.get('message', '')}"
                )
        print(
            f"{len(ids)} submitted, {len(final) - failed} completed, {failed} failed, {missing} unfinished"
        )
    return 1 if failed or missing else 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = _check(client.get(f"/v1/jobs/{args.job_id}"))
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    print(f"{job['id']}  {job['status']}  attempts={job['attempts']}  created={job['created_at']}")
    if job.get("result"):
        for p in job["result"]["predictions"]:
            print(f"  {p['confidence']:7.2%}  {p['class']}")
    if job.get("error"):
        print(f"  error {job['error']['code']}: {job['error']['message']}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    with _client(args) as client:
        body = _check(client.get("/v1/jobs", params=params))
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    for job in body["jobs"]:
        top = job["result"]["predictions"][0]["class"] if job.get("result") else ""
        print(f"{job['id']}  {job['status']:<10}  {job['created_at']}  {top}")
    if body.get("next_cursor"):
        print(f"(more: --cursor {body['next_cursor']})")
    return 0


def cmd_serve(_: argparse.Namespace) -> int:
    from visionqueue.launcher import main as launch

    return launch()


def cmd_import_model(args: argparse.Namespace) -> int:
    from model_store.__main__ import run_import

    return run_import(args)


def cmd_models(args: argparse.Namespace) -> int:
    from model_store.__main__ import run_delete, run_list, run_promote

    if args.action == "list":
        return run_list(args)
    if args.action == "delete":
        return run_delete(args)
    code = run_promote(args)
    if code or args.no_wait:
        return code
    return _wait_for_switch(args)


def _wait_for_switch(args: argparse.Namespace) -> int:
    """Poll ``GET /v1/models/NAME`` until the server answers with the promoted tag."""
    from model_store.store import get_model

    stored = get_model(args.tag)
    deadline = time.monotonic() + args.wait_timeout
    try:
        with _client(args) as client:
            while time.monotonic() < deadline:
                resp = client.get(f"/v1/models/{stored.name}")
                if resp.status_code == 404:
                    print(f"note: {args.url} does not serve {stored.name}; recorded for its start")
                    return 0
                if resp.status_code == 200 and resp.json().get("tag") == stored.tag:
                    print(f"{args.url} now serves {stored.tag}")
                    return 0
                time.sleep(0.25)
    except httpx.HTTPError:
        print(f"note: {args.url} is not reachable; the switch happens when it (re)starts")
        return 0
    raise CLIError(f"{args.url} still does not serve {stored.tag} after {args.wait_timeout:.0f}s")


def cmd_bench(args: argparse.Namespace) -> int:
    # The benchmark is not installed with the product: it runs from a source checkout, as a
    # program of its own (`python -m bench`); the product never imports it.
    import importlib.util
    import subprocess

    try:
        found = importlib.util.find_spec("bench.__main__") is not None
    except ImportError:
        found = False
    if not found:
        print(
            "visionqueue bench: the benchmark is a developer tool that is not installed with "
            "the product; run `make bench` in a source checkout",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "bench", *args.bench_args])


def add_common_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """Add ``--url``, ``--api-key``, ``--timeout`` and ``--json`` to ``parser``.

    The top-level parser holds the defaults; each command's copy has none (SUPPRESS), so an
    option given before the command name is not overwritten by the command's default.
    """

    def default(value: Any) -> Any:
        return value if with_defaults else argparse.SUPPRESS

    url = os.environ.get("VQ_URL", "http://127.0.0.1:3000")
    parser.add_argument("--url", default=default(url), help=f"server URL (default {url})")
    parser.add_argument(
        "--api-key", default=default(os.environ.get("VQ_API_KEY")), help="default $VQ_API_KEY"
    )
    parser.add_argument(
        "--timeout", type=float, default=default(60.0), help="seconds per request (60)"
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, with_defaults=False)
    parser = argparse.ArgumentParser(
        prog="visionqueue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser, with_defaults=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_, parents=[common])
        cmd.set_defaults(func=func)
        return cmd

    command("serve", "start the whole system (what `make run` runs)", cmd_serve)
    from model_store.__main__ import add_import_arguments

    imp = command(
        "import-model",
        "import a classifier (state_dict, TorchScript, ONNX) into the BentoML store",
        cmd_import_model,
    )
    add_import_arguments(imp, with_json=False)
    mdl = command("models", "list, promote (or roll back) and delete model versions", cmd_models)
    mdl_sub = mdl.add_subparsers(dest="action", required=True)
    lst = mdl_sub.add_parser("list", help="stored versions, newest first", parents=[common])
    lst.add_argument("name", nargs="?", default=None)
    pro = mdl_sub.add_parser(
        "promote",
        help="serve NAME:TAG, waiting until the server at --url does (rolling back is the same)",
        parents=[common],
    )
    pro.add_argument("tag")
    pro.add_argument("--no-wait", action="store_true", help="do not wait for the server")
    pro.add_argument("--wait-timeout", type=float, default=120.0)
    dele = mdl_sub.add_parser("delete", help="delete a stored version", parents=[common])
    dele.add_argument("tag")
    cls = command("classify", "classify images now (POST /predict)", cmd_classify)
    cls.add_argument("images", nargs="+")
    cls.add_argument("--top-k", type=int, default=5)
    sbm = command("submit", "submit images as async jobs", cmd_submit)
    sbm.add_argument("images", nargs="+", help="files or directories")
    sbm.add_argument("--wait", action="store_true", help="wait for every job; exit 1 if any failed")
    sbm.add_argument("--wait-timeout", type=float, default=600.0)
    sbm.add_argument("--webhook", help="webhook URL notified when each job finishes")
    sbm.add_argument("--metadata", help="JSON object stored with each job")
    st = command("status", "show one job", cmd_status)
    st.add_argument("job_id")
    jb = command("jobs", "list recent jobs", cmd_jobs)
    jb.add_argument("--status")
    jb.add_argument("--limit", type=int, default=20)
    bn = command("bench", "run the benchmark from a source checkout (make bench)", cmd_bench)
    bn.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CLIError as exc:
        print(f"visionqueue: {exc}", file=sys.stderr)
        return 1
    except httpx.ConnectError:
        print(f"visionqueue: cannot reach {args.url} (is `make run` running?)", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"visionqueue: request failed: {type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
