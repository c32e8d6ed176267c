"""Content-addressed PNG files: `images/<sha[:2]>/<sha>.png`, named by the pixel hash of `ImagePart`.

The hash covers mode, size and raw pixels (not PNG bytes), and PNG is lossless, so an image read
back hashes to its name; `load` checks that. Writes go through a temporary file and a rename: a
killed writer leaves a stray `.tmp`, never a truncated PNG under a real name.

A hash read from a record is data: `path` accepts only 64 lowercase hex digits and a path inside
the store, and `load` checks the header's size before decoding, so a crafted run can neither point
outside `images/` nor make a reader decode a PNG bomb.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

from PIL import Image

from agent_grpo.content import ImagePart
from agent_grpo.errors import StoreError
from agent_grpo.images import MAX_STORED_PIXELS, image_sha256, png_bytes
from agent_grpo.paths import UnsafePathError, contained_path, is_sha256

# Tool outputs in other modes are stored as RGB (the environment converts them to RGB anyway).
_KEPT_MODES = ("RGB", "RGBA", "L")


class ImageStore:
    def __init__(self, root: Path, durable: bool = False):
        self.root = root
        self.durable = durable
        self._bytes: int | None = None

    def path(self, sha256: str) -> Path:
        """Where image `sha256` is stored; StoreError for a value that is not a sha256."""
        if not is_sha256(sha256):
            raise StoreError(f"image hash {str(sha256)[:80]!r} is not a sha256 (64 lowercase hex digits)")
        try:
            return contained_path(self.root, f"{sha256[:2]}/{sha256}.png")
        except UnsafePathError as e:  # e.g. images/ab is a symlink out of the run
            raise StoreError(f"image {sha256[:12]}: {e}") from e

    def has(self, sha256: str) -> bool:
        """Whether a file is stored under this (valid) hash; False for a value that is not a sha256."""
        try:
            return self.path(sha256).is_file()
        except StoreError:
            return False

    @property
    def total_bytes(self) -> int:
        """Bytes of PNG stored (walked once, then kept up to date by `put`)."""
        if self._bytes is None:
            self._bytes = sum(p.stat().st_size for p in self.root.glob("*/*.png")) if self.root.exists() else 0
        return self._bytes

    def put_image(self, image: Image.Image) -> str:
        """Store a PIL image; returns its sha256. Already-stored images are not written again."""
        if image.mode not in _KEPT_MODES:
            image = image.convert("RGB")
        sha = image_sha256(image)
        self._write(sha, image)
        return sha

    def put(self, part: ImagePart) -> None:
        """Store the pixels of an image part (they must be attached unless the file exists)."""
        if self.has(part.sha256):
            return
        if not part.has_pixels:
            raise StoreError(
                f"image {part.sha256[:12]} (observation {part.observation}) has no pixels and is not in {self.root}"
            )
        self._write(part.sha256, part.pil)

    def load(self, sha256: str) -> Image.Image:
        path = self.path(sha256)
        if not path.exists():
            raise StoreError(f"image {sha256[:12]} is not stored in {self.root}")
        try:
            with Image.open(path) as im:
                # We only ever store images up to MAX_STORED_PIXELS: anything larger is not ours (a bomb?).
                if im.width * im.height > MAX_STORED_PIXELS:
                    raise StoreError(f"{path} claims {im.width}x{im.height} pixels, more than any stored image")
                image = im.copy()  # our own PNGs: no EXIF rotation
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001  PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            raise StoreError(f"cannot read stored image {path}: {type(e).__name__}: {e}") from e
        if image_sha256(image) != sha256:
            raise StoreError(f"{path} does not hold the pixels its name says (corrupt file?)")
        return image

    def attach(self, part: ImagePart) -> bool:
        """Give `part` its pixels from the store; False if they are not stored."""
        if part.has_pixels:
            return True
        if not self.has(part.sha256):
            return False
        part.attach(self.load(part.sha256))
        return True

    def attach_lazy(self, part: ImagePart) -> bool:
        """Give `part` a loader that reads its PNG when its pixels are used (nothing is decoded now);
        False if they are not stored. Keeps a long list of stored trajectories small in memory."""
        if part.has_pixels:
            return True
        if not self.has(part.sha256):
            return False
        part.release_pixels(load=functools.partial(self.load, part.sha256))
        return True

    def _write(self, sha: str, image: Image.Image) -> None:
        path = self.path(sha)
        if path.exists():
            return
        before = self.total_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        data = png_bytes(image)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._bytes = before + len(data)
