"""HTML pieces of the run report: number formatting, tables, inline SVG line charts, embedded PNGs.

Everything is self-contained: CSS inline in the page, curves as inline SVG, images as
base64 ``data:`` URIs. No network, no external JavaScript or CSS.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Sequence

__all__ = ["esc", "fmt", "table", "line_chart", "img_data_uri", "page"]

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin-top:1.2em} .muted{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#eef7ee} td.top{font-weight:bold;background:#e3f2e3}
tr.baseline td{font-style:italic;background:#f6f6f6} .charts{display:flex;flex-wrap:wrap;gap:12px}
.fig{margin:8px 0} .fig img{max-width:100%;border:1px solid #ddd} .warn{color:#b00020;font-weight:bold}
details{margin:.5em 0} code{background:#f5f5f5;padding:0 3px}
"""

# Marks every <img> that decoded (naturalWidth > 0); a failed one gets a visible warning.
IMAGE_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images), ok = 0;
  imgs.forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { ok += 1; img.setAttribute('data-loaded', 'yes'); }
    else { var w = document.createElement('span'); w.className = 'warn'; w.textContent = 'image failed to load';
           img.parentNode.insertBefore(w, img); }
  });
  document.body.setAttribute('data-images-ok', ok + '/' + imgs.length);
});
"""


def esc(value: Any) -> str:
    """HTML-escaped ``str(value)``."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Readable number: ints with thousands separators, floats with ``digits`` significant digits
    (no decimals from 10**digits up, scientific below 1e-3 and from 1e5 up); '–' for None and NaN."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–" if math.isnan(value) else str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:,.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return esc(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], best_row: int | None = None,
          raw_columns: Sequence[int] = ()) -> str:
    """An HTML table; numbers are formatted with :func:`fmt` and right-aligned; ``raw_columns`` hold ready HTML."""
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        out.append('<tr class="best">' if i == best_row else "<tr>")
        for j, cell in enumerate(row):
            if j in raw_columns:
                out.append(f"<td>{cell}</td>")
            elif isinstance(cell, (int, float)) and not isinstance(cell, bool):
                out.append(f'<td class="num">{fmt(cell)}</td>')
            else:
                out.append(f"<td>{esc('–' if cell is None else cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _finite(points):
    return [(x, y) for x, y in points
            if isinstance(y, (int, float)) and not isinstance(y, bool) and math.isfinite(y)]


def _ticks(lo: float, hi: float) -> list[float]:
    return [lo + (hi - lo) * i / 4 for i in range(5)]


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str, xlabel: str = "epoch",
               width: int = 380, height: int = 240, mark: tuple[float, float] | None = None) -> str:
    """Inline ``<svg>`` line chart: one polyline (with dots) per named series of (x, y) points.

    Non-finite y values are left out. ``mark`` = (x, y) draws a ring, e.g. at the best epoch.
    Returns an empty string when no series has a finite point.
    """
    clean = {name: _finite(pts) for name, pts in series.items()}
    clean = {name: pts for name, pts in clean.items() if pts}
    if not clean:
        return ""
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 58, 12, 26, 38
    legend_h = 14 * len(clean)
    h = height + legend_h
    pw, ph = width - left - right, height - top - bottom

    def px(x):
        return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
           f'role="img" aria-label="{esc(title)}" font-family="sans-serif" font-size="11">',
           f'<rect x="0" y="0" width="{width}" height="{h}" fill="white"/>',
           f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in _ticks(y0, y1):
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{fmt(t, 3)}</text>')
    integer_x = all(float(x).is_integer() for x in xs)
    xticks = sorted({round(t) for t in _ticks(x0, x1)} & set(range(int(min(xs)), int(max(xs)) + 1))) \
        if integer_x else _ticks(x0, x1)
    for t in xticks:
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{fmt(t, 3)}</text>')
    out.append(f'<text x="{left + pw / 2:.0f}" y="{top + ph + 30}" text-anchor="middle">{esc(xlabel)}</text>')
    for i, (name, pts) in enumerate(clean.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{coords}"/>')
        if len(pts) <= 60:
            out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{colour}"/>' for x, y in pts)
        ly = height + 14 * i + 2
        out.append(f'<rect x="{left}" y="{ly}" width="12" height="3" fill="{colour}"/>'
                   f'<text x="{left + 18}" y="{ly + 5}">{esc(name)}</text>')
    if mark is not None and all(isinstance(v, (int, float)) and math.isfinite(v) for v in mark):
        out.append(f'<circle cx="{px(mark[0]):.1f}" cy="{py(mark[1]):.1f}" r="6" fill="none" stroke="#000" '
                   f'stroke-width="1.5"><title>best: {fmt(mark[1])} at {fmt(mark[0])}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def img_data_uri(path: str | Path) -> str:
    """``data:image/png;base64,...`` of a PNG (or JPEG/SVG by suffix) file."""
    path = Path(path)
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
    mime = kind.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def page(title: str, body: str) -> str:
    """A complete HTML document with the inline CSS and the image check script."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body>\n{body}\n<script>{IMAGE_CHECK}</script></body></html>\n")
