"""Serving your own classifiers: four imported models at once, on a real production stack.

Models built here with seeded random init (nothing can be downloaded): a 5-class ResNet18
state_dict, a 3-class MobileNetV3-Small state_dict, a TorchScript archive, and an ONNX export
with non-default preprocessing. Each answer must equal torchvision/onnxruntime on the same
file and photo; the async path, the models API, readiness and a live rollout are checked.
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from model_store.importer import PreprocessingOverrides, import_classifier
from model_store.weights import file_sha256
from tests.support import checkpoints, images
from tests.support.servers import ROOT, bento_server
from tests.support.stack import Stack, production_stack
from tests.support.waiting import wait_for_job

pytestmark = pytest.mark.integration

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
SERVED = "pets,tools,shapes,fruit"


def photo(name: str) -> bytes:
    import skimage

    return (Path(skimage.__file__).parent / "data" / name).read_bytes()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visionqueue.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The four model files, their labels, and the reference modules they came from."""
    folder = tmp_path_factory.mktemp("models")
    return {
        "folder": folder,
        "pets": checkpoints.resnet18_pets(folder),
        "tools": checkpoints.mobilenet_tools(folder),
        "shapes": checkpoints.torchscript_shapes(folder),
        "fruit": checkpoints.onnx_fruit(folder),
    }


