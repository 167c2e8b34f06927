"""Issue 25's review on a live front: smuggled URL fetches, elongated-image bombs, forged log
lines and DNS rebinding, each with real requests on the wire (raw sockets where a client
library would tidy the request up)."""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pytest

from persistence.local_images import image_signature
from tests.support import images
from tests.support.servers import bento_server
from tests.support.stack import migrate
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a Bento server of its own

# Shared address space (RFC 6598): cloud metadata on some providers, Tailscale. BentoML's own
# guard lets it through; nothing is contacted there: the front's proxy is the recorder below.
CGNAT_URL = "http://100.64.0.1/latest/meta-data/cat.png"


class Front(NamedTuple):
    url: str
    port: int
    log: Path
    fetched: list[str]
    data_dir: Path  # request lines the front sent through its (recording) proxy


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.requestline)
        body = images.png(8, 8)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def front(server_env: dict[str, str], session_dir: Path) -> Iterator[Front]:
    """A keyless front whose outgoing HTTP goes through a loopback proxy that records it.

    BentoML does not check connections to a proxy, so a fetch the front makes of any URL
    shows up here instead of leaving the machine.
    """
    seen: list[str] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    data_dir = session_dir / f"review-data-{uuid.uuid4().hex[:6]}"
    env = {
        **server_env,
        "VQ_DATA_DIR": str(data_dir),  # the embedded default, VQ_SIGNING_KEY unset
        "HTTP_PROXY": proxy_url,
        "http_proxy": proxy_url,
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
    }
    log = session_dir / f"bento-review-{uuid.uuid4().hex[:6]}.log"
    migrate(env)
    try:
        with bento_server(env, log) as url:
            yield Front(url, int(url.rsplit(":", 1)[1]), log, seen, data_dir)
    finally:
        proxy.shutdown()


def raw_request(port: int, head: list[str], body: bytes = b"") -> tuple[int, dict[str, str]]:
    """Send one hand-built HTTP/1.1 request; return its status and JSON body."""
    data = ("\r\n".join([*head, "Connection: close", "", ""])).encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    status_line, _, rest = response.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    try:
        parsed = json.loads(payload) if payload else {}
    except ValueError:
        parsed = {"raw": payload.decode("latin-1")}
    return int(status_line.split()[1]), parsed


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    """Encode (name, filename or None for a text field, value) parts as multipart/form-data."""
    out = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


# --- item 1: a second Content-Type smuggles a URL past the form rules ----------------------


def test_a_second_content_type_cannot_make_predict_fetch_a_url(front: Front) -> None:
    boundary = "vq" + uuid.uuid4().hex
    body = multipart([("image", None, CGNAT_URL.encode())], boundary)
    status, answer = raw_request(
        front.port,
        [
            "POST /predict HTTP/1.1",
            f"Host: 127.0.0.1:{front.port}",
            f"Content-Type: multipart/form-data; boundary={boundary}",
            "Content-Type: application/octet-stream",
            f"Content-Length: {len(body)}",
        ],
        body,
    )
    assert [line for line in front.fetched if "100.64.0.1" in line] == [], front.fetched
    assert status == 400, answer
    assert answer["error"]["code"] == "bad_request", answer
    assert "content-type" in answer["error"]["message"].lower()


@pytest.mark.parametrize("name", ["Content-Length", "Transfer-Encoding"])
def test_a_repeated_framing_header_is_refused(front: Front, name: str) -> None:
    boundary = "vq" + uuid.uuid4().hex
    body = multipart([("image", "a.png", images.png(64, 48))], boundary)
    if name == "Content-Length":
        framing = [f"Content-Length: {len(body)}", f"Content-Length: {len(body)}"]
        sent = body
    else:
        framing = ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]
        sent = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    status, answer = raw_request(
        front.port,
        [
            "POST /predict HTTP/1.1",
            f"Host: 127.0.0.1:{front.port}",
            f"Content-Type: multipart/form-data; boundary={boundary}",
            *framing,
        ],
        sent,
    )
    # uvicorn's parser refuses some of these itself, as plain text: either way, a 400
    assert status == 400, answer


