"""Conversation content: text parts, image parts with provenance, messages.

An `ImagePart` carries its pixels (private attributes, never serialised) and its provenance as data: which observation of the trajectory it is, which tool call made it, and which
box of the original image it shows. Stored runs keep the pixels as content-addressed PNG files
named by `sha256` (see `agent_grpo.store`).

Pixels are either pinned (`from_pil`, `attach`) or lazy (`from_source`, `lazy`): a lazy part holds a
loader that reproduces them (a seeded generator, a file, a store, PNG bytes) and its decoded pixels live
only in the byte-bounded `agent_grpo.pixels.DECODED` cache, so a long list of tasks or demonstrations
costs no decoded memory. A loader's pixels are checked against `sha256` each time they are decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from agent_grpo import pixels
from agent_grpo.boxes import Box
from agent_grpo.images import image_sha256, to_rgb


class TextPart(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """One image in a conversation, with where it came from.

    `box` is the region of the *root* image (observation `root`) that this image shows, in the
    root's pixel frame; for a task image it is the whole image.
    """

    model_config = ConfigDict(frozen=True)

    type: Literal["image"] = "image"
    sha256: str
    width: int
    height: int
    observation: int = Field(description="index of this image among the trajectory's images, in order")
    source: Literal["task", "tool"] = "task"
    tool_call_id: str | None = None
    tool_name: str | None = None
    parent: int | None = Field(default=None, description="observation this image was derived from")
    root: int = Field(default=0, description="observation of the original image this one shows part of")
    box: Box | None = Field(default=None, description="region of the root image, root pixel frame")

    _pil: Image.Image | None = PrivateAttr(default=None)
    _load: Callable[[], Image.Image] | None = PrivateAttr(default=None)

    @classmethod
    def from_pil(cls, image: Image.Image, **provenance) -> ImagePart:
        """Wrap a PIL image; `provenance` fills the fields above (observation, source, box, ...)."""
        image = to_rgb(image)
        provenance.setdefault("observation", 0)
        if provenance.get("box") is None and provenance.get("source", "task") == "task":
            provenance["box"] = Box(x1=0, y1=0, x2=image.width, y2=image.height)
        part = cls(sha256=image_sha256(image), width=image.width, height=image.height, **provenance)
        part._pil = image
        return part

    @classmethod
    def from_source(cls, image: Image.Image, load: Callable[[], Image.Image], **provenance) -> ImagePart:
        """Like `from_pil`, but the part keeps `load` (which must reproduce `image` exactly) instead of the
        pixels; `image` goes into the decoded-pixel cache, so using it right away decodes nothing."""
        part = cls.from_pil(image, **provenance)
        pixels.DECODED.put(part.sha256, part._pil)
        part._pil, part._load = None, load
        return part

    def lazy(self, load: Callable[[], Image.Image]) -> ImagePart:
        """A copy that holds `load` (which must reproduce these pixels) instead of the pixels."""
        new = self.model_copy()
        new._pil, new._load = None, load
        return new

    def release_pixels(self, load: Callable[[], Image.Image] | None = None) -> None:
        """Drop pinned pixels, in place (every holder of this part sees it), keeping `load` to reproduce
        them; without one, a lazy part keeps its own loader and a pinned one keeps its PNG bytes in memory."""
        if self._pil is None:
            if load is not None:
                self._load = load
            return
        self._load = load or self._load or pixels.png_loader(self._pil)
        self._pil = None

    @property
    def pil(self) -> Image.Image:
        if self._pil is not None:
            return self._pil
        if self._load is not None:
            return pixels.DECODED.get(self.sha256, self._decode)
        raise ValueError(
            f"image {self.sha256[:12]} (observation {self.observation}) has no pixels loaded; "
            "read it through agent_grpo.store.RunStore, which attaches them"
        )

    @property
    def has_pixels(self) -> bool:
        return self._pil is not None or self._load is not None

    @property
    def is_lazy(self) -> bool:
        """Pixels are decoded on access (and held only by the bounded cache), not kept by this part."""
        return self._pil is None and self._load is not None

    def _decode(self) -> Image.Image:
        image = self._load()
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image_sha256(image) != self.sha256:
            raise ValueError(f"the loader of image {self.sha256[:12]} (observation {self.observation}) gave other pixels")
        return image

    def attach(self, image: Image.Image) -> ImagePart:
        """Attach pixels (e.g. read back from a store); they must match the recorded hash."""
        if image_sha256(image) != self.sha256:
            raise ValueError(f"pixels do not match image {self.sha256[:12]}")
        self._pil = image
        return self

    def with_provenance(self, **update) -> ImagePart:
        """A copy with some provenance fields changed, sharing the pixels (or their loader)."""
        new = self.model_copy(update=update)
        new._pil, new._load = self._pil, self._load
        return new


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    """One chat message. Tool results use role `tool`; the chat template renders their images."""

    role: Literal["system", "user", "assistant", "tool"]
    content: list[ContentPart]

    @classmethod
    def text(cls, role: str, text: str) -> Message:
        return cls(role=role, content=[TextPart(text=text)])

    @property
    def images(self) -> list[ImagePart]:
        return [p for p in self.content if isinstance(p, ImagePart)]

    @property
    def text_content(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))
