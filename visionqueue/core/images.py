"""Image intake: cheap validation at acceptance, full decoding for inference.

``inspect_image`` reads only the header (what ``POST /classify`` may afford);
``decode_image`` fully decodes to RGB the way our torchvision reference does
(EXIF orientation applied, first frame of an animation, ``convert("RGB")``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from visionqueue.core.errors import EmptyImage, ImageTooLarge, InvalidImage, UnsupportedMediaType

# Pillow format name -> content type we accept.
ACCEPTED_FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "GIF": "image/gif",
}
# Only these decoders may ever run on client bytes.
_FORMATS = tuple(ACCEPTED_FORMATS)


@dataclass(frozen=True)
class ImageInfo:
    format: str
    content_type: str
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """Return the accepted format the magic bytes announce, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise EmptyImage("the uploaded image is empty (0 bytes)")
    announced = sniff_format(data)
    if announced is None:
        raise UnsupportedMediaType(
            "not a supported image; send JPEG, PNG, WebP, BMP or GIF",
        )
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its own limit; we refuse by our own cap below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[announced])
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image dimensions exceed the limit of {max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"the {announced} image header is corrupt or unreadable") from exc
    check_dimensions(*image.size, max_pixels)
    return image


def check_dimensions(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image with no pixels (invalid) or more than ``max_pixels`` (too large)."""
    if width < 1 or height < 1:
        raise InvalidImage("the image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height}; the limit is {max_pixels} pixels",
            details={"width": width, "height": height, "max_pixels": max_pixels},
        )


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Validate an upload from its header only: format, dimensions, pixel cap."""
    image = _open(data, max_pixels)
    fmt = image.format or "?"
    return ImageInfo(fmt, ACCEPTED_FORMATS[fmt], image.size[0], image.size[1])


DRAFT_SCALE_KEY = "vq_jpeg_draft_scale"


def decode_image(data: bytes, max_pixels: int, draft_min_side: int = 0) -> Image.Image:
    """Fully decode an upload to an RGB image, orientation applied; first frame only.

    ``draft_min_side`` > 0 lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while the
    shorter side stays at least that long: large photos decode several times faster, at
    the cost of pixels that differ slightly from a full decode (off by default). The
    returned image's ``info[DRAFT_SCALE_KEY]`` is the reduction applied (1 = none).
    """
    image = _open(data, max_pixels)
    full_width = image.size[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.seek(0)
            if draft_min_side and image.format == "JPEG":
                width, height = image.size
                scale = draft_min_side / min(width, height)
                if scale < 0.5:
                    image.draft("RGB", (int(width * scale) + 1, int(height * scale) + 1))
            image.load()
            scale = max(1, round(full_width / image.size[0]))  # before any EXIF rotation
            image = ImageOps.exif_transpose(image) or image
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit greyscale: scale to 8 bits instead of clipping everything to white.
                image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
            rgb = image.convert("RGB")
            rgb.info[DRAFT_SCALE_KEY] = scale
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage("the image data is corrupt or truncated") from exc
    return rgb
