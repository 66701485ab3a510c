"""The quick start's training curve as a PNG, drawn with PIL (the demo needs no plotting library): the Fréchet
distance to the real digits and the loss against the training step, one panel each, sharing the step axis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..publishing import write_atomically

WIDTH, PANEL_HEIGHT = 720, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 30, 40
BLUE, GREY, RED, BLACK, LIGHT = (31, 119, 180), (200, 200, 200), (214, 39, 40), (0, 0, 0), (230, 230, 230)


@dataclass
class Panel:
    """One panel: lines of (steps, values, colour, width), an optional dashed level, its title."""

    title: str
    lines: list[tuple[Sequence[float], Sequence[float], tuple[int, int, int], int]]
    level: tuple[float, str] | None = None
    log_scale: bool = False
    labels: list[tuple[float, float, str]] = field(default_factory=list)  # (step, value, text) beside points


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + k * step for k in range(int((high - first) / step + 1e-9) + 1)]


def _draw_panel(draw: ImageDraw.ImageDraw, panel: Panel, top: int, max_step: float, font, show_steps: bool) -> None:
    left, right, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, top + PANEL_HEIGHT - MARGIN_BOTTOM
    plot_top = top + MARGIN_TOP
    values = [v for _, ys, _, _ in panel.lines for v in ys] + ([panel.level[0]] if panel.level else [])
    transform = (lambda v: math.log10(v)) if panel.log_scale else (lambda v: v)
    low, high = transform(min(values)), transform(max(values))
    pad = 0.05 * (high - low or 1.0)
    low, high = low - pad, high + pad

    def xy(step: float, value: float) -> tuple[float, float]:
        x = left + (right - left) * step / max_step
        y = bottom - (bottom - plot_top) * (transform(value) - low) / (high - low)
        return x, y

    draw.text((left, top + 6), panel.title, fill=BLACK, font=font)
    if panel.log_scale:
        ticks = [10**k * m for k in range(math.floor(low) - 1, math.ceil(high) + 1) for m in (1, 2, 5) if low <= math.log10(10**k * m) <= high]
    else:
        ticks = [t for t in nice_ticks(low, high) if low <= t <= high]
    for tick in ticks:
        y = xy(0, tick)[1]
        draw.line([(left, y), (right, y)], fill=LIGHT)
        draw.text((left - 8, y), f"{tick:g}", fill=BLACK, font=font, anchor="rm")
    for tick in nice_ticks(0, max_step, 6):
        x = xy(tick, 10**low if panel.log_scale else low)[0]
        draw.line([(x, plot_top), (x, bottom)], fill=LIGHT)
        if show_steps:
            draw.text((x, bottom + 6), f"{tick:g}", fill=BLACK, font=font, anchor="mt")
    draw.rectangle([left, plot_top, right, bottom], outline=BLACK)
    if panel.level is not None:
        value, text = panel.level
        y = xy(0, value)[1]
        for x in range(left, right, 12):
            draw.line([(x, y), (min(x + 6, right), y)], fill=RED, width=2)
        draw.text((left + 4, y - 4), text, fill=RED, font=font, anchor="lb")
    for steps, ys, colour, width in panel.lines:
        points = [xy(s, v) for s, v in zip(steps, ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=width, joint="curve")
        if width > 1 and len(points) <= 50:  # markers on the few measured points, not on a per-step line
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for step, value, text in panel.labels:
        x, y = xy(step, value)
        draw.text((min(x, right - 4), y - 8), text, fill=BLACK, font=font, anchor="rb" if x > right - 60 else "mb")


def save_curves(panels: Sequence[Panel], max_step: float, path: str | Path) -> Path:
    """Draw ``panels`` one above the other over steps 0 .. ``max_step`` into a PNG at ``path`` (written atomically)."""
    font = ImageFont.load_default(size=13)
    picture = Image.new("RGB", (WIDTH, PANEL_HEIGHT * len(panels) + 20), "white")
    draw = ImageDraw.Draw(picture)
    for index, panel in enumerate(panels):
        _draw_panel(draw, panel, index * PANEL_HEIGHT, max_step, font, show_steps=index == len(panels) - 1)
    draw.text((WIDTH // 2, picture.height - 6), "training step", fill=BLACK, font=font, anchor="mb")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda file: picture.save(file, format="PNG"), ".png")
    return path
