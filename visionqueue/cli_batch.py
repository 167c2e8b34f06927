"""``visionqueue batch SOURCE``: classify a bucket prefix, a manifest or a server folder
(``POST /v1/batches``), optionally waiting with a progress bar; print where the results are."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

FINAL = ("completed", "failed", "cancelled")


def add_batch_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "source", help="s3://BUCKET/PREFIX/, s3://BUCKET/KEY.txt|.jsonl, or file:///DIR/"
    )
    cmd.add_argument("--model", help="a served model's name (default: the default model)")
    cmd.add_argument("--output", help="s3://BUCKET/PREFIX/ for the part files")
    cmd.add_argument("--top-k", type=int, default=5)
    cmd.add_argument("--webhook", help="webhook URL notified once when the batch ends")
    cmd.add_argument("--metadata", help="JSON object stored with the batch")
    cmd.add_argument("--wait", action="store_true", help="wait with a progress bar; exit 1 "
                     "unless it completed")  # fmt: skip
    cmd.add_argument("--wait-timeout", type=float, default=86400.0)


def cmd_batch(args: argparse.Namespace) -> int:
    from visionqueue.cli import CLIError, _check, _client, _progress

    body: dict[str, Any] = {"source": args.source, "top_k": args.top_k}
    for field, value in (("model", args.model), ("output", args.output)):
        if value:
            body[field] = value
    if args.webhook:
        body["webhook_url"] = args.webhook
    if args.metadata:
        try:
            body["metadata"] = json.loads(args.metadata)
        except ValueError:
            raise CLIError("--metadata must be a JSON object") from None
    with _client(args) as client:
        batch = _check(client.post("/v1/batches", json=body))
        if not args.json:
            print(f"batch {batch['id']} accepted", file=sys.stderr)
        deadline = time.monotonic() + args.wait_timeout
        while args.wait and batch["status"] not in FINAL and time.monotonic() < deadline:
            time.sleep(1.0)
            batch = _check(client.get(f"/v1/batches/{batch['id']}"))
            if not args.json:
                total = batch["total"] or batch["planned"] or 0
                _progress(batch["done"] + batch["failed"], total, batch["failed"])
                rate = batch["images_per_second"]
                eta = batch["eta_s"]
                if rate:
                    sys.stderr.write(f"  {rate:.1f} img/s" + (f", ETA {eta:.0f}s" if eta else ""))
    if args.json:
        print(json.dumps(batch, indent=2))
    else:
        if args.wait:
            sys.stderr.write("\n")
        print(f"{batch['id']}  {batch['status']}  {batch['done']} done, {batch['failed']} failed")
        print(f"results: {batch['results_url']}")
        print(f"parts:   {batch['parts']}")
    if args.wait:
        return 0 if batch["status"] == "completed" else 1
    return 0
