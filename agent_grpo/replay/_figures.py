"""Images in the HTML report: each stored image embedded once, drawn many times with boxes on top.

Every image becomes one SVG `<image id=...>` (a data URI) in a hidden `<defs>` block; a figure is an
`<svg viewBox="0 0 W H">` in the image's own pixel frame that `<use>`s it and draws boxes as
`<rect>`s in those same pixel coordinates, so boxes land exactly and an image shown by eight group
members is embedded once. Large images are embedded as JPEG thumbnails stretched back to their
frame; small crops are drawn pixelated so zoomed detail is not blurred.
"""

from __future__ import annotations

import base64
import io

from agent_grpo.boxes import Box, root_to_crop
from agent_grpo.content import ImagePart
from agent_grpo.replay._markup import Markup, el
from agent_grpo.store.run_store import RunStore

PIXELATED_BELOW = 256  # images smaller than this (longest side) are upscaled on screen


class ImageDefs:
    def __init__(self, store: RunStore, max_side: int = 640):
        if max_side < 1:
            raise ValueError(f"the longest side of embedded images must be at least 1 pixel, got {max_side}")
        self.store = store
        self.max_side = max_side
        self._defs: dict[str, Markup | None] = {}

    def ref(self, part: ImagePart) -> str | None:
        """The element id of this image's pixels, or None if the run did not store them."""
        if part.sha256 not in self._defs:
            image = self.store.load_image(part.sha256)  # pixels checked against the hash; None if missing or damaged
            self._defs[part.sha256] = None if image is None else self._define(part, image)
        return f"img-{part.sha256[:16]}" if self._defs[part.sha256] is not None else None

    def markup(self) -> Markup:
        images = [d for d in self._defs.values() if d is not None]
        return el("svg", el("defs", images), class_="defs", width=0, height=0, aria_hidden="true")

    def damaged(self, part: ImagePart) -> bool:
        return part.sha256 in self.store.damaged_images or part.sha256[:80] in self.store.damaged_images

    def _define(self, part: ImagePart, image) -> Markup:
        if max(image.size) <= self.max_side:
            buf = io.BytesIO()
            image.save(buf, format="PNG")  # the checked pixels, not the file's bytes (which may hold more)
            uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        else:
            image = image.convert("RGB")
            image.thumbnail((self.max_side, self.max_side))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=85)
            uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        small = max(part.width, part.height) < PIXELATED_BELOW
        return el(
            "image", id=f"img-{part.sha256[:16]}", href=uri, width=part.width, height=part.height,
            preserveAspectRatio="none", class_="pixelated" if small else None,
        )


def figure(defs: ImageDefs, part: ImagePart, caption: str, boxes: list[tuple[Box, str, str]] = ()) -> Markup:
    """An image with `(box in its own pixel frame, css class, tooltip)` rectangles drawn on it."""
    w, h = part.width, part.height
    ref = defs.ref(part)
    if ref is not None:
        body = [el("use", href=f"#{ref}")]
    else:
        why = "image damaged" if defs.damaged(part) else "image not stored"
        body = [el("rect", class_="missing", width=w, height=h),
                el("text", why, x=w / 2, y=h / 2, class_="missing")]
    for box, cls, tip in boxes:
        body.append(el("rect", el("title", tip), class_=f"box {cls}", x=_n(box.x1), y=_n(box.y1),
                       width=_n(box.width), height=_n(box.height)))
    svg = el("svg", body, class_="img", viewBox=f"0 0 {w} {h}", role="img", aria_label=caption,
             data_sha=part.sha256[:16])
    return el("figure", svg, el("figcaption", caption))


def box_on_parent(child: ImagePart, parent: ImagePart) -> Box | None:
    """Where `child` lies in `parent`'s pixels (both boxes are stored in the root frame)."""
    if child.box is None or parent.box is None or parent.box.area <= 0:
        return None
    return root_to_crop(child.box, parent.box, parent.width, parent.height)


def _n(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")
