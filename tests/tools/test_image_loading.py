"""agent_grpo.images.load_image: upright, RGB, and a clear ImageError for anything unsafe or broken."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from agent_grpo.errors import ImageError
from agent_grpo.images import fit_pixels, load_image

ORIENTATION = 0x0112


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _half_red_half_blue(width: int = 40, height: int = 20) -> Image.Image:
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width` x `height` pixels but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored sideways: display after turning 90 degrees clockwise
    path = tmp_path / "sideways.jpg"
    path.write_bytes(_encode(_half_red_half_blue(), "JPEG", exif=exif.tobytes(), quality=95))
    image = load_image(path)
    assert image.size == (20, 40) and image.mode == "RGB"
    arr = np.asarray(image).astype(int)
    # The stored left half (red) is now on top, the right half (blue) at the bottom.
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60


def test_png_round_trips_pixel_exact_and_converts_to_rgb():
    arr = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3)
    np.testing.assert_array_equal(np.asarray(load_image(_encode(Image.fromarray(arr), "PNG"))), arr)
    rgba = Image.fromarray(np.zeros((4, 6, 4), dtype=np.uint8), mode="RGBA")
    assert load_image(_encode(rgba, "PNG")).mode == "RGB"
    assert load_image(rgba).mode == "RGB"


def test_truncated_file_is_an_image_error():
    data = _encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG"
    )
    with pytest.raises(ImageError, match="could not be decoded \\(truncated or corrupt\\?\\)"):
        load_image(data[: len(data) // 2])


def test_corrupt_bytes_and_missing_files_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match="<bytes> is not a readable image"):
        load_image(b"this is not an image at all")
    with pytest.raises(ImageError, match="cannot read image .*missing.png"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_header_is_refused():
    with pytest.raises(ImageError, match="too large to decode safely"):
        load_image(_png_header(100_000, 100_000))


def test_decode_limit_is_checked_before_decoding():
    with pytest.raises(ImageError, match="is 5000x5000 = 25000000 pixels, over the decode limit of 1000000"):
        load_image(_png_header(5000, 5000), max_pixels=1_000_000)
    with pytest.raises(ImageError, match="is 64x64 = 4096 pixels, over the decode limit of 1000"):
        load_image(_encode(_half_red_half_blue(64, 64), "PNG"), max_pixels=1000)


def test_fit_pixels_downscales_keeping_aspect_and_never_upscales():
    image = _half_red_half_blue(400, 100)
    small = fit_pixels(image, 10_000)
    assert small.size == (200, 50)
    assert fit_pixels(small, 10**6) is small


def _png_rgb16(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_16_bit_png_keeps_its_grey_levels_instead_of_turning_white():
    ramp = (np.arange(64, dtype=np.uint32) * 1028).astype(np.uint16).reshape(8, 8)  # 0 .. 64764
    decoded = Image.open(io.BytesIO(_encode(Image.fromarray(ramp), "PNG")))
    assert decoded.mode.startswith("I")  # PIL's own convert("RGB") clips these to 255
    out = np.asarray(load_image(_encode(Image.fromarray(ramp), "PNG")))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], np.rint(ramp / 257).astype(np.uint8))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 252
    colour = np.zeros((2, 3, 3), dtype=np.uint16)
    colour[0, 0] = (65535, 0, 32896)
    rgb = np.asarray(load_image(_png_rgb16(colour)))
    assert tuple(rgb[0, 0]) == (255, 0, 128) and tuple(rgb[1, 2]) == (0, 0, 0)


def test_float_tiffs_are_scaled_not_clipped():
    unit = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    out = np.asarray(load_image(_encode(Image.fromarray(unit, mode="F"), "TIFF")))
    np.testing.assert_array_equal(out[..., 1], np.rint(unit * 255).astype(np.uint8))
    wide = np.linspace(-500, 1500, 16, dtype=np.float32).reshape(4, 4)  # not [0, 1]: its own range
    out = np.asarray(load_image(_encode(Image.fromarray(wide, mode="F"), "TIFF")))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and len(np.unique(out[..., 0])) == 16


def test_transparent_pixels_are_composited_on_white_not_shown_in_their_hidden_colour():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # every pixel hides red ...
    rgba[:2, :, 3] = 0  # ... the top half fully transparent
    rgba[2:, :, 3] = 255
    rgba[3, 3, 3] = 128  # and one half-transparent red pixel
    out = np.asarray(load_image(_encode(Image.fromarray(rgba, mode="RGBA"), "PNG")))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[2, 0]) == (255, 0, 0)
    assert tuple(out[3, 3]) == (255, 127, 127)
    palette = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    out = np.asarray(load_image(_encode(palette, "PNG", transparency=0)))  # index 0 (black) is transparent
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (255, 0, 0)
    grey_alpha = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), mode="LA")
    out = np.asarray(load_image(_encode(grey_alpha, "PNG")))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (0, 0, 0)


def test_tool_images_in_odd_modes_are_converted_the_same_way():
    from agent_grpo.content import ImagePart

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # transparent black
    part = ImagePart.from_pil(Image.fromarray(rgba, mode="RGBA"))
    assert tuple(np.asarray(part.pil)[0, 0]) == (255, 255, 255)
