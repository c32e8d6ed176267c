"""The tool plugin API: what a tool is, what it is given, what it returns.

A tool is a plain function decorated with `@tool`:

    class ZoomArgs(BaseModel):
        bbox_2d: list[float] = Field(description="[x1, y1, x2, y2] of the region")

    @tool(box_frame=CoordFrame.PIXELS)
    def zoom_in(args: ZoomArgs, ctx: ToolContext) -> ToolOutput:
        '''Zoom into a region of the image.'''          # <- shown to the model
        region = ctx.region(args.bbox_2d)
        return ToolOutput(images=[region.crop()])

Its docstring and its arguments model's JSON schema are what the model is shown. Publish it under the
entry-point group `agent_grpo.tools` (see `examples/agent-grpo-example-tool`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_grpo.boxes import Box, CoordFrame, crop_to_root, to_image_pixels
from agent_grpo.budget import BudgetUsage, VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.errors import ToolError
from agent_grpo.images import MAX_ASPECT_RATIO, MAX_STORED_PIXELS, fit_pixels, image_size_problem, to_rgb

_FRAME_HINT = {
    CoordFrame.PIXELS: "Box coordinates are pixels of the chosen image at its original size, [x1, y1, x2, y2].",
    CoordFrame.UNIT: "Box coordinates are fractions of the chosen image's width and height in [0, 1], [x1, y1, x2, y2].",
    CoordFrame.THOUSAND: "Box coordinates are in [0, 1000] relative to the chosen image, [x1, y1, x2, y2].",
}


class ToolManifest(BaseModel):
    """What the library needs to know about a tool beyond its arguments."""

    model_config = ConfigDict(frozen=True)

    box_frame: CoordFrame | None = Field(default=None, description="frame of box arguments, if any")
    returns_images: bool = True
    deterministic: bool = True
    aliases: tuple[str, ...] = Field(default=(), description="other names the model may call it by")
    timeout_s: float | None = Field(default=None, description="overrides the runner's default time-out")
    version: str = "0"


@dataclass
class ToolImage:
    """An image a tool made. `box` is the region of the root image it shows (root pixel frame)."""

    image: Image.Image
    parent: int
    box: Box | None = None


class ToolOutput(BaseModel):
    """What a tool returns: text for the model, new images, and metrics to log."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str | None = None
    images: list[ToolImage] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)


@dataclass
class Region:
    """A box resolved against one image: in that image's pixels and in the root image's pixels."""

    image: ImagePart
    pixels: tuple[int, int, int, int]  # integer crop bounds in `image`, clipped, non-empty
    root_box: Box | None  # the same region in the root image's frame; None if `image` has no root mapping
    expanded: bool = False  # grown to the minimum side

    def crop(self) -> ToolImage:
        return ToolImage(image=self.image.pil.crop(self.pixels), parent=self.image.observation, box=self.root_box)


@dataclass
class ToolContext:
    """What a running tool may see: the trajectory's images, its own state, the budget."""

    images: list[ImagePart]
    budget: VisualBudget = field(default_factory=VisualBudget)
    usage: BudgetUsage = field(default_factory=BudgetUsage)
    state: dict[str, Any] = field(default_factory=dict)  # this tool's per-trajectory state: JSON data (it crosses processes)
    box_frame: CoordFrame = CoordFrame.PIXELS

    def image(self, observation: int) -> ImagePart:
        if not isinstance(observation, int) or not 0 <= observation < len(self.images):
            raise ToolError(
                f"image {observation} does not exist; valid images are 0..{len(self.images) - 1}", kind="bad_image"
            )
        return self.images[observation]

    def region(self, box: list[float], observation: int = 0, min_side: int = 1) -> Region:
        """Resolve a model-written box on image `observation`.

        Converts from the tool's frame to pixels, clips to the image, rejects boxes that are
        inverted, empty or mostly outside, and grows boxes smaller than `min_side` around their centre.
        """
        target = self.image(observation)
        try:
            written = Box.from_list(box)
            # Huge coordinates can overflow to inf when scaled from [0, 1] / [0, 1000]: a bad box too.
            px = to_image_pixels(written, self.box_frame, target.width, target.height)
        except ValueError as e:
            raise ToolError(_reason(e), kind="bad_box") from e
        inside = px.clip(target.width, target.height)
        if px.area <= 0 or inside.area <= 0:
            raise ToolError(
                f"box {box} is empty or outside image {observation} ({target.width}x{target.height} pixels)",
                kind="bad_box",
            )
        if inside.area < 0.5 * px.area:
            raise ToolError(
                f"box {box} lies mostly outside image {observation} ({target.width}x{target.height} pixels)",
                kind="bad_box",
            )
        x1, y1, x2, y2 = (round(inside.x1), round(inside.y1), round(inside.x2), round(inside.y2))
        expanded = False
        side = min(min_side, target.width, target.height)
        if x2 - x1 < side or y2 - y1 < side:
            expanded = True
            x1, x2 = _grow(x1, x2, side, target.width)
            y1, y2 = _grow(y1, y2, side, target.height)
        pixels = (x1, y1, x2, y2)
        if image_size_problem(x2 - x1, y2 - y1) is not None:  # a sliver no model can be shown
            raise ToolError(
                f"box {box} is {x2 - x1}x{y2 - y1} pixels of image {observation}, too thin to show "
                f"(aspect ratio over {MAX_ASPECT_RATIO}); choose a wider box",
                kind="bad_box",
            )
        # Rotated or flipped images (box None) show no axis-aligned region of the root: no mapping.
        root_box = None
        if target.box is not None:
            root_box = crop_to_root(Box(x1=x1, y1=y1, x2=x2, y2=y2), target.box, target.width, target.height)
        return Region(image=target, pixels=pixels, root_box=root_box, expanded=expanded)


