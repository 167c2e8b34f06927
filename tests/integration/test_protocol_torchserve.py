"""TorchServe's inference API on a live server, and what every protocol route shares (docs, body cap)."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.support import images

pytestmark = pytest.mark.integration


def model_name_version(url: str) -> tuple[str, str]:
    tag = httpx.get(f"{url}/readyz", timeout=30).json()["model"]["tag"]
    name, _, version = tag.partition(":")
    return name, version


def predict_top5(url: str, data: bytes) -> dict[str, float]:
    resp = httpx.post(f"{url}/predict", files={"image": ("i", data)}, timeout=60)
    assert resp.status_code == 200, resp.text
    return {p["class"]: p["confidence"] for p in resp.json()["predictions"]}


def test_ping(bento_url: str) -> None:
    resp = httpx.get(f"{bento_url}/ping", timeout=30)
    assert resp.status_code == 200
    assert resp.json() == {"status": "Healthy"}


@pytest.mark.parametrize("photo", ["chelsea.png", "rocket.jpg"])
def test_every_way_curl_sends_an_image_gets_predicts_top5(bento_url: str, photo: str) -> None:
    name, version = model_name_version(bento_url)
    data = images.skimage_photo(photo)
    want = predict_top5(bento_url, data)
    with httpx.Client(base_url=bento_url, timeout=60) as http:
        answers = {
            # curl -T img.jpg: a PUT of the raw bytes
            "put": http.put(f"/predictions/{name}", content=data),
            # curl --data-binary @img.jpg: a POST labelled as a urlencoded form
            "post": http.post(
                f"/predictions/{name}",
                content=data,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            # curl -F data=@img.jpg
            "multipart": http.post(f"/predictions/{name}", files={"data": (photo, data)}),
            "version": http.put(f"/predictions/{name}/{version}", content=data),
        }
    for how, resp in answers.items():
        assert resp.status_code == 200, (how, resp.text)
        got = resp.json()
        assert list(got) == list(want), how  # the same labels, best first
        assert list(got.values()) == pytest.approx(list(want.values()), rel=1e-5), how


def test_bad_inputs_get_torchserves_error_shape(bento_url: str) -> None:
    name, _ = model_name_version(bento_url)
    photo = images.skimage_photo("coffee.png")
    cases = [
        ("unknown model", "PUT", "/predictions/resnet-99", {"content": photo}, 404),
        ("unknown version", "PUT", f"/predictions/{name}/0.0", {"content": photo}, 404),
        ("empty body", "PUT", f"/predictions/{name}", {"content": b""}, 400),
        ("not an image", "POST", f"/predictions/{name}", {"content": b"hello"}, 415),
        ("corrupt", "PUT", f"/predictions/{name}", {"content": images.truncated_jpeg()}, 400),
        ("bomb", "PUT", f"/predictions/{name}", {"content": images.png_header_bomb()}, 422),
        ("no data part", "POST", f"/predictions/{name}", {"files": {"img": ("a", photo)}}, 400),
        ("data as text", "POST", f"/predictions/{name}", {"files": {"data": (None, "x")}}, 422),
        (
            "two data files",
            "POST",
            f"/predictions/{name}",
            {"files": [("data", ("a", photo)), ("data", ("b", photo))]},
            422,
        ),
        (
            "no boundary",
            "POST",
            f"/predictions/{name}",
            {"content": photo, "headers": {"Content-Type": "multipart/form-data"}},
            400,
        ),
        ("wrong method", "GET", f"/predictions/{name}", {}, 405),
    ]
    with httpx.Client(base_url=bento_url, timeout=60) as http:
        for label, method, path, kwargs, status in cases:
            resp = http.request(method, path, **kwargs)
            assert resp.status_code == status, (label, resp.text)
            body = resp.json()
            assert set(body) == {"code", "type", "message"}, (label, body)
            assert body["code"] == status and body["type"].endswith("Exception"), label
    unknown = httpx.put(f"{bento_url}/predictions/resnet-99", content=photo, timeout=60).json()
    assert unknown["type"] == "ModelNotFoundException"


def test_the_openapi_document_describes_every_protocol_route(bento_url: str) -> None:
    paths = httpx.get(f"{bento_url}/docs.json", timeout=30).json()["paths"]
    for path, method in [
        ("/v2", "get"),
        ("/v2/health/ready", "get"),
        ("/v2/models/{name}", "get"),
        ("/v2/models/{name}/versions/{model_version}/infer", "post"),
        ("/predictions/{name}", "put"),
        ("/predictions/{name}/{model_version}", "post"),
        ("/ping", "get"),
        ("/api/upload-image", "post"),
        ("/api/task-status/{task_id}", "get"),
        ("/health", "get"),
    ]:
        assert method in paths.get(path, {}), (path, method)
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert {"application/json", "application/octet-stream"} <= set(infer["requestBody"]["content"])
    assert "404" in infer["responses"] and "422" in infer["responses"]


def declared_too_large(url: str, method: str, path: str) -> tuple[int, dict[str, object]]:
    """Send only the headers of a 30 MB request; return the status and JSON body answered."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 30000000\r\n"
        "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    header, _, body = raw.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(body)


def test_the_body_cap_refuses_each_protocol_before_reading_in_its_shape(bento_url: str) -> None:
    name, _ = model_name_version(bento_url)
    for method, path, keys in [
        ("POST", f"/v2/models/{name}/infer", {"error"}),
        ("PUT", f"/predictions/{name}", {"code", "type", "message"}),
        ("POST", "/api/upload-image", {"detail"}),
    ]:
        status, body = declared_too_large(bento_url, method, path)
        assert status == 413, (path, body)
        assert set(body) == keys, (path, body)