def test_a_url_in_the_image_field_is_never_fetched_and_a_file_still_works(front: Front) -> None:
    form = httpx.post(f"{front.url}/predict", data={"image": CGNAT_URL}, timeout=60)
    assert form.status_code == 422, form.text
    assert [line for line in front.fetched if "100.64.0.1" in line] == []
    upload = httpx.post(
        f"{front.url}/predict", files={"image": ("a.png", images.png(64, 48))}, timeout=60
    )
    assert upload.status_code == 200, upload.text  # README's client: a real upload


# --- item 2: a 1-pixel-wide PNG resized to 256 on its shorter side -------------------------


def vm_peak_kib(port: int) -> int:
    """Return the largest peak resident size (VmHWM) among the server's processes."""
    import psutil

    peak = 0
    for root in psutil.process_iter(["cmdline"]):
        cmdline = root.info["cmdline"] or []
        if "serve" not in cmdline or str(port) not in cmdline:
            continue
        for proc in [root, *root.children(recursive=True)]:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
    return peak


def test_an_elongated_png_gets_422_naming_the_limit_on_every_sync_route(front: Front) -> None:
    tall = images.png(1, 1500)  # 1500 pixels, far under the pixel cap; 256x384000 resized
    tag = httpx.get(f"{front.url}/readyz", timeout=30).json()["model"]["tag"]
    name = tag.partition(":")[0]
    answers = {
        "/predict": httpx.post(
            f"{front.url}/predict", files={"image": ("t.png", tall)}, timeout=60
        ),
        "/predictions": httpx.put(f"{front.url}/predictions/{name}", content=tall, timeout=60),
    }
    for route, resp in answers.items():
        assert resp.status_code == 422, (route, resp.text)
        assert "elongated" in resp.text.lower(), (route, resp.text)  # each protocol's shape
        assert "16777216" in resp.text, (route, resp.text)  # the limit is named


def test_elongated_images_leave_the_servers_peak_memory_alone(front: Front) -> None:
    before = vm_peak_kib(front.port)
    for height in (3000, 6000):  # 0.6 and 1.2 GB resized (bilinear) before the fix
        resp = httpx.post(
            f"{front.url}/predict", files={"image": ("t.png", images.png(1, height))}, timeout=120
        )
        assert resp.status_code == 422, resp.text
    grown_mib = (vm_peak_kib(front.port) - before) / 1024
    assert grown_mib < 256, f"peak resident memory grew by {grown_mib:.0f} MiB"


def test_wide_but_ordinary_images_still_classify(front: Front) -> None:
    for width, height in ((2000, 300), (60, 3000), (4, 1000)):  # resized: <= 16 MP
        resp = httpx.post(
            f"{front.url}/predict",
            files={"image": ("w.png", images.png(width, height))},
            timeout=120,
        )
        assert resp.status_code == 200, ((width, height), resp.text)


# --- item 7: a newline in the path -----------------------------------------------------------


def test_a_newline_in_the_path_writes_no_forged_log_line(front: Front) -> None:
    marker = f"FORGED-{uuid.uuid4().hex[:8]}"
    status, _ = raw_request(
        front.port,
        [f"GET /nope%0a2026-01-01%20ERROR%20{marker}%0d HTTP/1.1", f"Host: 127.0.0.1:{front.port}"],
    )
    assert status == 404
    import time

    time.sleep(1)  # BentoML writes its access line after the answer
    lines = [line for line in front.log.read_text(errors="replace").splitlines() if marker in line]
    assert lines, "the request was not logged at all"
    assert not any(line.startswith("2026-01-01") for line in lines), lines
    assert any("\\x0a2026-01-01" in line for line in lines), lines


# --- item 9: DNS rebinding ---------------------------------------------------------------


