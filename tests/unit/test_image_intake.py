"""Upload validation: every hostile or broken image gets a specific error, never a crash."""

from __future__ import annotations

import pytest

from tests.support import images
from visionqueue.core import errors
from visionqueue.core.images import decode_image, inspect_image, sniff_format

CAP = 60_000_000


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (images.jpeg(64, 64), "JPEG"),
        (images.png(64, 64), "PNG"),
        (images.animated_gif(), "GIF"),
        (images.encode(images.noise_image(64, 64), "WEBP"), "WEBP"),
        (images.encode(images.noise_image(64, 64), "BMP"), "BMP"),
    ],
)
def test_accepted_formats_are_inspected_from_the_header(data: bytes, fmt: str) -> None:
    info = inspect_image(data, CAP)
    assert info.format == fmt
    assert info.content_type.startswith("image/")
    assert sniff_format(data) == fmt


@pytest.mark.parametrize(
    ("data", "error", "code"),
    [
        (b"", errors.EmptyImage, "empty_image"),
        (b"hello, not an image", errors.UnsupportedMediaType, "unsupported_media_type"),
        (b"%PDF-1.7\n", errors.UnsupportedMediaType, "unsupported_media_type"),
        (
            images.encode(images.noise_image(64, 64), "TIFF"),
            errors.UnsupportedMediaType,
            "unsupported_media_type",
        ),
        (images.png_header_bomb(), errors.ImageTooLarge, "image_too_large"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, errors.InvalidImage, "invalid_image"),
    ],
    ids=["empty", "text", "pdf", "tiff", "bomb", "broken-png"],
)
def test_bad_uploads_are_refused_at_inspection(
    data: bytes, error: type[errors.VQError], code: str
) -> None:
    with pytest.raises(error) as info:
        inspect_image(data, CAP)
    assert info.value.code == code
    assert 400 <= info.value.status < 500


def test_truncated_jpeg_passes_the_header_but_fails_decoding() -> None:
    data = images.truncated_jpeg()
    inspect_image(data, CAP)  # acceptance is header-only by design
    with pytest.raises(errors.InvalidImage):
        decode_image(data, CAP)


def test_bomb_under_pillows_own_limit_is_still_refused_by_ours() -> None:
    data = images.png(300, 300)
    with pytest.raises(errors.ImageTooLarge):
        decode_image(data, max_pixels=300 * 299)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    import io

    import numpy as np
    from PIL import Image

    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    rgb = np.asarray(decode_image(buf.getvalue(), CAP))
    assert rgb.shape == (64, 64, 3)
    assert 0 < rgb.mean() < 250  # clipping would make nearly everything 255


def test_jpeg_draft_decodes_large_photos_at_reduced_scale_and_close_to_full() -> None:
    import numpy as np

    from model_store.crops import DRAFT_MIN_SIDE, prepare_crop

    big = images.encode(images.noise_image(4000, 3000, seed=1), "JPEG", quality=90)
    reduced = decode_image(big, CAP, draft_min_side=DRAFT_MIN_SIDE)
    assert reduced.size == (1000, 750)  # 1/4: 1/8 would leave the shorter side under 512
    full, how_full = prepare_crop(big, CAP, jpeg_draft=False)
    draft, how_draft = prepare_crop(big, CAP, jpeg_draft=True)
    assert (how_full, how_draft) == ("exact", "jpeg-draft-1/4")
    diff = np.abs(full.astype(int) - draft.astype(int))
    assert diff.mean() < 1.0  # noise is the worst case; a photo is ~0.25/255 (performance.md)


def test_jpeg_draft_scale_is_reported_for_exif_rotated_photos() -> None:
    from model_store.crops import prepare_crop

    rotated = images.exif_rotated_jpeg(2400, 1800, orientation=6)
    crop, how = prepare_crop(rotated, CAP, jpeg_draft=True)
    assert how == "jpeg-draft-1/2" and crop.shape == (224, 224, 3)


def test_jpeg_draft_leaves_small_images_and_other_formats_alone() -> None:
    from model_store.crops import prepare_crop

    small = images.jpeg(640, 480)
    exact, _ = prepare_crop(small, CAP, jpeg_draft=False)
    _, how = prepare_crop(images.jpeg(1000, 1000), CAP, jpeg_draft=True)
    assert how == "exact"  # under 1024 px a reduction would leave less than 512
    assert (prepare_crop(small, CAP, jpeg_draft=True)[0] == exact).all()
    assert decode_image(small, CAP, draft_min_side=256).size == (640, 480)
    png = images.png(2000, 1000)
    assert decode_image(png, CAP, draft_min_side=256).size == (2000, 1000)
