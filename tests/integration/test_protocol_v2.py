"""Open Inference Protocol v2 on a live server, driven by NVIDIA's own ``tritonclient.http``."""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.support import images

pytestmark = pytest.mark.integration

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")


@pytest.fixture(scope="module")
def client(bento_url: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(bento_url.removeprefix("http://"), concurrency=2) as c:
        yield c


@pytest.fixture(scope="module")
def model(bento_url: str) -> tuple[str, str]:
    """The served model's (name, version), from its tag in /readyz."""
    name, _, version = (
        httpx.get(f"{bento_url}/readyz", timeout=30).json()["model"]["tag"].partition(":")
    )
    return name, version


def predict(url: str, data: bytes, top_k: int = 5) -> list[tuple[str, int, float]]:
    resp = httpx.post(
        f"{url}/predict", files={"image": ("i", data)}, data={"top_k": str(top_k)}, timeout=60
    )
    assert resp.status_code == 200, resp.text
    return [(p["class"], p["index"], p["confidence"]) for p in resp.json()["predictions"]]


def parse_classes(row: np.ndarray) -> list[tuple[str, int, float]]:
    out = []
    for item in row:
        score, index, label = item.decode().split(":", 2)
        out.append((label, int(index), float(score)))
    return out


def assert_same(got: list[tuple[str, int, float]], want: list[tuple[str, int, float]]) -> None:
    assert [(c, i) for c, i, _ in got] == [(c, i) for c, i, _ in want]
    assert [s for *_, s in got] == pytest.approx([s for *_, s in want], rel=1e-5, abs=1e-7)


def test_health_and_metadata(client: triton.InferenceServerClient, model: tuple[str, str]) -> None:
    name, version = model
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(name)
    assert client.is_model_ready(name, version)
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready(name, "no-such-version")

    server = client.get_server_metadata()
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    meta = client.get_model_metadata(name)
    assert meta == client.get_model_metadata(name, version)
    assert meta["name"] == name and meta["versions"] == [version]
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 1000]}]
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no-such-model")
    assert err.value.status() == "404" and "no-such-model" in err.value.message()


def image_input(photos: list[bytes], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("IMAGE", [len(photos)], "BYTES")
    items = photos if binary else [base64.b64encode(p) for p in photos]
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_), binary_data=binary)
    return tensor


def test_binary_infer_with_classification_matches_predict(
    client: triton.InferenceServerClient, model: tuple[str, str], bento_url: str
) -> None:
    photos = [images.skimage_photo(p) for p in PHOTOS]
    outputs = [triton.InferRequestedOutput("PROBABILITIES", binary_data=True, class_count=5)]
    result = client.infer(
        model[0], [image_input(photos, binary=True)], outputs=outputs, request_id="req-17"
    )
    assert result.get_response()["id"] == "req-17"
    assert result.get_response()["model_version"] == model[1]
    classes = result.as_numpy("PROBABILITIES")
    assert classes.shape == (len(photos), 5)
    for row, photo in zip(classes, photos, strict=True):
        assert_same(parse_classes(row), predict(bento_url, photo))


def test_json_infer_returns_the_probabilities_predict_ranks(
    client: triton.InferenceServerClient, model: tuple[str, str], bento_url: str
) -> None:
    photos = [images.skimage_photo(p) for p in PHOTOS[:2]]
    outputs = [triton.InferRequestedOutput("PROBABILITIES", binary_data=False)]
    result = client.infer(
        model[0], [image_input(photos, binary=False)], model_version=model[1], outputs=outputs
    )
    tensor = result.get_output("PROBABILITIES")
    assert "data" in tensor and "parameters" not in tensor  # JSON, not binary
    probs = result.as_numpy("PROBABILITIES")
    assert probs.shape == (2, 1000) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    for row, photo in zip(probs, photos, strict=True):
        want = predict(bento_url, photo, top_k=3)
        top = np.argsort(-row, kind="stable")[:3]
        assert [int(i) for i in top] == [i for _, i, _ in want]
        assert [float(row[i]) for i in top] == pytest.approx([s for *_, s in want], rel=1e-5)


