"""Image helpers: safe decoding, content hashes, PNG bytes and the Qwen-VL resize rule.

Images from users and tools go through `load_image` (EXIF orientation applied, decompression bombs
and corrupt files rejected with `ImageError`) and `fit_pixels` (downscale to a pixel budget).
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from agent_grpo.errors import ImageError

# Refuse to decode anything larger than PIL's own warning threshold (~89 M pixels): PIL only warns
# between 1x and 2x that, and a bomb must never reach the model.
MAX_DECODE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# Tool outputs above this are downscaled before they are kept (a rotate of a huge image, say).
MAX_STORED_PIXELS = 4096 * 4096

# Qwen2-VL / Qwen2.5-VL vision geometry: 14 px patches merged 2x2 into one token (the default of the
# functions below; Qwen3-VL's 16 px patches give `factor=32`, see `agent_grpo.models.family`).
PATCH_SIZE = 14
MERGE_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: both sides of a model image are multiples of this


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_DECODE_PIXELS) -> Image.Image:
    """Decode an image file or bytes into an RGB PIL image, upright per its EXIF orientation.

    Raises `ImageError` naming the problem for missing, corrupt, truncated or oversized images.
    """
    if isinstance(source, Image.Image):
        image = source
        name = "<PIL image>"
    else:
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        try:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
        except OSError as e:
            raise ImageError(f"cannot read image {name}: {e}") from e
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:  # not an OSError: PIL refuses the header's size
            raise ImageError(f"{name} is too large to decode safely (decompression bomb?): {e}") from e
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ImageError(f"{name} is not a readable image: {e}") from e
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name} has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} = {width * height} pixels, over the decode limit of {max_pixels}; "
            "downscale it before use"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name} could not be decoded (truncated or corrupt?): {e}") from e
    return to_rgb(image)


# Where transparent pixels are composited: a defined colour, never whatever colour they hide.
BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """An 8-bit RGB copy of any PIL image: high bit depths scaled, transparency composited on `background`.

    PIL's own `convert("RGB")` clips 16-bit and float pixels to 255 (a 16-bit PNG turns white) and drops
    alpha, showing the colour transparent pixels happen to hold.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _scale_to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """A single-channel 16-bit, 32-bit or float image as 8-bit grey, scaled rather than clipped.

    16-bit data (`I;16*`, or `I` holding values up to 65535, as 16-bit PNGs decode) is divided by 257;
    floats in [0, 1] are multiplied by 255; anything else is stretched from its own minimum to maximum.
    """
    import numpy as np

    values = np.asarray(image).astype(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and lo >= 0 and hi <= 65535 and hi > 255):
        scaled = values / 257.0
    elif image.mode == "I" and lo >= 0 and hi <= 255:
        scaled = values
    elif image.mode == "F" and lo >= 0 and hi <= 1:
        scaled = values * 255.0
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def image_sha256(image: Image.Image) -> str:
    """Content hash of an image's pixels (mode, size and raw bytes), independent of PNG encoders."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


MAX_ASPECT_RATIO = 200  # Qwen-VL's image processor refuses longer / shorter sides beyond this


def image_size_problem(width: int, height: int) -> str | None:
    """Why an image of this size cannot be shown to a Qwen-VL model, or None if it can."""
    if min(height, width) < 1:
        return f"image size must be positive, got {width}x{height}"
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        return f"aspect ratio over {MAX_ASPECT_RATIO} is not supported by Qwen-VL, got {width}x{height}"
    return None


def smart_resize(
    height: int,
    width: int,
    min_pixels: int = 4 * FACTOR * FACTOR,
    max_pixels: int = 1280 * FACTOR * FACTOR,
    factor: int = FACTOR,
) -> tuple[int, int]:
    """The size (h, w) Qwen-VL's image processor resizes an image to.

    Both sides become multiples of `factor` (28; 32 for Qwen3-VL) with the aspect ratio kept as well as
    rounding allows and `min_pixels <= h * w <= max_pixels`. Same rule as transformers' `smart_resize`.
    """
    problem = image_size_problem(width, height)
    if problem is not None:
        raise ValueError(problem)
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def visual_tokens(width: int, height: int, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> int:
    """Number of `<|image_pad|>` tokens a Qwen-VL model spends on an image of this size (`factor`: pixels per
    token side, 28 for Qwen2/2.5-VL, 32 for Qwen3-VL)."""
    h, w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels, factor=factor)
    return (h // factor) * (w // factor)


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """Downscale (never upscale) so that width * height <= max_pixels, keeping the aspect ratio."""
    if image.width * image.height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (image.width * image.height))
    w = max(1, math.floor(image.width * scale))
    h = max(1, math.floor(image.height * scale))
    return image.resize((w, h), Image.Resampling.BICUBIC)


def model_view(image: Image.Image, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> Image.Image:
    """The image as the model sees it: resized to the Qwen-VL grid size for these pixel limits.

    Images are stored at full resolution (tools crop the original pixels); this is the one place
    where they are shrunk for the model, so visual-token counts and the processor always agree.
    """
    h, w = smart_resize(image.height, image.width, min_pixels=min_pixels, max_pixels=max_pixels, factor=factor)
    if (w, h) == image.size:
        return image
    return image.resize((w, h), Image.Resampling.BICUBIC)
