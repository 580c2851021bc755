"""SVG drawn on the server: ECG on paper (25 mm/s, 10 mm/mV) and the operator's plots.

No chart library, no script: the browser draws what the node wrote, and a
screenshot or a print shows the same.  Units are millimetres in the ECG
(``viewBox`` in mm, so 1 mm of paper is 1 unit), pixels in the plots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np

MM_PER_S = 25.0  # paper speed
MM_PER_MV = 10.0  # gain


def _grid(width_mm: float, height_mm: float) -> list[str]:
    out = []
    for x in range(int(width_mm) + 1):
        major = x % 5 == 0
        cls = "M" if major else "m"
        out.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height_mm:.1f}" class="{cls}"/>')
    for y in range(int(height_mm) + 1):
        major = y % 5 == 0
        cls = "M" if major else "m"
        out.append(f'<line x1="0" y1="{y}" x2="{width_mm:.1f}" y2="{y}" class="{cls}"/>')
    return out


_STYLE = ("<style>.m{stroke:#f6c9c9;stroke-width:0.1}.M{stroke:#e89a9a;stroke-width:0.25}"
          ".w{fill:none;stroke:#111;stroke-width:0.3;stroke-linejoin:round}"
          ".l{font:3px sans-serif;fill:#333}</style>")


def ecg_svg(leads: Sequence[str], mv: np.ndarray, fs_hz: float, *, seconds: float = 10.0,
            row_mm: float = 25.0, title: str = "") -> str:
    """Leads (columns of ``mv``, millivolts) one row each on ECG paper.

    >>> s = ecg_svg(["II"], np.zeros((2500, 1)), 250.0)
    >>> 'viewBox="0 0 250.0 25.0"' in s and 'data-mm-per-s="25.0"' in s
    True
    """
    mv = np.asarray(mv, dtype=np.float64)
    n = min(mv.shape[0], int(round(seconds * fs_hz)))
    width = n / fs_hz * MM_PER_S
    height = row_mm * len(leads)
    step = max(1, int(fs_hz // 250))  # at most 250 points per second: 0.1 mm apart
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="ecg" viewBox="0 0 {width:.1f} '
             f'{height:.1f}" width="{width:.1f}mm" height="{height:.1f}mm" '
             f'data-mm-per-s="{MM_PER_S}" data-mm-per-mv="{MM_PER_MV}" role="img" '
             f'aria-label="{escape(title or "ECG")}">', _STYLE, *_grid(width, height)]
    for row, name in enumerate(leads):
        base = row_mm * row + row_mm / 2
        y: np.ndarray = np.nan_to_num(np.asarray(mv[:n:step, row], dtype=np.float64))
        if y.size:
            y = y - float(np.median(y))
        xs = np.arange(0, n, step) / fs_hz * MM_PER_S
        ys = np.asarray(base - y * MM_PER_MV, dtype=np.float64)
        lo, hi = row_mm * row, row_mm * (row + 1)  # a big deflection stays in its row
        ys = ys.clip(min=float(lo), max=float(hi))
        pts = " ".join(f"{a:.2f},{b:.2f}" for a, b in zip(xs, ys, strict=True))
        parts.append(f'<polyline class="w" points="{pts}"/>')
        parts.append(f'<text class="l" x="1" y="{row_mm * row + 4:.1f}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if v <= m * e:
            return float(m * e)
    return float(10 * e)


_PALETTE = ("#c0392b", "#e67e22", "#2980b9", "#27ae60", "#8e44ad", "#7f8c8d")


def scatter_svg(series: dict[str, list[tuple[float, float]]], *, title: str, y_label: str,
                width: int = 640, height: int = 260) -> str:
    """Points (time, value) per named series, a line through each, time on x."""
    pad_l, pad_b, pad_t, pad_r = 50, 30, 24, 110
    pts = [p for s in series.values() for p in s]
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}"><text x="{pad_l}" y="16" font-size="13">'
            f'{escape(title)}</text>')
    if not pts:
        return head + f'<text x="{pad_l}" y="{height / 2}" font-size="12">–</text></svg>'
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    t1 = t1 if t1 > t0 else t0 + 3600
    ymax = _nice_max(max(p[1] for p in pts))
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def X(t: float) -> float:
        return pad_l + (t - t0) / (t1 - t0) * w

    def Y(v: float) -> float:
        return pad_t + h - v / ymax * h

    out = [head, f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" '
                 f'stroke="#333"/><line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" '
                 f'y2="{pad_t + h}" stroke="#333"/>']
    for k in range(5):
        v = ymax * k / 4
        out.append(f'<text x="{pad_l - 4}" y="{Y(v) + 4:.1f}" font-size="10" '
                   f'text-anchor="end">{v:g}</text><line x1="{pad_l}" y1="{Y(v):.1f}" '
                   f'x2="{pad_l + w}" y2="{Y(v):.1f}" stroke="#eee"/>')
    for t in (t0, t1):
        out.append(f'<text x="{X(t):.1f}" y="{pad_t + h + 16}" font-size="10" '
                   f'text-anchor="middle">{time.strftime("%m-%d %H:%M", time.localtime(t))}'
                   f'</text>')
    out.append(f'<text x="12" y="{pad_t + h / 2}" font-size="10" transform="rotate(-90 12 '
               f'{pad_t + h / 2})" text-anchor="middle">{escape(y_label)}</text>')
    for i, (name, s) in enumerate(series.items()):
        col = _PALETTE[i % len(_PALETTE)]
        s = sorted(s)
        if len(s) > 1:
            out.append(f'<polyline fill="none" stroke="{col}" points="'
                       + " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b in s) + '"/>')
        out += [f'<circle class="pt" cx="{X(a):.1f}" cy="{Y(b):.1f}" r="3" fill="{col}"/>'
                for a, b in s]
        out.append(f'<rect x="{pad_l + w + 12}" y="{pad_t + i * 16}" width="10" height="10" '
                   f'fill="{col}"/><text x="{pad_l + w + 26}" y="{pad_t + i * 16 + 9}" '
                   f'font-size="11">{escape(name)} (n={len(s)})</text>')
    out.append("</svg>")
    return "".join(out)


def bars_svg(groups: dict[str, dict[str, int]], *, title: str, width: int = 640,
             height: int = 260) -> str:
    """Grouped bars: ``groups[month][hospital] = count``."""
    pad_l, pad_b, pad_t, pad_r = 50, 30, 24, 150
    months = sorted(groups)
    hospitals = sorted({h for g in groups.values() for h in g})
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}"><text x="{pad_l}" y="16" font-size="13">'
            f'{escape(title)}</text>')
    if not months:
        return head + f'<text x="{pad_l}" y="{height / 2}" font-size="12">–</text></svg>'
    ymax = _nice_max(max(v for g in groups.values() for v in g.values()))
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    gw = w / len(months)
    bw = max(2.0, (gw - 8) / max(1, len(hospitals)))
    out = [head, f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" '
                 f'stroke="#333"/>']
    for k in range(5):
        v = ymax * k / 4
        y = pad_t + h - v / ymax * h
        out.append(f'<text x="{pad_l - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
                   f'{v:g}</text><line x1="{pad_l}" y1="{y:.1f}" x2="{pad_l + w}" '
                   f'y2="{y:.1f}" stroke="#eee"/>')
    for mi, m in enumerate(months):
        x0 = pad_l + mi * gw + 4
        for hi, hosp in enumerate(hospitals):
            v = groups[m].get(hosp, 0)
            bh = v / ymax * h
            out.append(f'<rect class="bar" x="{x0 + hi * bw:.1f}" y="{pad_t + h - bh:.1f}" '
                       f'width="{bw - 1:.1f}" height="{bh:.1f}" '
                       f'fill="{_PALETTE[hi % len(_PALETTE)]}"><title>{escape(hosp)} {m}: {v}'
                       f'</title></rect>')
        out.append(f'<text x="{x0 + gw / 2 - 4:.1f}" y="{pad_t + h + 16}" font-size="10" '
                   f'text-anchor="middle">{escape(m)}</text>')
    for hi, hosp in enumerate(hospitals):
        out.append(f'<rect x="{pad_l + w + 12}" y="{pad_t + hi * 16}" width="10" height="10" '
                   f'fill="{_PALETTE[hi % len(_PALETTE)]}"/><text x="{pad_l + w + 26}" '
                   f'y="{pad_t + hi * 16 + 9}" font-size="11">{escape(hosp)}</text>')
    out.append("</svg>")
    return "".join(out)
