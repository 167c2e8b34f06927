"""Our split preprocessing equals torchvision's ResNet18 preset, bit for bit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.models import ResNet18_Weights

from model_store.inference import BatchClassifier, ModelInfo
from model_store.onnx_backend import normalize_numpy
from model_store.preprocess import resize_shorter_side, to_model_input
from tests.support import images


def _reference(image: Image.Image) -> torch.Tensor:
    return ResNet18_Weights.IMAGENET1K_V1.transforms()(image)


def _normalizer() -> BatchClassifier:
    info = ModelInfo("t:1", "random-init:seed=0", "cpu", "eager", ("x",))
    return BatchClassifier(torch.nn.Identity(), info)


@pytest.mark.parametrize(
    "data",
    [
        images.jpeg(640, 480),
        images.jpeg(97, 300, seed=1),  # smaller than the crop on one side
        images.png(1000, 1000, seed=2),
        images.png(320, 240, "RGBA", seed=3),
        images.png(320, 240, "L", seed=4),
        images.cmyk_jpeg(),
        images.exif_rotated_jpeg(),
        images.animated_gif(),
    ],
    ids=["jpeg", "small", "square", "rgba", "grey", "cmyk", "exif", "gif"],
)
def test_split_preprocessing_equals_torchvision(data: bytes) -> None:
    from visionqueue.core.images import decode_image

    ours = decode_image(data, max_pixels=10**8)
    crop = to_model_input(ours)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8

    reference_input = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    expected = _reference(reference_input)
    got = _normalizer().normalize_batch(crop[np.newaxis])[0]
    assert torch.equal(got, expected)
    # the ONNX Runtime backend normalises in NumPy: the same values, bit for bit
    assert torch.equal(torch.from_numpy(normalize_numpy(crop[np.newaxis])[0]), expected)


@pytest.mark.parametrize("batch", [1, 5])
def test_numpy_normalisation_equals_torch_bit_for_bit(batch: int) -> None:
    """Any mean/std, any crop size, read-only or strided input (a pickled or sliced batch)."""
    mean, std = (0.5, 0.25, 0.125), (0.25, 0.3, 0.35)
    crops = np.random.default_rng(batch).integers(0, 256, (batch, 2 * 160, 160, 3), dtype=np.uint8)
    crops = crops[:, ::2]  # strided rows
    crops.flags.writeable = False
    x = torch.from_numpy(np.array(crops)).permute(0, 3, 1, 2).to(torch.float32).div(255)
    expected = x.sub(torch.tensor(mean).view(1, 3, 1, 1)).div(torch.tensor(std).view(1, 3, 1, 1))
    got = normalize_numpy(crops, mean, std)
    assert got.dtype == np.float32 and got.shape == (batch, 3, 160, 160)
    assert got.flags.c_contiguous  # what ONNX Runtime reads without a copy
    assert torch.equal(torch.from_numpy(got), expected)


def test_resize_shorter_side_matches_torchvision_rounding() -> None:
    assert resize_shorter_side(640, 480) == (341, 256)
    assert resize_shorter_side(480, 640) == (256, 341)
    assert resize_shorter_side(97, 300) == (256, 791)


def test_to_model_input_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        to_model_input(Image.new("L", (300, 300)))


def test_an_elongated_image_is_refused_by_what_its_resize_would_produce() -> None:
    import pytest
    from PIL import Image

    from model_store.preprocess import (
        MIN_RESIZED_PIXELS_LIMIT,
        Preprocessing,
        check_resized_size,
        to_model_input,
    )
    from visionqueue.core.errors import ImageTooLarge

    with pytest.raises(ImageTooLarge, match="256x384000") as refused:
        to_model_input(Image.new("RGB", (1, 1500)))
    assert refused.value.status == 422 and refused.value.code == "image_too_elongated"
    assert refused.value.to_body()["error"]["details"]["max_resized_pixels"] == 1 << 24
    assert check_resized_size(4, 1000, Preprocessing()) == (256, 64000)  # 16.4 MP: allowed
    # a model with a large resize keeps a 4:1 budget at its own size
    big = Preprocessing(resize=4096, crop=2048)
    assert check_resized_size(1000, 4000, big) == (4096, 16384)
    assert MIN_RESIZED_PIXELS_LIMIT < 4 * 4096 * 4096
    with pytest.raises(ImageTooLarge):
        check_resized_size(1000, 4100, big)


def test_a_crop_batch_must_be_square_rgb_crops_a_model_may_use() -> None:
    import numpy as np
    import pytest

    from model_store.crops import check_crop_batch

    good = np.zeros((2, 224, 224, 3), np.uint8)
    assert check_crop_batch(good) is good
    assert check_crop_batch(np.zeros((0, 8, 8, 3), np.uint8)).shape[0] == 0
    for shape in [
        (1, 300, 1, 3),
        (224, 224, 3),
        (1, 224, 224, 4),
        (1, 4, 4, 3),
        (1, 4096, 4096, 3),
    ]:
        with pytest.raises(ValueError, match=r"\(N, S, S, 3\)"):
            check_crop_batch(np.empty(shape, np.uint8))  # empty: no pixels touched
