"""Drawing one visual-search canvas from a seed.

The design follows what the tiny model can learn (DESIGN section 9, BENCHMARKS.md "Perception probes"):
- Red squares, one near the centre of each of a few cells of a 4 x 4 grid, each holding a digit.
- Two ways to ask (`names_cell`):
  - the question names the cell to read (row, column and its box), and three red squares make a
    zoom into the wrong cell answer wrong: the policy copies a box and learns when to zoom, how
    tightly and how often;
  - the find variant: one red square and a question that names nothing, so the model must find the
    square in the full view (224 px) first. The tiny model learns to locate the one salient, filled
    square at 224 px (perception pretraining, stage 2), not at 112 px (chance for 400+ steps: with
    2-D rotary positions only, a token's absolute place is hard to read out of a 4 x 4 token grid).
- At the full view (4-8x smaller) the 60-68 px digit is 8-17 px with 1-2 px strokes, which the model
  does not read; a zoom on the cell, shown at 112 px, centres a 30-34 px digit, which it learns to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, model_validator

RGB = tuple[int, int, int]

# Muted clutter colours: nothing red, orange or pink, so the target stays the one salient patch.
_CLUTTER_COLORS: tuple[RGB, ...] = (
    (90, 110, 160), (80, 140, 120), (120, 120, 120), (150, 140, 100), (100, 100, 140), (110, 150, 170),
    (140, 150, 110), (160, 160, 170),
)


class VisualSearchConfig(BaseModel):
    """Options of the visual-search generator and its rubric. Defaults are the embedded demo."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    canvas_size: int = Field(default=896, ge=112, description="side of the square canvas, original pixels")
    grid: int = Field(default=4, ge=1, le=8, description="the canvas is a grid x grid array of cells")
    patch_side: tuple[int, int] = Field(default=(104, 120), description="side range of the red square, pixels")
    glyph_height: tuple[int, int] = Field(default=(60, 68), description="digit height range, pixels")
    red_squares: int = Field(
        default=3, ge=1, le=16, description="red squares with digits, in distinct cells; the question names one"
    )
    names_cell: bool = Field(
        default=True,
        description="the question names the target's cell and box; false: it does not, and the one red square "
        "(red_squares must be 1) has to be found in the full view",
    )
    full_view: int = Field(
        default=112, ge=28, description="side of the model's view of the whole canvas, pixels (zooms are shown at 112)"
    )
    position_tint: int = Field(
        default=0, ge=0, le=60,
        description="background red rises left to right and blue top to bottom by 2x this many levels (0: flat)",
    )
    target_offset: int = Field(
        default=6, ge=0, description="the red square's centre lies at most this far from its cell's centre, pixels"
    )
    target_color: RGB = (215, 30, 35)
    glyph_color: RGB = (255, 255, 255)
    glyph_rotation: float = Field(default=10.0, ge=0, le=45, description="digits turn by up to this many degrees")
    glyph_bold: int = Field(default=0, ge=0, le=4, description="strokes thicken by 0..glyph_bold pixels")
    color_jitter: int = Field(default=20, ge=0, le=60, description="per-channel colour variation of patch and digit")
    clutter: bool = Field(default=True, description="faint lines, small muted shapes and decoy digits")
    decoys: int = Field(default=3, ge=0, le=15, description="dark decoy digits in other cells")
    train_size: int = Field(default=1000, ge=0, description="tasks in the train split when n is not given")
    test_size: int = Field(default=200, ge=0, description="tasks in the test split when n is not given")
    tool_bonus: float = Field(default=0.5, ge=0, description="weight of the tool-used-and-correct bonus")
    tool_cost: float = Field(
        default=0.2, ge=0,
        description="tool-efficiency reward: subtracted per needless zoom (extra, or missing the target cell); 0: off",
    )

    @model_validator(mode="before")
    @classmethod
    def _ranges(cls, data):
        if isinstance(data, dict):
            for key in ("patch_side", "glyph_height"):
                if isinstance(data.get(key), int):
                    data = {**data, key: (data[key], data[key])}
        return data

    @model_validator(mode="after")
    def _check(self) -> VisualSearchConfig:
        for key in ("patch_side", "glyph_height"):
            lo, hi = getattr(self, key)
            if not 0 < lo <= hi:
                raise ValueError(f"{key} must be a range (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
        if not self.names_cell and self.red_squares != 1:
            raise ValueError(
                f"names_cell false needs red_squares 1 (got {self.red_squares}): a question that names no cell "
                "must have one red square to ask about"
            )
        if self.canvas_size % self.grid:
            raise ValueError(f"canvas_size {self.canvas_size} must be a multiple of grid {self.grid}")
        if self.patch_side[1] + 2 * _MARGIN > self.cell_size:
            raise ValueError(
                f"patch_side up to {self.patch_side[1]} does not fit a {self.cell_size} px cell with "
                f"{_MARGIN} px margins; lower patch_side or grid"
            )
        if self.glyph_height[1] + 2 * _PAD > self.patch_side[0]:
            raise ValueError(
                f"glyph_height up to {self.glyph_height[1]} does not fit a {self.patch_side[0]} px patch with "
                f"{_PAD} px padding; raise patch_side or lower glyph_height"
            )
        return self

    @property
    def cell_size(self) -> int:
        return self.canvas_size // self.grid


_MARGIN = 8  # patch to cell border
_PAD = 10  # glyph to patch border, vertically


@dataclass(frozen=True)
class Scene:
    """One generated canvas and where everything is (original pixels, [x1, y1, x2, y2])."""

    image: Image.Image
    digit: int
    cell: int  # 1-based, row-major
    cell_box: tuple[int, int, int, int]
    target_box: tuple[int, int, int, int]  # the red square
    glyph_box: tuple[int, int, int, int]  # ink bounds of the digit
    decoys: tuple[int, ...]  # cells holding decoy digits
    other_squares: tuple[tuple[int, int], ...] = ()  # (cell, digit) of the red squares not asked about


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    """PIL's built-in scalable font (no system fonts involved)."""
    return ImageFont.load_default(size=size)


@cache
def _font_size_for(height: int) -> int:
    """The font size whose tallest digit is `height` pixels tall."""
    size = max(4, round(height / 0.73))
    while size > 4 and _digit_height(size) > height:
        size -= 1
    while _digit_height(size + 1) <= height:
        size += 1
    return size


def _digit_height(size: int) -> int:
    f = font(size)
    return max(f.getbbox(str(d))[3] - f.getbbox(str(d))[1] for d in range(10))


def draw_digit(
    image: Image.Image, digit: int, height: int, centre: tuple[float, float], fill: RGB,
    angle: float = 0.0, bold: int = 0,
) -> tuple[int, int, int, int]:
    """Draw a digit about `height` pixels tall, rotated by `angle` degrees, centred on `centre`.

    `bold` thickens the strokes by that many pixels. Returns the ink box on `image`.
    """
    f = font(_font_size_for(height))
    x1, y1, x2, y2 = f.getbbox(str(digit), stroke_width=bold)
    pad = 4
    mask = Image.new("L", (x2 - x1 + 2 * pad, y2 - y1 + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - x1, pad - y1), str(digit), font=f, fill=255, stroke_width=bold, stroke_fill=255)
    if angle:
        mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    ox = round(centre[0] - mask.width / 2)
    oy = round(centre[1] - mask.height / 2)
    image.paste(Image.new("RGB", mask.size, fill), (ox, oy), mask)
    bx1, by1, bx2, by2 = mask.getbbox() or (0, 0, mask.width, mask.height)
    return (ox + bx1, oy + by1, ox + bx2, oy + by2)


def generate(seed: int, config: VisualSearchConfig | None = None, digit: int | None = None) -> Scene:
    """Draw the canvas of one task. The same seed and config always give the same pixels.

    `digit` overrides the drawn digit and nothing else (the scene is otherwise identical), which is
    how tests compare the pixels two digits leave in each view.
    """
    cfg = config or VisualSearchConfig()
    rng = np.random.default_rng(seed)
    size, cell_px, grid = cfg.canvas_size, cfg.cell_size, cfg.grid

    base = int(rng.integers(222, 234))
    tint = rng.integers(-6, 7, size=3)
    image = _background(size, base + tint, cfg.position_tint)
    draw = ImageDraw.Draw(image)

    cell = int(rng.integers(grid * grid))
    drawn = int(rng.integers(10))
    digit = drawn if digit is None else digit
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be 0-9, got {digit}")
    others = [c for c in range(grid * grid) if c != cell]
    k = min(cfg.red_squares - 1, len(others))
    square_cells = [int(c) for c in rng.choice(others, size=k, replace=False)]
    # Other squares never show the asked digit, so a zoom into the wrong cell gives a wrong answer.
    # They are drawn from `drawn`, not `digit`: overriding the digit changes nothing else.
    square_digits = [(drawn + int(d)) % 10 for d in rng.choice(np.arange(1, 10), size=k, replace=False)]

    decoy_cells: tuple[int, ...] = ()
    if cfg.clutter:
        _clutter(draw, rng, size)
        free = [c for c in others if c not in square_cells]
        decoy_cells = tuple(sorted(int(c) for c in rng.choice(free, size=min(cfg.decoys, len(free)), replace=False)))
        for c in decoy_cells:
            r, q = divmod(c, grid)
            h = int(rng.integers(cfg.glyph_height[0], cfg.glyph_height[1] + 1))
            cx = q * cell_px + rng.uniform(0.25, 0.75) * cell_px
            cy = r * cell_px + rng.uniform(0.25, 0.75) * cell_px
            grey = int(rng.integers(60, 120))
            angle = rng.uniform(-cfg.glyph_rotation, cfg.glyph_rotation)
            draw_digit(image, int(rng.integers(10)), h, (cx, cy), (grey, grey, grey + 10), angle)

    for c, d in zip(square_cells, square_digits, strict=True):
        _red_square(image, draw, rng, cfg, _cell_box(c, cfg), d)
    cell_box = _cell_box(cell, cfg)
    target_box, glyph_box = _red_square(image, draw, rng, cfg, cell_box, digit)
    return Scene(
        image=image, digit=digit, cell=cell + 1, cell_box=cell_box, target_box=target_box, glyph_box=glyph_box,
        decoys=tuple(c + 1 for c in decoy_cells),
        other_squares=tuple(sorted((c + 1, d) for c, d in zip(square_cells, square_digits, strict=True))),
    )


def _cell_box(cell: int, cfg: VisualSearchConfig) -> tuple[int, int, int, int]:
    """Pixel box of 0-based, row-major `cell`."""
    row, col = divmod(cell, cfg.grid)
    side = cfg.cell_size
    return (col * side, row * side, (col + 1) * side, (row + 1) * side)


def _red_square(
    image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator, cfg: VisualSearchConfig,
    cell_box: tuple[int, int, int, int], digit: int,
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """A red square near the centre of `cell_box` with `digit` near its centre: (square box, ink box)."""
    cell_px = cfg.cell_size
    side = int(rng.integers(cfg.patch_side[0], cfg.patch_side[1] + 1))
    room = max(0, min(cfg.target_offset, (cell_px - side) // 2 - _MARGIN))
    px = cell_box[0] + (cell_px - side) // 2 + int(rng.integers(-room, room + 1))
    py = cell_box[1] + (cell_px - side) // 2 + int(rng.integers(-room, room + 1))
    draw.rectangle([px, py, px + side - 1, py + side - 1], fill=_jitter(cfg.target_color, cfg.color_jitter, rng))
    height = int(rng.integers(cfg.glyph_height[0], cfg.glyph_height[1] + 1))
    slack = min(float(cfg.target_offset), max(0.0, (side - height) / 2 - _PAD))
    centre = (px + side / 2 + rng.uniform(-slack, slack), py + side / 2 + rng.uniform(-slack, slack))
    angle = rng.uniform(-cfg.glyph_rotation, cfg.glyph_rotation)
    bold = int(rng.integers(cfg.glyph_bold + 1))
    glyph_box = draw_digit(image, digit, height, centre, _jitter(cfg.glyph_color, cfg.color_jitter, rng), angle, bold)
    return (px, py, px + side, py + side), glyph_box


def _background(size: int, color: np.ndarray, tint: int) -> Image.Image:
    """A flat colour whose red rises left to right and blue top to bottom (by `2 * tint` levels).

    Why: the Qwen2.5-VL vision tower has no absolute position embedding (2-D rotary attention only),
    so a small model trained briefly sees *what* is in a patch but not *where* it is. The tint makes a
    patch's position part of its content, the way a real photo's context tells where a region lies,
    so the red square's cell can be read off its surroundings."""
    ramp = np.linspace(-tint, tint, size)

    def level(value) -> np.ndarray:  # float32 then rounded, as the pixels always were (the tasks stay the same)
        return np.clip(np.rint(np.asarray(value, dtype=np.float32)), 0, 255).astype(np.uint8)

    # Red varies only along x and blue only along y: round one row and one column, then broadcast (5x faster).
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = level(color[0] + ramp)[None, :]
    pixels[..., 1] = level(color[1])
    pixels[..., 2] = level(color[2] + ramp)[:, None]
    return Image.fromarray(pixels, "RGB")


def _jitter(color: RGB, amount: int, rng: np.random.Generator) -> RGB:
    shift = rng.integers(-amount, amount + 1, size=3) if amount else np.zeros(3, dtype=int)
    return tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(color, shift, strict=True))  # type: ignore[return-value]


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """Faint lines and small muted shapes all over the canvas."""
    for _ in range(int(rng.integers(10, 20))):
        x1, y1, x2, y2 = (int(v) for v in rng.integers(0, size, size=4))
        grey = int(rng.integers(170, 215))
        draw.line([x1, y1, x2, y2], fill=(grey, grey, grey), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(10, 18))):
        s = int(rng.integers(10, 36))
        x, y = (int(v) for v in rng.integers(0, size - s, size=2))
        color = _CLUTTER_COLORS[int(rng.integers(len(_CLUTTER_COLORS)))]
        kind = int(rng.integers(3))
        filled = bool(rng.integers(2))
        fill, outline = (color, None) if filled else (None, color)
        if kind == 0:
            draw.ellipse([x, y, x + s, y + s], fill=fill, outline=outline, width=2)
        elif kind == 1:
            draw.rectangle([x, y, x + s, y + s], fill=fill, outline=outline, width=2)
        else:
            draw.polygon([(x, y + s), (x + s, y + s), (x + s / 2, y)], fill=fill, outline=outline, width=2)
