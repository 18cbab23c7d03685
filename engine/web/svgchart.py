"""A small line chart drawn as inline SVG on the server: no script, no CDN, every label escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape


@dataclass(frozen=True)
class Series:
    """One line of the chart: a label, a colour, and one value per x label."""

    label: str
    colour: str
    values: Sequence[int]


def _nice_step(value: float) -> int:
    """The smallest of 1, 2, 5 × 10^n at or above ``value``."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


GRID_LINES = 4


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    width: int = 880,
    height: int = 240,
) -> str:
    """An SVG line chart of ``series`` over ``labels`` (the x axis), with grid, axes and legend."""
    left, right, top, bottom = 44, 16, 40, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(labels), 1)
    # Round grid steps (1, 2, 5, 10, 20…) so every grid line has a whole value.
    step = _nice_step(max(1, math.ceil(max((v for s in series for v in s.values), default=0) / GRID_LINES)))
    y_max = step * GRID_LINES

    def x(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / y_max

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
    ]
    for k in range(GRID_LINES + 1):  # horizontal grid lines and their values
        value = step * k
        yy = y(value)
        parts.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{width - right}" y2="{yy:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" class="axis">{value:g}</text>')
    every = max(1, n // 7)  # at most about seven dates under the axis
    for i, label in enumerate(labels):
        # The last date always shows, unless it would overlap the one printed before it.
        if i % every == 0 or (i == n - 1 and i % every > every // 2):
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - bottom + 18}" text-anchor="middle" class="axis">'
                f"{escape(label)}</text>"
            )
    for s in series:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s.values))
        colour = escape(s.colour)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2.5" '
                     'stroke-linejoin="round" stroke-linecap="round"/>')
        for i, v in enumerate(s.values):
            tip = f"{s.label}, {labels[i] if i < len(labels) else ''}: {v}"
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{colour}">'
                         f"<title>{escape(tip)}</title></circle>")
    lx: float = left
    for s in series:  # the legend, on one line above the plot
        parts.append(f'<rect x="{lx}" y="10" width="12" height="12" rx="2" fill="{escape(s.colour)}"/>')
        parts.append(f'<text x="{lx + 18}" y="21" class="legend">{escape(s.label)}</text>')
        lx += 32 + 6.5 * len(s.label)
    parts.append("</svg>")
    return "".join(parts)
