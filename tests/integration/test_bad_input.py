"""Hostile uploads against the live stack: each gets a specific 4xx, never a 5xx, and nothing is stored.

Every case goes to both ``/classify`` (async acceptance) and ``/predict`` (sync decode).
test_predict_server.py and test_jobs_e2e.py already cover a PNG header bomb, truncated and
empty files, TIFF, text, a streamed body without Content-Length and the first webhook checks.
"""

from __future__ import annotations

import io
import json
import select
import socket
import struct
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.jobs_factories import database, job_rows
from tests.support import images
from tests.support.stack import Stored

pytestmark = pytest.mark.integration

ROUTES = ("/classify", "/predict")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


# --- hostile and unusual images -------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return struct.pack(">I", len(data)) + kind + data + crc


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` (one row of data follows)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 65, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def gif_bomb(size: int = 65535) -> bytes:
    """A 35-byte GIF whose screen and first frame claim ``size x size`` pixels."""
    screen = b"GIF89a" + struct.pack("<HHBBB", size, size, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, size, size, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def webp_lossless_bomb(size: int = 16384) -> bytes:
    """A 1x1 lossless WebP whose VP8L header is patched to claim ``size x size``."""
    data = bytearray(images.encode(Image.new("RGB", (1, 1)), "WEBP", lossless=True))
    at = data.find(b"VP8L") + 9  # after the chunk header and the 0x2f signature byte
    bits = int.from_bytes(data[at : at + 4], "little") & ~((1 << 28) - 1)
    bits |= (size - 1) | ((size - 1) << 14)
    data[at : at + 4] = bits.to_bytes(4, "little")
    return bytes(data)


def animated_webp(lossless: bool = False) -> bytes:
    frames = [images.noise_image(96, 64, seed=20 + i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(
        buf, "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=lossless
    )
    return buf.getvalue()


def webp_canvas_bomb(size: int = 16384) -> bytes:
    """An animated WebP whose VP8X canvas claims ``size x size`` (frames are 96x64)."""
    data = bytearray(animated_webp())
    at = data.find(b"VP8X") + 12  # after the chunk header and 4 bytes of flags
    data[at : at + 3] = (size - 1).to_bytes(3, "little")
    data[at + 3 : at + 6] = (size - 1).to_bytes(3, "little")
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(images.jpeg(16, 16))
    at = data.find(b"\xff\xc0") + 5  # SOF0: marker, length, precision, then height, width
    data[at : at + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(images.encode(images.noise_image(4, 4), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def a_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("payload.sh", "#!/bin/sh\necho pwned\n")
    return buf.getvalue()


def jpeg_header_then_zip() -> bytes:
    """A polyglot: JPEG start-of-image and JFIF header, then a zip archive (no image data)."""
    soi_app0 = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return soi_app0 + a_zip()


def png16_and_its_8bit_twin() -> tuple[bytes, bytes]:
    grey = np.asarray(images.noise_image(160, 120, "L", seed=3)).astype(np.uint16)
    sixteen = images.encode(Image.fromarray(grey * 257), "PNG")  # v * 257 / 256 -> v
    return sixteen, images.encode(Image.fromarray(grey.astype(np.uint8)), "PNG")


def png48() -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow reads it, reduced to 8 bits)."""
    width, height = 40, 30
    rows = np.random.default_rng(5).integers(0, 256, (height, width * 6), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


REFUSED_IMAGES = {
    "gif-bomb": (gif_bomb(), 422, "image_too_large"),
    "webp-lossless-bomb": (webp_lossless_bomb(), 422, "image_too_large"),
    "webp-canvas-bomb": (webp_canvas_bomb(), 422, "image_too_large"),
    "jpeg-65500x65500": (jpeg_claiming(65500, 65500), 422, "image_too_large"),
    "bmp-100000-square": (bmp_claiming(100_000, -100_000), 422, "image_too_large"),
    "png-2147483647x1": (png_claiming(2**31 - 1, 1), 422, "image_too_large"),
    "png-zero-width": (png_claiming(0, 10), 400, "invalid_image"),
    "bmp-zero-width": (bmp_claiming(0, 4), 400, "invalid_image"),
    "jpeg-header-then-zip": (jpeg_header_then_zip(), 400, "invalid_image"),
    "zip": (a_zip(), 415, "unsupported_media_type"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"/>', 415, "unsupported_media_type"),
    "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", 415, "unsupported_media_type"),
}


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def storage(stack: Any) -> Stored:
    return Stored(stack)


@pytest.fixture
def unchanged(storage: Stored) -> Iterator[None]:
    """Assert that the test stored no job row and no S3 object."""
    before = storage.counts()
    yield
    assert storage.counts() == before, "a refused upload left a row or an object behind"


def post(url: str, route: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}{route}", timeout=60, **kwargs)


def image_form(data: bytes, name: str = "x.img") -> dict[str, Any]:
    return {"files": {"image": (name, data, "application/octet-stream")}}


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["error"]["code"] == code
    assert "Traceback" not in resp.text


def predictions(resp: httpx.Response) -> list[tuple[int, float]]:
    assert resp.status_code == 200, resp.text[:500]
    return [(p["index"], round(p["confidence"], 6)) for p in resp.json()["predictions"]]


# --- images ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(REFUSED_IMAGES))
def test_hostile_images_are_refused_with_a_specific_code(stack: Any, case: str, route: str) -> None:
    data, status, code = REFUSED_IMAGES[case]
    assert_error(post(stack.url, route, **image_form(data)), status, code)


@pytest.mark.parametrize(
    "data",
    [
        png16_and_its_8bit_twin()[0],
        png48(),
        images.cmyk_jpeg(),
        animated_webp(),
        images.animated_gif(),
    ],
    ids=["png-16bit-grey", "png-16bit-rgb", "cmyk-jpeg", "animated-webp", "animated-gif"],
)
def test_unusual_but_valid_images_are_accepted(stack: Any, data: bytes) -> None:
    accepted = post(stack.url, "/classify", **image_form(data))
    assert accepted.status_code == 202, accepted.text
    assert len(predictions(post(stack.url, "/predict", **image_form(data)))) == 5


def test_16bit_png_is_scaled_not_clipped(stack: Any) -> None:
    sixteen, eight = png16_and_its_8bit_twin()
    got = predictions(post(stack.url, "/predict", **image_form(sixteen)))
    assert got == predictions(post(stack.url, "/predict", **image_form(eight)))


def test_animated_webp_is_classified_by_its_first_frame(stack: Any) -> None:
    animation = animated_webp(lossless=True)
    first = images.encode(Image.open(io.BytesIO(animation)).convert("RGB"), "PNG")
    got = predictions(post(stack.url, "/predict", **image_form(animation)))
    assert got == predictions(post(stack.url, "/predict", **image_form(first)))


def test_a_jpeg_with_a_zip_appended_is_just_that_jpeg(stack: Any) -> None:
    """Bytes after the end of the JPEG are never interpreted; the image is what counts."""
    plain = images.jpeg(96, 80, seed=9)
    polyglot = plain + a_zip()
    assert predictions(post(stack.url, "/predict", **image_form(polyglot))) == predictions(
        post(stack.url, "/predict", **image_form(plain))
    )


# --- multipart abuse -------------------------------------------------------------------------

JPEG = images.jpeg(64, 64, seed=77)


def multipart(*parts: tuple[bytes, bytes]) -> dict[str, Any]:
    """A raw multipart body from (Content-Disposition params, content) pairs."""
    body = b"".join(
        b"--xyz\r\nContent-Disposition: form-data; " + params + b"\r\n\r\n" + data + b"\r\n"
        for params, data in parts
    )
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    return {"content": body + b"--xyz--\r\n", "headers": headers}


MULTIPART_ABUSE: dict[str, tuple[dict[str, Any], int, str]] = {
    "two-images": (
        {"files": [("image", ("a.jpg", JPEG)), ("image", ("b.jpg", JPEG))]},
        422,
        "too_many_images",
    ),
    "100kb-field-name": (
        multipart(
            (b'name="' + b"n" * 100_000 + b'"', b"1"), (b'name="image"; filename="a.jpg"', JPEG)
        ),
        400,
        "bad_request",
    ),
    "100kb-file-name": (
        multipart((b'name="image"; filename="' + b"f" * 100_000 + b'"', JPEG)),
        400,
        "bad_request",
    ),
    # BentoML would take a text 'image' for a URL to download
    "image-as-text-url": (
        multipart((b'name="image"', b"http://127.0.0.1:9/cat.jpg")),
        422,
        "validation_error",
    ),
    "urlencoded-image": (
        {"data": {"image": "http://127.0.0.1:9/cat.jpg"}},
        422,
        "validation_error",
    ),
    "2000-parts": (
        {"files": [("image", ("a.jpg", JPEG))], "data": {f"f{i}": "1" for i in range(2000)}},
        400,
        "bad_request",
    ),
    "part-without-name": (multipart((b'filename="a.jpg"', JPEG)), 400, "bad_request"),
    "no-boundary": (
        {"content": b"whatever", "headers": {"content-type": "multipart/form-data"}},
        400,
        "bad_request",
    ),
    "binary-file-in-another-field": (
        {"files": {"image": ("a.jpg", JPEG), "picture": ("b.jpg", JPEG)}},
        422,
        "validation_error",
    ),
    "no-image": (multipart((b'name="top_k"', b"3")), 400, "missing_field"),
}


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(MULTIPART_ABUSE))
def test_multipart_abuse_is_a_4xx(stack: Any, case: str, route: str) -> None:
    request, status, code = MULTIPART_ABUSE[case]
    assert_error(post(stack.url, route, **request), status, code)


def test_control_characters_in_a_file_name_are_dropped(stack: Any) -> None:
    name = b"a\x00b\x1b[31m\xc3\xa9.jpg"
    resp = post(
        stack.url, "/classify", **multipart((b'name="image"; filename="' + name + b'"', JPEG))
    )
    assert resp.status_code == 202, resp.text
    with database(stack.database_url) as engine:
        job = job_rows(engine, [resp.json()["task_id"]])[resp.json()["task_id"]]
    assert job.metadata_["filename"] == "ab[31mé.jpg"
    # /predict classifies the image whatever its name's escapes and accents...
    escaped = name.replace(b"\x00", b"")
    synced = post(
        stack.url, "/predict", **multipart((b'name="image"; filename="' + escaped + b'"', JPEG))
    )
    assert synced.status_code == 200, synced.text
    assert len(synced.json()["predictions"]) == 5
    # ...but BentoML's upload type refuses a NUL in the name: a precise 422, never a 500
    nul = post(
        stack.url, "/predict", **multipart((b'name="image"; filename="' + name + b'"', JPEG))
    )
    assert_error(nul, 422, "validation_error")
    assert "null byte" in nul.json()["error"]["message"]


def send_chunked(url: str, route: str, total: int) -> tuple[int, int]:
    """Stream a multipart body of ``total`` bytes with chunked encoding, 1 MiB at a time,
    stopping as soon as the server answers; return (status, bytes sent by then)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    try:
        head = (
            f"POST {route} HTTP/1.1\r\nHost: {parts.netloc}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
        )
        sock.sendall(head.encode())
        preamble = (
            b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        )
        block = b"\xff" * (1024 * 1024)
        sent = 0
        for data in [preamble] + [block] * (total // len(block)):
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there: stop sending
            try:
                sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(data)
        answer = b""
        while b"\r\n" not in answer:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 "), f"no response after {sent} bytes: {answer!r}"
        return int(answer.split(b" ", 2)[1]), sent
    finally:
        sock.close()


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("route", ROUTES)
def test_a_chunked_body_over_the_cap_is_refused_before_it_is_all_sent(
    stack: Any, route: str
) -> None:
    total = 3 * MAX_UPLOAD_BYTES
    status, sent = send_chunked(stack.url, route, total)
    assert status == 413
    assert sent < total, "the server read the whole oversized body before answering"


# --- form fields -----------------------------------------------------------------------------

BAD_FIELDS: dict[str, tuple[dict[str, str | list[str]], str]] = {
    "metadata-17kb": ({"metadata": json.dumps({"k": "v" * 17_000})}, "metadata_too_large"),
    "metadata-string": ({"metadata": '"just a string"'}, "invalid_metadata"),
    "metadata-null": ({"metadata": "null"}, "invalid_metadata"),
    "metadata-not-json": ({"metadata": "{user: 42}"}, "invalid_metadata"),
    "metadata-nan": ({"metadata": '{"score": NaN}'}, "invalid_metadata"),
    "metadata-1e999": ({"metadata": '{"score": 1e999}'}, "invalid_metadata"),
    "metadata-nested-8000": ({"metadata": "[" * 8000 + "]" * 8000}, "invalid_metadata"),
    "metadata-nested-40": ({"metadata": '{"a":' * 40 + "1" + "}" * 40}, "invalid_metadata"),
    "metadata-nul": ({"metadata": '{"a": "\\u0000"}'}, "invalid_metadata"),
    "metadata-lone-surrogate": ({"metadata": '{"a": "\\ud800"}'}, "invalid_metadata"),
    "metadata-twice": ({"metadata": ["{}", "{}"]}, "validation_error"),
    "webhook-javascript": ({"webhook_url": "javascript:alert(1)"}, "invalid_webhook_url"),
    "webhook-credentials": ({"webhook_url": "http://u:p@192.0.2.1/"}, "invalid_webhook_url"),
    "webhook-5000-chars": (
        {"webhook_url": "http://192.0.2.1/" + "a" * 5000},
        "invalid_webhook_url",
    ),
    "webhook-port-0": ({"webhook_url": "http://192.0.2.1:0/"}, "invalid_webhook_url"),
    "webhook-decimal-ip": ({"webhook_url": "http://2130706433/"}, "invalid_webhook_url"),
    "webhook-ipv6-loopback": ({"webhook_url": "http://[::1]/hook"}, "forbidden_webhook_url"),
    "webhook-metadata-ip": ({"webhook_url": "http://169.254.169.254/"}, "forbidden_webhook_url"),
}


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_bad_form_fields_are_422(stack: Any, case: str) -> None:
    fields, code = BAD_FIELDS[case]
    files = {"image": ("a.jpg", JPEG, "image/jpeg")}
    resp = httpx.post(f"{stack.url}/classify", files=files, data=fields, timeout=30)
    assert_error(resp, 422, code)
