"""A line chart as a PNG with PIL only (no plotting library in the dependency set)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def line_chart(series: dict[str, list[tuple[float, float]]], path: str | Path, title: str,
               x_label: str = "step", size: tuple[int, int] = (720, 360)) -> Path:
    """Draw each named series of (x, y) points on shared axes; writes and returns `path`."""
    width, height = size
    left, right, top, bottom = 64, 16, 32, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    points = [p for values in series.values() for p in values]
    draw.text((left, 8), title, fill="black", font=font)
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

        def at(x: float, y: float) -> tuple[float, float]:
            return (left + (x - x0) / (x1 - x0) * (width - left - right),
                    height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

        draw.rectangle([left, top, width - right, height - bottom], outline="#888888")
        for frac in (0.0, 0.5, 1.0):
            y = y0 + frac * (y1 - y0)
            draw.text((4, at(x0, y)[1] - 6), f"{y:.3g}", fill="black", font=font)
            x = x0 + frac * (x1 - x0)
            draw.text((at(x, y0)[0] - 8, height - bottom + 6), f"{x:.0f}", fill="black", font=font)
        draw.text((width // 2 - 12, height - 16), x_label, fill="black", font=font)
        for n, (name, values) in enumerate(series.items()):
            colour = COLOURS[n % len(COLOURS)]
            if len(values) > 1:
                draw.line([at(x, y) for x, y in values], fill=colour, width=2)
            elif values:
                cx, cy = at(*values[0])
                draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
            draw.text((width - right - 150, top + 6 + 14 * n), name, fill=colour, font=font)
    path = Path(path)
    img.save(path)
    return path
