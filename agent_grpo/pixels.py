"""Byte-bounded caches of decoded pixels, shared by the whole process.

Why: an image part that can reproduce its pixels (a seeded generator, a file, a store, PNG bytes held in
memory) need not keep them decoded. A 896 px canvas is 3.2 MB decoded (PIL keeps RGB as 4 bytes a
pixel) and a run touches thousands, so decoded pixels are held only here, under a byte limit, least
recently used out first; an evicted image is decoded again on its next access, with the same pixels
(its hash is checked). Two caches:

- `DECODED`: full-resolution pixels of lazy `ImagePart`s (what tools crop);
- `VIEWS`: the model's views of them (`VisualBudget.view`, used by `rollout.vision.VisionCache`), so a
  demonstration drawn again in a later SFT step is not decoded and resized again.

`configure` sets the limits (the recipes call it from their `memory` config) and `cache_metrics` reports
them (logged with every step as `memory/...`).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from PIL import Image

_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "LA": 4, "RGB": 4, "RGBA": 4, "I": 4, "F": 4}


def image_nbytes(image: Image.Image) -> int:
    """Memory PIL holds for the decoded pixels (RGB is stored 4 bytes a pixel)."""
    return image.width * image.height * _BYTES_PER_PIXEL.get(image.mode, 4)


class ImageCache:
    """LRU of PIL images by key, at most `max_bytes` of decoded pixels (0: keep nothing). Thread-safe:
    tools read images from a thread pool."""

    def __init__(self, name: str, max_bytes: int):
        self.name = name
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Image.Image, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = self.peak_bytes = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Hashable, make: Callable[[], Image.Image]) -> Image.Image:
        """The cached image for `key`, or `make()` (kept if it fits). Never mutate what it returns."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[0]
            self.misses += 1
        image = make()  # outside the lock: decoding may take a while, and two threads may both decode
        self.put(key, image)
        return image

    def put(self, key: Hashable, image: Image.Image) -> None:
        size = image_nbytes(image)
        with self._lock:
            if key in self._entries or size > self.max_bytes:
                return
            self._entries[key] = (image, size)
            self.bytes += size
            self._evict()
            self.peak_bytes = max(self.peak_bytes, self.bytes)

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def metrics(self) -> dict[str, float]:
        p = f"memory/{self.name}_"
        return {p + "mb": self.bytes / 2**20, p + "peak_mb": self.peak_bytes / 2**20, p + "entries": float(len(self)),
                p + "hits": float(self.hits), p + "misses": float(self.misses), p + "evictions": float(self.evictions)}

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._entries:
            _, (_, size) = self._entries.popitem(last=False)
            self.bytes -= size
            self.evictions += 1


DEFAULT_DECODED_MB = 256
DEFAULT_VIEWS_MB = 128

DECODED = ImageCache("decoded_images", DEFAULT_DECODED_MB * 2**20)
VIEWS = ImageCache("model_views", DEFAULT_VIEWS_MB * 2**20)


def configure(decoded_mb: float | None = None, views_mb: float | None = None) -> None:
    """Set the caches' limits in MiB (None leaves one as it is)."""
    if decoded_mb is not None:
        DECODED.resize(int(decoded_mb * 2**20))
    if views_mb is not None:
        VIEWS.resize(int(views_mb * 2**20))


def cache_metrics() -> dict[str, float]:
    return {**DECODED.metrics(), **VIEWS.metrics()}


def png_loader(image: Image.Image, compress_level: int = 1) -> Callable[[], Image.Image]:
    """A loader that decodes `image` from PNG bytes kept in memory (lossless: the same pixels).

    A tool's crop of a synthetic canvas compresses 10-50x, so a demonstration keeps kilobytes, not megabytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    data = buf.getvalue()

    def load() -> Image.Image:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.copy()

    load.nbytes = len(data)  # type: ignore[attr-defined]
    return load