def _reason(e: ValueError) -> str:
    """The model-facing reason of a failed box check, without pydantic's type and URL noise."""
    if isinstance(e, ValidationError):
        return "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
    return str(e)


def _grow(lo: int, hi: int, side: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to at least `side` around its centre, shifted to stay inside [0, limit)."""
    if hi - lo >= side:
        return lo, hi
    centre = (lo + hi) / 2
    lo = round(centre - side / 2)
    lo = min(max(lo, 0), limit - side)
    return lo, lo + side


def check_output(output: Any, tool_name: str, n_images: int) -> ToolOutput:
    """The one check every tool result passes before an environment sees it.

    Returns a clean copy (images 8-bit RGB, capped at `MAX_STORED_PIXELS`, sizes a Qwen-VL model can be
    shown, parents among the `n_images` images of the call) or raises `ToolError` saying what is wrong.
    """
    if not isinstance(output, ToolOutput):
        raise ToolError(f"tool {tool_name} returned {type(output).__name__}, expected ToolOutput")
    if output.text is not None and not isinstance(output.text, str):
        raise ToolError(f"tool {tool_name} returned text of type {type(output.text).__name__}, expected str")
    images: list[ToolImage] = []
    for k, out in enumerate(output.images):
        what = f"tool {tool_name} returned image {k}"
        if not isinstance(out, ToolImage):
            raise ToolError(f"{what} as {type(out).__name__}, expected ToolImage")
        if not isinstance(out.image, Image.Image):
            raise ToolError(f"{what} as {type(out.image).__name__}, expected a PIL image (Image.fromarray converts arrays)")
        if isinstance(out.parent, bool) or not isinstance(out.parent, int) or not 0 <= out.parent < n_images:
            raise ToolError(f"{what} with parent {out.parent!r}; valid images are 0..{n_images - 1}")
        if out.box is not None and not isinstance(out.box, Box):
            raise ToolError(f"{what} with a box of type {type(out.box).__name__}, expected Box or None")
        problem = image_size_problem(*out.image.size)
        if problem is None:
            try:
                image = fit_pixels(to_rgb(out.image), MAX_STORED_PIXELS)
            except (OSError, ValueError, TypeError) as e:  # e.g. a mode PIL cannot convert
                raise ToolError(f"{what} that cannot be converted to RGB: {e}") from e
            problem = image_size_problem(*image.size)  # downscaling rounds sides: check again
        if problem is not None:
            raise ToolError(f"{what} that cannot be shown to the model: {problem}")
        images.append(ToolImage(image=image, parent=out.parent, box=out.box))
    try:
        metrics = {str(k): float(v) for k, v in dict(output.metrics).items()}
    except (TypeError, ValueError) as e:
        raise ToolError(f"tool {tool_name} returned metrics that are not numbers: {e}") from e
    return ToolOutput(text=output.text, images=images, metrics=metrics)


ToolFn = Callable[[BaseModel, ToolContext], ToolOutput]


class Tool(BaseModel):
    """A named, described, typed tool. Build one with `@tool`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    description: str
    arguments: type[BaseModel]
    manifest: ToolManifest = Field(default_factory=ToolManifest)
    fn: ToolFn

    def json_schema(self) -> dict[str, Any]:
        """The function schema shown to the model (Qwen/Hermes `tools` format)."""
        params = _strip_titles(self.arguments.model_json_schema())
        description = self.description
        if self.manifest.box_frame is not None:
            description = f"{description} {_FRAME_HINT[self.manifest.box_frame]}"
        return {"type": "function", "function": {"name": self.name, "description": description, "parameters": params}}

    def __call__(self, args: BaseModel | dict, ctx: ToolContext) -> ToolOutput:
        if isinstance(args, dict):
            args = self.arguments.model_validate(args)
        return self.fn(args, ctx)


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's auto-generated `title` keys: tokens the model would read for nothing."""
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title" or not isinstance(v, str)}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def tool(
    name: str | None = None,
    *,
    box_frame: CoordFrame | None = None,
    returns_images: bool = True,
    deterministic: bool = True,
    aliases: tuple[str, ...] = (),
    timeout_s: float | None = None,
    version: str = "0",
) -> Callable[[Callable], Tool]:
    """Turn `fn(args: ArgsModel, ctx: ToolContext) -> ToolOutput` into a `Tool`."""

    def wrap(fn: Callable) -> Tool:
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise TypeError(f"tool {fn.__name__} must take (args, ctx), got parameters {params}")
        args_type = hints.get(params[0])
        if not (inspect.isclass(args_type) and issubclass(args_type, BaseModel)):
            raise TypeError(f"tool {fn.__name__}: annotate its first parameter with a pydantic model")
        doc = inspect.cleandoc(fn.__doc__ or "")
        if not doc:
            raise TypeError(f"tool {fn.__name__} needs a docstring: it is the description the model reads")
        manifest = ToolManifest(
            box_frame=box_frame,
            returns_images=returns_images,
            deterministic=deterministic,
            aliases=tuple(aliases),
            timeout_s=timeout_s,
            version=version,
        )
        return Tool(name=name or fn.__name__, description=doc, arguments=args_type, manifest=manifest, fn=fn)

    return wrap
