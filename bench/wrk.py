"""Closed-loop load with ``wrk`` (C, one thread): a load generator that barely competes.

On a 2-core machine the load generator shares the cores with the stack it measures. The
httpx generator in ``bench.load`` costs ~2 ms of CPU per request (about 5% of a request's
whole CPU budget here); wrk costs a tenth of that, so the served numbers reflect the server.
The requests are the same multipart uploads, prepared once; wrk's Lua ``done`` hook prints
the counts and percentiles as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.load import LoadResult

BOUNDARY = "vqbenchboundary7d2f"

_SCRIPT = """
local bodies = {}
for i, path in ipairs({PATHS}) do
  local fh = assert(io.open(path, "rb"))
  bodies[i] = fh:read("*a")
  fh:close()
end
local headers = {HEADERS}
local requests = {}
for i, body in ipairs(bodies) do
  requests[i] = wrk.format("POST", "{ROUTE}", headers[i], body)
end
local n = 0
request = function()
  n = n + 1
  return requests[(n % #requests) + 1]
end
done = function(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def multipart(data: bytes, field: str = "image") -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
        'filename="img"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _lua_table(headers: dict[str, str]) -> str:
    return "{" + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()) + "}"


def run_wrk(
    url: str,
    payloads: list[bytes],
    concurrency: int,
    seconds: float,
    v2_model: str | None = None,
) -> LoadResult:
    """Run wrk against ``/predict`` (v2 infer of ``v2_model`` if given) for ``seconds``."""
    from bench.load import v2_infer_request

    with tempfile.TemporaryDirectory(prefix="vq-wrk-") as tmp:
        paths, headers = [], []
        for i, data in enumerate(payloads):
            if v2_model is None:
                head = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
                body = multipart(data)
            else:
                head, body = v2_infer_request(data)
            path = Path(tmp) / f"body{i}"
            path.write_bytes(body)
            paths.append(str(path))
            headers.append(_lua_table(head))
        route = "/predict" if v2_model is None else f"/v2/models/{v2_model}/infer"
        script = (
            _SCRIPT.replace("{PATHS}", "{" + ", ".join(json.dumps(p) for p in paths) + "}")
            .replace("{HEADERS}", "{" + ", ".join(headers) + "}")
            .replace("{ROUTE}", route)
        )
        script_path = Path(tmp) / "load.lua"
        script_path.write_text(script)
        proc = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "120s",
                "-s",
                str(script_path),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        concurrency,
        int(stats["requests"]),
        int(errors),
        stats["duration_us"] / 1e6,
        stats["p50_us"] / 1000,
        stats["p99_us"] / 1000,
        generator="wrk",
    )