def test_async_infer(
    client: triton.InferenceServerClient, model: tuple[str, str], bento_url: str
) -> None:
    photo = images.skimage_photo("coffee.png")
    outputs = [triton.InferRequestedOutput("PROBABILITIES", class_count=3)]
    pending = [
        client.async_infer(model[0], [image_input([photo], binary=True)], outputs=outputs)
        for _ in range(3)
    ]
    want = predict(bento_url, photo, top_k=3)
    for request in pending:
        assert_same(parse_classes(request.get_result().as_numpy("PROBABILITIES")[0]), want)


def test_decoded_pixels_give_the_encoded_images_answer(
    client: triton.InferenceServerClient, model: tuple[str, str], bento_url: str
) -> None:
    photo = images.skimage_photo("chelsea.png")
    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))[np.newaxis]
    tensor = triton.InferInput("IMAGE", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    outputs = [triton.InferRequestedOutput("PROBABILITIES", class_count=5)]
    result = client.infer(model[0], [tensor], outputs=outputs)
    assert_same(parse_classes(result.as_numpy("PROBABILITIES")[0]), predict(bento_url, photo))


def test_gzip_request_body(
    client: triton.InferenceServerClient, model: tuple[str, str], bento_url: str
) -> None:
    photo = images.skimage_photo("rocket.jpg")
    outputs = [triton.InferRequestedOutput("PROBABILITIES", class_count=2)]
    result = client.infer(
        model[0],
        [image_input([photo], binary=True)],
        outputs=outputs,
        request_compression_algorithm="gzip",
    )
    assert_same(parse_classes(result.as_numpy("PROBABILITIES")[0]), predict(bento_url, photo, 2))


def binary_request(photos: list[bytes], **extra: Any) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(p)) + p for p in photos)
    header = {
        "inputs": [
            {
                "name": "IMAGE",
                "datatype": "BYTES",
                "shape": [len(photos)],
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        **extra,
    }
    head = json.dumps(header).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def lying_length(photo: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary request whose one BYTES element claims 100 more bytes than follow."""
    body, headers = binary_request([photo])
    start = int(headers["Inference-Header-Content-Length"])
    return body[:start] + struct.pack("<I", len(photo) + 100) + body[start + 4 :], headers


def json_request(data: Any, datatype: str = "BYTES", shape: list[int] | None = None) -> bytes:
    tensor = {"name": "IMAGE", "datatype": datatype, "shape": shape or [1], "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def bad_requests(name: str, version: str) -> list[tuple[str, str, bytes, dict[str, str], int]]:
    photo = images.skimage_photo("coffee.png")
    good, good_headers = binary_request([photo])
    infer = f"/v2/models/{name}/infer"
    return [
        ("unknown model", "/v2/models/nope/infer", good, good_headers, 404),
        ("unknown version", f"/v2/models/{name}/versions/0/infer", good, good_headers, 404),
        ("not json", infer, b"{inputs", {}, 400),
        ("json array", infer, b"[]", {}, 400),
        ("no inputs", infer, b"{}", {}, 400),
        ("wrong input name", infer, json.dumps({"inputs": [{"name": "x"}]}).encode(), {}, 400),
        ("wrong datatype", infer, json_request([1.0], "FP32"), {}, 400),
        ("not base64", infer, json_request(["%%%"]), {}, 400),
        ("shape vs data", infer, json_request(["aGk="], shape=[2]), {}, 400),
        ("empty batch", infer, json_request([], shape=[0]), {}, 400),
        ("header length", infer, good, {"Inference-Header-Content-Length": "abc"}, 400),
        ("header too long", infer, good, {"Inference-Header-Content-Length": "99999999"}, 400),
        ("size mismatch", infer, good + b"x", good_headers, 400),
        ("element past the end", infer, *lying_length(photo), 400),
        ("corrupt image", infer, *binary_request([photo[:40]]), 400),
        ("empty image", infer, *binary_request([b""]), 400),
        ("not an image", infer, *binary_request([b"hello, world"]), 415),
        ("pixel bomb", infer, *binary_request([images.png_header_bomb()]), 422),
        ("too many", infer, *binary_request([photo[:10]] * 33), 422),
        ("bad pixels", infer, json_request([300], "UINT8", [1, 1, 1, 3]), {}, 400),
        ("pixel shape", infer, json_request([1, 2, 3], "UINT8", [1, 3]), {}, 400),
        (
            "bad classification",
            infer,
            *binary_request(
                [photo],
                outputs=[{"name": "PROBABILITIES", "parameters": {"classification": "5"}}],
            ),
            400,
        ),
        (
            "unknown output",
            infer,
            *binary_request([photo], outputs=[{"name": "LOGITS"}]),
            400,
        ),
        ("bad gzip", infer, b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, 400),
        ("brotli", infer, good, {**good_headers, "Content-Encoding": "br"}, 415),
        ("unknown model metadata", "/v2/models/nope", b"", {}, 404),
        ("unknown route", "/v2/repository/index", b"", {}, 404),
    ]


def test_bad_inputs_get_a_4xx_in_the_protocols_error_shape(
    bento_url: str, model: tuple[str, str]
) -> None:
    with httpx.Client(base_url=bento_url, timeout=60) as http:
        for label, path, body, headers, status in bad_requests(*model):
            method = "POST" if path.endswith("/infer") else "GET"
            resp = http.request(method, path, content=body or None, headers=headers)
            assert resp.status_code == status, (label, resp.status_code, resp.text)
            payload = resp.json()
            assert list(payload) == ["error"] and isinstance(payload["error"], str), label
    bomb = gzip.compress(b"{" + b" " * 30_000_000 + b"}")  # 30 MB inflated: over the 20 MB cap
    resp = httpx.post(
        f"{bento_url}/v2/models/{model[0]}/infer",
        content=bomb,
        headers={"Content-Encoding": "gzip"},
        timeout=60,
    )
    assert resp.status_code == 413 and isinstance(resp.json()["error"], str)


def test_a_request_id_is_echoed_and_json_outputs_are_the_default(
    bento_url: str, model: tuple[str, str]
) -> None:
    photo = images.skimage_photo("astronaut.png")
    body = json_request([base64.b64encode(photo).decode()])
    payload = {
        **json.loads(body),
        "id": "abc",
        "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 1}}],
    }
    resp = httpx.post(f"{bento_url}/v2/models/{model[0]}/infer", json=payload, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    answer = resp.json()
    assert answer["id"] == "abc" and answer["model_name"] == model[0]
    (output,) = answer["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 1]
    label, index, score = predict(bento_url, photo, top_k=1)[0]
    assert output["data"] == [f"{score!r}:{index}:{label}"]


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        matches = line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
        if matches and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_infer_requests_and_images_are_counted_like_predicts(
    client: triton.InferenceServerClient, model: tuple[str, str], bento_url: str
) -> None:
    endpoint = "/v2/models/{name}/infer"  # the route template: raw paths are no label

    def counts() -> tuple[float, float]:
        text = httpx.get(f"{bento_url}/metrics", timeout=30).text
        requests = metric(
            text, "bentoml_service_request_total", endpoint=endpoint, http_response_code="200"
        )
        return requests, metric(text, "vq_batch_queue_wait_seconds_count")

    before = counts()
    photos = [images.skimage_photo(p) for p in PHOTOS[:3]]
    client.infer(model[0], [image_input(photos, binary=True)])
    after = counts()
    assert after[0] - before[0] == 1  # one request
    assert after[1] - before[1] == 3  # three images through the batch queue
