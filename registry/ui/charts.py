"""Charts drawn server-side as inline SVG: axes, grid, ticks, points with hover titles.

The UI has no JavaScript chart dependency: a chart is a string of SVG markup built here and
placed in the page as is. Every piece of text that reaches the markup (titles, labels, series
names, hover texts) is escaped here, because the result is marked safe for the templates.

Colours are SVG presentation attributes (``stroke``, ``fill``), not ``style`` attributes, so
the page's Content-Security-Policy (no inline styles) does not strip them; CSS classes on
every element let the stylesheet refine them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

PALETTE = ("#4f46e5", "#0891b2", "#d97706", "#db2777", "#059669", "#7c3aed", "#64748b")
KIND_FILL = {"pass": "#16a34a", "fail": "#dc2626", "inconclusive": "#94a3b8",
             "yanked": "#ffffff"}
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 28, 40


@dataclass(frozen=True)
class Point:
    """One point; ``title`` is its hover text, ``kind`` an extra class (pass, fail, ...)."""

    x: float
    y: float
    title: str
    kind: str = ""


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]
    dashed: bool = False
    markers: bool = True


def _general(value: float) -> str:
    return f"{value:.4g}"


@dataclass(frozen=True)
class Axis:
    label: str = ""
    format: Callable[[float], str] = _general
    integer: bool = False
    span: float = 0.0  # the range shown when every value is equal (0: 5% of the value, or 1)


@dataclass
class _Frame:
    """Maps data coordinates to pixels inside the plot area."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    width: int
    height: int
    left: int = MARGIN_LEFT
    top: int = MARGIN_TOP
    right: int = field(init=False)
    bottom: int = field(init=False)

    def __post_init__(self) -> None:
        self.right = self.width - MARGIN_RIGHT
        self.bottom = self.height - MARGIN_BOTTOM

    def px(self, x: float) -> float:
        return self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y_lo) / (self.y_hi - self.y_lo) * (self.bottom - self.top)


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering ``[lo, hi]``, about ``count`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    intervals = max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10((hi - lo) / intervals))
    # The 1-2-5 step whose number of intervals is closest to the one asked for.
    step = min((m * magnitude for m in (1, 2, 5, 10)),
               key=lambda st: abs((hi - lo) / st - intervals))
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _padded(lo: float, hi: float, axis: Axis) -> tuple[float, float]:
    if hi > lo:
        pad = 0.5 if axis.integer else (hi - lo) * 0.08
        return lo - pad, hi + pad
    if axis.integer:
        return lo - 0.5, hi + 0.5
    spread = axis.span / 2 or abs(lo) * 0.05 or 1.0
    return lo - spread, hi + spread


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _f(value: float) -> str:
    return f"{value:.1f}"


def line_chart(
    series: Sequence[Series], *, title: str, x_axis: Axis | None = None,
    y_axis: Axis | None = None, width: int = 640, height: int = 240,
    empty: str = "no data yet", chart_id: str = "",
) -> Markup:
    """An SVG line chart of ``series``; points that are not finite numbers are left out."""
    x_axis, y_axis = x_axis or Axis(), y_axis or Axis()
    clean = [Series(s.name, [p for p in s.points if math.isfinite(p.x) and math.isfinite(p.y)],
                    s.dashed, s.markers) for s in series]
    points = [p for s in clean for p in s.points]
    shown_title = _clip(title, 60 if len(series) < 2 else 40)  # leave room for a legend
    head = (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} '
            f'{height}" width="{width}" height="{height}" role="img" '
            f'data-chart="{escape(chart_id)}" data-points="{len(points)}">'
            f"<title>{escape(title)}</title>"
            f'<text class="chart-title" x="{MARGIN_LEFT}" y="16" font-size="13" '
            f'font-weight="600" fill="#0f172a">{escape(shown_title)}</text>')
    if not points:
        body = (f'<text class="chart-empty" x="{width / 2:.0f}" y="{height / 2:.0f}" '
                f'text-anchor="middle" font-size="12" fill="#64748b">{escape(empty)}</text>')
        return Markup(head + body + "</svg>")  # noqa: S704 - every text above is escaped
    x_lo, x_hi = _padded(min(p.x for p in points), max(p.x for p in points), x_axis)
    y_lo, y_hi = _padded(min(p.y for p in points), max(p.y for p in points), y_axis)
    frame = _Frame(x_lo, x_hi, y_lo, y_hi, width, height)
    parts = [head, *_axes(frame, x_axis, y_axis)]
    for index, s in enumerate(clean):
        parts.extend(_series(frame, s, index))
    if len(clean) > 1:
        parts.extend(_legend(frame, clean))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in the parts is escaped


def _axes(frame: _Frame, x_axis: Axis, y_axis: Axis) -> list[str]:
    out = ['<g class="axes" font-size="11" fill="#475569">']
    for y in nice_ticks(frame.y_lo, frame.y_hi):
        py = _f(frame.py(y))
        out.append(f'<line class="grid" x1="{frame.left}" x2="{frame.right}" y1="{py}" '
                   f'y2="{py}" stroke="#e2e8f0" stroke-width="1"/>'
                   f'<text x="{frame.left - 6}" y="{py}" text-anchor="end" '
                   f'dominant-baseline="middle">{escape(y_axis.format(y))}</text>')
    for x in nice_ticks(frame.x_lo, frame.x_hi, 6, integer=x_axis.integer):
        px = _f(frame.px(x))
        out.append(f'<line class="tick" x1="{px}" x2="{px}" y1="{frame.bottom}" '
                   f'y2="{frame.bottom + 4}" stroke="#94a3b8"/>'
                   f'<text x="{px}" y="{frame.bottom + 16}" text-anchor="middle">'
                   f"{escape(x_axis.format(x))}</text>")
    out.append(f'<line class="axis" x1="{frame.left}" x2="{frame.right}" y1="{frame.bottom}" '
               f'y2="{frame.bottom}" stroke="#94a3b8"/>'
               f'<line class="axis" x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" '
               f'y2="{frame.bottom}" stroke="#94a3b8"/>')
    if x_axis.label:
        out.append(f'<text class="axis-label" x="{(frame.left + frame.right) / 2:.0f}" '
                   f'y="{frame.height - 6}" text-anchor="middle">{escape(x_axis.label)}</text>')
    if y_axis.label:
        mid = (frame.top + frame.bottom) / 2
        out.append(f'<text class="axis-label" x="12" y="{mid:.0f}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {mid:.0f})">{escape(_clip(y_axis.label, 24))}'
                   "</text>")
    out.append("</g>")
    return out


def _series(frame: _Frame, s: Series, index: int) -> list[str]:
    color = PALETTE[index % len(PALETTE)]
    ordered = sorted(s.points, key=lambda p: p.x)
    coords = " ".join(f"{_f(frame.px(p.x))},{_f(frame.py(p.y))}" for p in ordered)
    if len(ordered) == 1 and not s.markers:  # one reference value: a level line across
        level = _f(frame.py(ordered[0].y))
        coords = f"{frame.left},{level} {frame.right},{level}"
    dash = ' stroke-dasharray="5 4"' if s.dashed else ""
    out = [f'<g class="series s{index}" data-series="{escape(s.name)}">',
           f'<polyline class="line" points="{coords}" fill="none" stroke="{color}" '
           f'stroke-width="1.5"{dash}/>']
    if s.markers:
        radius = 3.5 if len(ordered) <= 60 else 2.5
        for p in ordered:
            fill = KIND_FILL.get(p.kind, color)
            out.append(f'<circle class="pt {escape(p.kind)}" cx="{_f(frame.px(p.x))}" '
                       f'cy="{_f(frame.py(p.y))}" r="{radius}" fill="{fill}" '
                       f'stroke="{color}" stroke-width="1"><title>{escape(p.title)}</title>'
                       "</circle>")
    out.append("</g>")
    return out


def _legend(frame: _Frame, series: Sequence[Series]) -> list[str]:
    out = ['<g class="legend" font-size="11" fill="#334155">']
    x = float(frame.right)
    for index in reversed(range(len(series))):
        name = _clip(series[index].name, 24)
        x -= 18 + 6.2 * len(name)
        color = PALETTE[index % len(PALETTE)]
        dash = ' stroke-dasharray="4 3"' if series[index].dashed else ""
        out.append(f'<line x1="{x:.0f}" x2="{x + 12:.0f}" y1="12" y2="12" stroke="{color}" '
                   f'stroke-width="2"{dash}/><text x="{x + 15:.0f}" y="15">{escape(name)}</text>')
    out.append("</g>")
    return out