def test_a_keyless_front_answers_only_its_own_host_names(front: Front) -> None:
    def jobs(host: str) -> httpx.Response:
        return httpx.get(f"{front.url}/v1/jobs", headers={"Host": host}, timeout=30)

    refused = jobs(f"rebind-{uuid.uuid4().hex[:6]}.example:{front.port}")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "host_not_allowed"
    for host in (f"127.0.0.1:{front.port}", f"localhost:{front.port}", "[::1]", "app.localhost"):
        resp = jobs(host)
        assert resp.status_code != 400 or "host_not_allowed" not in resp.text, (host, resp.text)


# --- item 5: no built-in signing key ---------------------------------------------------------


def test_the_old_built_in_key_mints_no_image_link(front: Front) -> None:
    data = images.png(40, 30, seed=25)
    resp = httpx.post(f"{front.url}/v1/jobs", files={"images": ("a.png", data)}, timeout=30)
    assert resp.status_code == 202, resp.text
    link = httpx.URL(resp.json()["jobs"][0]["image"]["url"])
    assert httpx.get(link, timeout=30).content == data  # the link the service gave works
    key = link.path.removeprefix("/v1/images/")
    expires = int(link.params["expires"])
    forged = image_signature(key, expires, b"dev-insecure-signing-key")
    resp = httpx.get(link.copy_with(params={"expires": expires, "sig": forged}), timeout=30)
    assert resp.status_code == 404, "the built-in key signed a working link"
    key_file = front.data_dir / "signing-key"
    assert key_file.stat().st_mode & 0o777 == 0o600


# --- item 3: /metrics labels -------------------------------------------------------------


def test_metrics_label_requests_by_route_template_not_by_raw_path(front: Front) -> None:
    job_id, junk = str(uuid.uuid4()), f"probe-{uuid.uuid4().hex}"
    assert httpx.get(f"{front.url}/v1/jobs/{job_id}", timeout=30).status_code in (404, 503)
    for n in range(5):
        assert httpx.get(f"{front.url}/{junk}/{n}", timeout=30).status_code == 404
    ok = httpx.post(
        f"{front.url}/predict", files={"image": ("a.png", images.png(32, 32))}, timeout=60
    )
    assert ok.status_code == 200, ok.text

    def scraped() -> str | None:
        text = httpx.get(f"{front.url}/metrics", timeout=30).text
        return text if 'endpoint="/predict"' in text else None

    text = wait_until(scraped, 30, "the request series on /metrics")
    labels = sorted(set(re.findall(r'endpoint="([^"]*)"', text)))
    assert "/v1/jobs/{job_id}" in labels, labels
    assert job_id not in text and junk not in text
    assert 'endpoint="/predict"' in text
    assert 'endpoint="/{unmatched}"' in text


# --- item 8: crop shapes on a classifier served on its own ------------------------------------


@pytest.fixture(scope="module")
def classifier_url(server_env: dict[str, str], session_dir: Path) -> Iterator[str]:
    """``bentoml serve service:Classifier`` on its own, as VQ_CLASSIFIER_URL deployments run it."""
    log = session_dir / f"classifier-review-{uuid.uuid4().hex[:6]}.log"
    with bento_server(server_env, log, service="service:Classifier") as url:
        yield url


def test_a_badly_shaped_crop_request_gets_400_and_spoils_no_batch(classifier_url: str) -> None:
    bad = {"crops": [[[[7, 7, 7]]] * 300]}  # (1, 300, 1, 3): a column, not a square crop
    good = {"crops": np.zeros((1, 224, 224, 3), np.uint8).tolist()}

    def classify(body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{classifier_url}/classify", json=body, timeout=60)  # default model

    with ThreadPoolExecutor(8) as pool:  # bad ones among good ones: they may share batches
        answers = list(pool.map(classify, [bad, good] * 4))
    for resp in answers[0::2]:
        assert resp.status_code == 400, resp.text
        assert "(N, S, S, 3)" in resp.text
    for resp in answers[1::2]:
        assert resp.status_code == 200, resp.text
