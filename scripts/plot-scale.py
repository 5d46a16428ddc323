#!/usr/bin/env python3
"""Draws the scale scenario's curves (bytes per peer and cores against the
number of peers) as an SVG, from the JSON lines of one or more runs:

    cargo run --release -p heartbeater-bench -- --scenario scale --json > after.json
    scripts/plot-scale.py docs/scale.svg after=after.json [before=before.json]

Standard library only: no plotting package is needed.
"""

import json
import math
import sys

WIDTH, HEIGHT = 760, 300
PANEL_W, PANEL_H = 300, 200
COLOURS = ["#1f6feb", "#d1242f", "#2da44e", "#8250df"]


def load(path):
    """{metric: {size: value}} of one run's scale rows."""
    series = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if row.get("scenario") != "scale":
                continue
            name, _, size = row["metric"].rpartition("_")
            if size.isdigit():
                series.setdefault(name, {})[int(size)] = row["value"]
    return series


def panel(x0, title, unit, runs, metric):
    out = [f'<g transform="translate({x0},40)">']
    points = [(n, v) for _, s in runs for n, v in s.get(metric, {}).items()]
    if not points:
        return ""
    sizes = sorted({n for n, _ in points})
    top = max(v for _, v in points) * 1.1 or 1.0
    lo, hi = math.log10(min(sizes)), math.log10(max(sizes))
    span = (hi - lo) or 1.0

    def xy(n, v):
        return (
            (math.log10(n) - lo) / span * PANEL_W,
            PANEL_H - v / top * PANEL_H,
        )

    out.append(f'<text x="0" y="-16" font-weight="bold">{title}</text>')
    out.append(
        f'<line x1="0" y1="{PANEL_H}" x2="{PANEL_W}" y2="{PANEL_H}" stroke="#888"/>'
        f'<line x1="0" y1="0" x2="0" y2="{PANEL_H}" stroke="#888"/>'
    )
    for n in sizes:
        x, _ = xy(n, 0)
        label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        out.append(
            f'<text x="{x:.0f}" y="{PANEL_H + 16}" text-anchor="middle">{label}</text>'
        )
    for frac in (0.5, 1.0):
        v = top * frac
        _, y = xy(sizes[0], v)
        out.append(
            f'<text x="-6" y="{y + 4:.0f}" text-anchor="end">{v:.3g}</text>'
            f'<line x1="0" y1="{y:.0f}" x2="{PANEL_W}" y2="{y:.0f}" stroke="#eee"/>'
        )
    out.append(
        f'<text x="{PANEL_W / 2}" y="{PANEL_H + 34}" text-anchor="middle">'
        f"peers on one node ({unit})</text>"
    )
    for i, (label, s) in enumerate(runs):
        data = sorted(s.get(metric, {}).items())
        if not data:
            continue
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(
            f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}"
            for j, (x, y) in enumerate(xy(n, v) for n, v in data)
        )
        out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for n, v in data:
            x, y = xy(n, v)
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        out.append(
            f'<text x="{PANEL_W - 4}" y="{14 + 16 * i}" text-anchor="end" '
            f'fill="{colour}">{label}</text>'
        )
    out.append("</g>")
    return "\n".join(out)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    runs = []
    for arg in sys.argv[2:]:
        label, _, path = arg.partition("=")
        runs.append((label, load(path or label)))
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        panel(60, "Bytes per peer (RSS growth)", "log scale", runs, "bytes_per_peer"),
        panel(440, "Cores at 20,000 heartbeats/s", "log scale", runs, "cores"),
        "</svg>",
    ]
    with open(sys.argv[1], "w") as f:
        f.write("\n".join(body) + "\n")


if __name__ == "__main__":
    main()
