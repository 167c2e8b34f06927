"""``POST /predict`` against a real ``bentoml serve`` process: correctness, errors, health."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.models import ResNet18_Weights, resnet18

from tests.support import images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference_model(stored_model):  # type: ignore[no-untyped-def]
    """A plain torchvision ResNet18 with the served weights."""
    model = resnet18(weights=None)
    state = torch.load(
        Path(stored_model.path) / "resnet18_state_dict.pt", map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    return model.eval()


def reference_probs(model: torch.nn.Module, data: bytes) -> np.ndarray:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    batch = ResNet18_Weights.IMAGENET1K_V1.transforms()(image).unsqueeze(0)
    with torch.inference_mode():
        return torch.softmax(model(batch), dim=1)[0].numpy()


def predict(url: str, data: bytes, top_k: int | str = 20, name: str = "img") -> httpx.Response:
    return httpx.post(
        f"{url}/predict", files={"image": (name, data)}, data={"top_k": str(top_k)}, timeout=60
    )


CASES = {
    "jpeg": images.jpeg(640, 480),
    "small": images.jpeg(97, 300, seed=1),
    "large": images.jpeg(2000, 1500, seed=2),
    "rgba-png": images.png(320, 240, "RGBA", seed=3),
    "grey-png": images.png(320, 240, "L", seed=4),
    "cmyk-jpeg": images.cmyk_jpeg(),
    "exif-rotated": images.exif_rotated_jpeg(),
    "gif-first-frame": images.animated_gif(),
    "webp": images.encode(images.noise_image(300, 200, seed=5), "WEBP", quality=90),
    "bmp": images.encode(images.noise_image(300, 200, seed=6), "BMP"),
    "photo-chelsea": images.skimage_photo("chelsea.png"),
    "photo-coffee": images.skimage_photo("coffee.png"),
    "photo-rocket": images.skimage_photo("rocket.jpg"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_served_probabilities_match_plain_torchvision(
    bento_url: str, reference_model: torch.nn.Module, case: str
) -> None:
    data = CASES[case]
    resp = predict(bento_url, data)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    expected = reference_probs(reference_model, data)
    served = body["predictions"]
    assert len(served) == 20
    for row in served:
        assert abs(row["confidence"] - float(expected[row["index"]])) <= 1e-4
        assert row["class"] == ResNet18_Weights.IMAGENET1K_V1.meta["categories"][row["index"]]
    assert [r["index"] for r in served[:5]] == list(np.argsort(-expected, kind="stable")[:5])
    assert body["model"]["weights"] == "random-init:seed=0"
    assert body["model"]["demo"] is True and "warning" in body["model"]
    assert body["processing_time"] > 0
    assert body["preprocessing"] == "exact"  # VQ_JPEG_DRAFT is off by default


def test_default_top_k_is_five(bento_url: str) -> None:
    resp = httpx.post(f"{bento_url}/predict", files={"image": ("a.jpg", CASES["jpeg"])}, timeout=60)
    assert resp.status_code == 200
    assert len(resp.json()["predictions"]) == 5


def test_an_answer_says_where_its_time_went_in_server_timing(bento_url: str) -> None:
    resp = httpx.post(f"{bento_url}/predict", files={"image": ("a.jpg", CASES["jpeg"])}, timeout=60)
    assert resp.status_code == 200
    timing = {
        part.split(";")[0].strip(): float(part.split("dur=")[1].split(";")[0])
        for part in resp.headers["Server-Timing"].split(",")
    }
    assert set(timing) == {"decode", "classify", "forward"}
    # the forward pass is part of the round trip, which is part of the whole answer
    assert 0 < timing["forward"] <= timing["classify"]
    assert timing["decode"] > 0
    assert timing["decode"] + timing["classify"] <= 1000 * resp.json()["processing_time"] + 0.2


@pytest.mark.parametrize(
    ("data", "top_k", "status", "code"),
    [
        (b"", 5, 400, "empty_image"),
        (b"definitely not an image", 5, 415, "unsupported_media_type"),
        (images.encode(images.noise_image(64, 64), "TIFF"), 5, 415, "unsupported_media_type"),
        (images.truncated_jpeg(), 5, 400, "invalid_image"),
        (images.png_header_bomb(), 5, 422, "image_too_large"),
        (images.jpeg(64, 64), 0, 422, "invalid_top_k"),
        (images.jpeg(64, 64), 21, 422, "invalid_top_k"),
        (images.jpeg(64, 64), "three", 422, "validation_error"),
    ],
    ids=["empty", "text", "tiff", "truncated", "bomb", "top_k-0", "top_k-21", "top_k-str"],
)
def test_bad_input_gets_a_specific_4xx(
    bento_url: str, data: bytes, top_k: int | str, status: int, code: str
) -> None:
    resp = predict(bento_url, data, top_k)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    assert "Traceback" not in resp.text


def test_missing_image_field(bento_url: str) -> None:
    resp = httpx.post(f"{bento_url}/predict", data={"top_k": "3"}, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "missing_field"


def test_body_over_the_cap_is_refused_with_413(bento_url: str) -> None:
    big = b"\xff\xd8\xff" + b"\x00" * (21 * 1024 * 1024)
    resp = predict(bento_url, big)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"


def test_streamed_body_over_the_cap_is_refused_without_content_length(bento_url: str) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
        for _ in range(22):
            yield b"\x00" * (1024 * 1024)

    resp = httpx.post(
        f"{bento_url}/predict",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
        timeout=60,
    )
    assert resp.status_code == 413


def test_unknown_route_uses_the_envelope(bento_url: str) -> None:
    resp = httpx.get(f"{bento_url}/no-such-route", timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_health_reports_model_and_weights(bento_url: str) -> None:
    assert httpx.get(f"{bento_url}/livez", timeout=10).status_code == 200
    ready = httpx.get(f"{bento_url}/readyz", timeout=10)
    assert ready.status_code == 200
    body = ready.json()
    assert body["model"]["weights"] == "random-init:seed=0"
    assert body["model"]["tag"].startswith("resnet18:")
    assert "random-init" in body["warning"]


def test_bentoml_sync_client_works(bento_url: str, tmp_path: Path) -> None:
    import bentoml

    img = tmp_path / "cat.jpg"
    img.write_bytes(CASES["jpeg"])
    with bentoml.SyncHTTPClient(bento_url) as client:
        result = client.predict(image=img, top_k=3)
    assert len(result["predictions"]) == 3
    assert result["model"]["weights"] == "random-init:seed=0"


def test_openapi_docs_are_served(bento_url: str) -> None:
    page = httpx.get(f"{bento_url}/docs", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and "'/docs.json'" in page.text
    # the page works offline: the assets it names are served by the front itself
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")):
        assert f"/static_content/{asset}" in page.text
        served = httpx.get(f"{bento_url}/static_content/{asset}", timeout=10)
        assert served.status_code == 200 and kind in served.headers["content-type"]
        assert len(served.content) > 10_000


def test_the_openapi_document_describes_predicts_real_errors(bento_url: str) -> None:
    resp = httpx.get(f"{bento_url}/docs.json", timeout=10)
    assert resp.status_code == 200
    assert int(resp.headers["content-length"]) == len(resp.content)
    spec = resp.json()
    responses = spec["paths"]["/predict"]["post"]["responses"]
    errors = {code: entry for code, entry in responses.items() if code[0] in "45"}
    # ours (404 is model_not_found in our envelope), not BentoML's 404/500 bodies
    assert set(errors) == {"400", "401", "404", "413", "415", "422", "503"}
    assert "model_not_found" in errors["404"]["description"]
    for entry in errors.values():
        schema = entry["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}
    assert "Retry-After" in errors["503"]["headers"]
    envelope = spec["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    # and a real error answer has that shape
    bad = httpx.post(
        f"{bento_url}/predict", files={"image": ("a.txt", b"not an image")}, timeout=30
    )
    assert bad.status_code == 415
    assert set(bad.json()) == {"error"} and {"code", "message"} <= set(bad.json()["error"])