@pytest.fixture(scope="module")
def served(built: dict[str, Any], server_env: dict[str, str], session_dir: Path) -> Iterator[Stack]:
    """Import the four models (two through the CLIs), then serve them on one stack."""
    data_dir = session_dir / "models-data"
    env = {**server_env, "VQ_DATA_DIR": str(data_dir)}
    weights, labels, _ = built["pets"]
    done = cli("import-model", "pets", "--weights", str(weights), "--labels", str(labels), env=env)
    assert done.returncode == 0, done.stderr
    weights, labels, _ = built["fruit"]
    done = subprocess.run(
        [sys.executable, "-m", "model_store", "import", "fruit", "--weights", str(weights),
         "--labels", str(labels), *checkpoints.onnx_flags()],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    weights, labels, _ = built["tools"]
    import_classifier("tools", weights, arch="mobilenet_v3_small", labels=labels)
    weights, labels, _ = built["shapes"]
    import_classifier("shapes", weights, labels=labels)
    with production_stack(
        server_env,
        session_dir / "models-stack",
        redis_db=13,
        VQ_MODELS=SERVED,
        VQ_DATA_DIR=str(data_dir),
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def worker(served: Stack) -> Iterator[None]:
    served.start_worker()
    yield
    served.stop_workers()


def _reference(built: dict[str, Any], name: str, data: bytes, prep: dict[str, Any]) -> np.ndarray:
    """Probabilities from torchvision's transforms and the original module (or onnxruntime)."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    transform = T.Compose(
        [
            T.Resize(prep["resize"], interpolation=InterpolationMode(prep["interpolation"])),
            T.CenterCrop(prep["crop"]),
            T.ToTensor(),
            T.Normalize(prep["mean"], prep["std"]),
        ]
    )
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    batch = transform(image).unsqueeze(0)
    if name == "fruit":
        import onnxruntime as ort

        session = ort.InferenceSession(str(built["fruit"][0]), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(session.run(None, {"pixel_values": batch.numpy()})[0])
    else:
        with torch.inference_mode():
            logits = built[name][2](batch)
    return torch.softmax(logits, dim=1)[0].numpy()


IMAGENET_PREP = {
    "resize": 256,
    "crop": 224,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
}
EXPECTED = {
    "pets": (checkpoints.PETS, "torchvision.models.resnet18", IMAGENET_PREP),
    "tools": (checkpoints.TOOLS, "torchvision.models.mobilenet_v3_small", IMAGENET_PREP),
    "shapes": (checkpoints.SHAPES, "torchscript", IMAGENET_PREP),
    "fruit": (checkpoints.FRUIT, "onnx", checkpoints.ONNX_PREP),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_answers_equal_the_reference_on_real_photos(
    served: Stack, built: dict[str, Any], name: str
) -> None:
    labels, architecture, prep = EXPECTED[name]
    worst = 0.0
    for photo_name in PHOTOS:
        data = photo(photo_name)
        resp = httpx.post(
            f"{served.url}/predict",
            files={"image": (photo_name, data)},
            data={"model": name, "top_k": str(len(labels))},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"]["name"] == name
        assert body["model"]["architecture"] == architecture
        assert body["model"]["weights"] == f"file:{file_sha256(built[name][0])}"
        assert body["preprocessing"] == "exact"
        got = np.zeros(len(labels), dtype=np.float64)
        for row in body["predictions"]:
            assert row["class"] == labels[row["index"]]
            got[row["index"]] = row["confidence"]
        worst = max(worst, float(np.abs(got - _reference(built, name, data, prep)).max()))
    assert worst <= 1e-4


def test_models_api_lists_every_model(served: Stack, built: dict[str, Any]) -> None:
    body = httpx.get(f"{served.url}/v1/models", timeout=30).json()
    assert body["default"] == "pets"
    rows = {m["name"]: m for m in body["models"]}
    assert list(rows) == ["pets", "tools", "shapes", "fruit"]
    for name, (labels, architecture, prep) in EXPECTED.items():
        row = rows[name]
        assert row["ready"] is True
        assert row["tag"].startswith(f"{name}:")
        assert (row["architecture"], row["classes"]) == (architecture, len(labels))
        assert row["weights"] == f"file:{file_sha256(built[name][0])}"
        assert row["preprocessing"]["crop"] == prep["crop"]
        assert row["preprocessing"]["interpolation"] == prep["interpolation"]
        assert row["memory"]["resident_bytes"] > 1_000_000
    one = httpx.get(f"{served.url}/v1/models/fruit", timeout=30).json()
    assert one["labels"] == list(checkpoints.FRUIT) and one["input_size"] == [3, 160, 160]
    missing = httpx.get(f"{served.url}/v1/models/nope", timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    ready = httpx.get(f"{served.url}/readyz", timeout=30).json()
    assert {n: m["ready"] for n, m in ready["models"].items()} == dict.fromkeys(EXPECTED, True)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_protocol_clients_reach_each_model_by_name(served: Stack, name: str) -> None:
    """tritonclient and TorchServe's curl name a served model and get /predict's answer."""
    import tritonclient.http as triton

    labels = EXPECTED[name][0]
    data = photo("coffee.png")
    k = min(3, len(labels))
    want = httpx.post(
        f"{served.url}/predict",
        files={"image": ("c.png", data)},
        data={"model": name, "top_k": str(k)},
        timeout=60,
    ).json()["predictions"]
    with triton.InferenceServerClient(served.url.removeprefix("http://")) as client:
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert meta["name"] == name and meta["outputs"][0]["shape"] == [-1, len(labels)]
        tensor = triton.InferInput("IMAGE", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
        top = triton.InferRequestedOutput("PROBABILITIES", class_count=k)
        result = client.infer(name, [tensor], outputs=[top])
    got = [item.decode().split(":", 2) for item in result.as_numpy("PROBABILITIES")[0]]
    assert [(label, int(index)) for _, index, label in got] == [
        (p["class"], p["index"]) for p in want
    ]
    assert [float(score) for score, _, _ in got] == pytest.approx(
        [p["confidence"] for p in want], rel=1e-5
    )
    torchserve = httpx.put(f"{served.url}/predictions/{name}", content=data, timeout=60).json()
    assert list(torchserve)[:k] == [p["class"] for p in want]


def test_unknown_model_is_a_404_everywhere(served: Stack) -> None:
    image = {"image": ("a.jpg", images.jpeg(64, 64))}
    for route in ("/predict", "/classify"):
        resp = httpx.post(f"{served.url}{route}", files=image, data={"model": "nope"}, timeout=30)
        assert resp.status_code == 404, (route, resp.text)
        assert resp.json()["error"]["code"] == "model_not_found"
    resp = httpx.post(
        f"{served.url}/v1/jobs",
        files={"images": ("a.jpg", images.jpeg(64, 64))},
        data={"model": "nope"},
        timeout=30,
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


def test_two_models_under_load_answer_from_the_requested_model(served: Stack) -> None:
    answers: list[tuple[str, int, dict[str, Any]]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=served.url, timeout=120) as http:
            for i in range(6):
                name = ("pets", "tools")[(index + i) % 2]
                resp = http.post(
                    "/predict",
                    files={"image": ("x.jpg", images.jpeg(320, 240, seed=index * 10 + i))},
                    data={"model": name, "top_k": "3"},
                )
                with lock:
                    answers.append((name, resp.status_code, resp.json()))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(answers) == 96
    for name, status, body in answers:
        assert status == 200, body
        assert body["model"]["name"] == name and body["model"]["tag"].startswith(f"{name}:")
        labels = EXPECTED[name][0]
        assert {p["class"] for p in body["predictions"]} <= set(labels)


def test_protocol_routes_serve_each_named_model(served: Stack) -> None:
    """KServe v2 and TorchServe routes answer from the model they name (the registry)."""
    import tritonclient.http as triton

    photos = [photo(p) for p in PHOTOS[:2]]
    tag = httpx.get(f"{served.url}/v1/models/fruit", timeout=30).json()["tag"]
    name, version = tag.split(":")
    with triton.InferenceServerClient(served.url.removeprefix("http://")) as client:
        meta = client.get_model_metadata(name, version)
        assert meta["outputs"][0]["shape"] == [-1, len(checkpoints.FRUIT)]
        tensor = triton.InferInput("IMAGE", [len(photos)], "BYTES")
        tensor.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=True)
        out = triton.InferRequestedOutput("PROBABILITIES", binary_data=False)
        probs = client.infer(name, [tensor], outputs=[out]).as_numpy("PROBABILITIES")
    assert probs.shape == (2, len(checkpoints.FRUIT))
    for row, data in zip(probs, photos, strict=True):
        resp = httpx.post(
            f"{served.url}/predict",
            files={"image": ("p", data)},
            data={"model": "fruit", "top_k": "6"},
            timeout=60,
        ).json()
        want = np.zeros(len(checkpoints.FRUIT))
        for p in resp["predictions"]:
            want[p["index"]] = p["confidence"]
        assert np.abs(row - want).max() <= 1e-5
    answer = httpx.put(f"{served.url}/predictions/tools", content=photos[0], timeout=60)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) <= set(checkpoints.TOOLS)
    missing = httpx.put(f"{served.url}/predictions/nope", content=photos[0], timeout=60)
    assert missing.status_code == 404


def test_async_jobs_use_the_requested_model(served: Stack, worker: None) -> None:
    resp = httpx.post(
        f"{served.url}/v1/jobs",
        files=[("images", (f"{i}.jpg", images.jpeg(200, 150, seed=i))) for i in range(2)],
        data={"model": "fruit"},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    served_fruit = httpx.get(f"{served.url}/v1/models/fruit", timeout=30).json()["tag"]
    for job in resp.json()["jobs"]:
        done = wait_for_job(served.url, job["id"], 120)
        assert done["status"] == "completed", done
        assert done["model"]["name"] == "fruit" and done["model"]["tag"] == served_fruit
        assert done["result"]["model"]["tag"] == served_fruit
        assert {p["class"] for p in done["result"]["predictions"]} <= set(checkpoints.FRUIT)
    seed = httpx.post(
        f"{served.url}/classify",
        files={"image": ("s.png", images.png(120, 90))},
        data={"model": "shapes"},
        timeout=30,
    )
    assert seed.status_code == 202
    done = wait_for_job(served.url, seed.json()["task_id"], 120)
    assert done["result"]["model"]["name"] == "shapes"
    # no model: the default
    plain = httpx.post(
        f"{served.url}/v1/jobs", files={"images": ("p.jpg", images.jpeg(90, 90))}, timeout=30
    )
    done = wait_for_job(served.url, plain.json()["jobs"][0]["id"], 120)
    assert done["result"]["model"]["name"] == "pets"


def test_a_configuration_that_does_not_fit_fails_at_start_naming_the_models(
    served: Stack, session_dir: Path, server_env: dict[str, str]
) -> None:
    env = {**server_env, "VQ_MODELS": "pets,fruit", "VQ_MODEL_MEMORY_LIMIT_MB": "64"}
    log = session_dir / "too-big.log"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="server exited"), bento_server(env, log, timeout=120):
        pass
    assert time.monotonic() - started < 120
    text = log.read_text()
    assert "would not fit in memory: pets ~" in text and "fruit ~" in text


def test_rollout_under_load_switches_once_without_errors(
    served: Stack, built: dict[str, Any]
) -> None:
    env = {**served.env}
    before = httpx.get(f"{served.url}/v1/models/pets", timeout=30).json()["tag"]
    (built["folder"] / "v2").mkdir(exist_ok=True)
    weights, labels, _ = checkpoints.resnet18_pets(built["folder"] / "v2", seed=11)
    new = import_classifier("pets", weights, labels=labels).tag
    results: list[tuple[float, float, int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(base_url=served.url, timeout=120) as http:
            i = 0
            while not stop.is_set():
                sent = time.monotonic()
                resp = http.post(
                    "/predict",
                    files={"image": ("x.jpg", images.jpeg(256, 256, seed=index * 1000 + i))},
                    data={"model": "pets"},
                )
                tag = resp.json().get("model", {}).get("tag", "") if resp.status_code == 200 else ""
                with lock:
                    results.append((sent, time.monotonic(), resp.status_code, tag))
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        done = cli("models", "promote", new, "--url", served.url, env=env)
        switched_at = time.monotonic()
        assert done.returncode == 0, done.stderr
        assert f"now serves {new}" in done.stdout
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert [r for r in results if r[2] != 200] == []
    ordered = [tag for _, _, _, tag in sorted(results, key=lambda r: r[1])]
    switches = sum(1 for a, b in itertools.pairwise(ordered) if a != b)
    assert ordered[0] == before and ordered[-1] == new and switches == 1
    assert {tag for sent, _, _, tag in results if sent > switched_at} == {new}

    # rolling back is the same operation
    done = cli("models", "promote", before, "--url", served.url, env=env)
    assert done.returncode == 0, done.stderr
    resp = httpx.post(
        f"{served.url}/predict",
        files={"image": ("y.jpg", images.jpeg(64, 64))},
        data={"model": "pets"},
        timeout=60,
    )
    assert resp.json()["model"]["tag"] == before
    ready = httpx.get(f"{served.url}/readyz", timeout=30).json()
    assert ready["models"]["pets"]["tag"] == before  # readiness follows the switch back too
    listing = cli("models", "list", "pets", env=env)
    assert f"* {before}" in listing.stdout and new in listing.stdout


def test_promotions_keep_the_input_size(served: Stack, built: dict[str, Any]) -> None:
    """A version taking another input size cannot be switched to live: refused, clearly."""
    weights, labels, _ = built["fruit"]
    odd = import_classifier(
        "pets",
        weights,
        labels=labels,
        overrides=PreprocessingOverrides(resize=180, crop=160),
    )
    done = cli("models", "promote", odd.tag, "--url", served.url, env=served.env)
    assert done.returncode == 2
    assert "a live switch keeps the input size" in done.stderr
    done = cli("models", "delete", odd.tag, env=served.env)
    assert done.returncode == 0 and f"deleted {odd.tag}" in done.stdout
