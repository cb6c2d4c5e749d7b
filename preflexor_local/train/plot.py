"""A PNG of the training curves (loss, and reward margin where logged), without matplotlib.

Each series is scaled to its own range (min..max printed nowhere: the values are
in metrics.jsonl); the picture is for a glance at the trend. Uses matplotlib
when it is installed, else a small built-in rasteriser (stdlib zlib only).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_file
from ..png import encode_png

SERIES = (("loss", (31, 119, 180)), ("rewards/margins", (214, 39, 40)), ("rewards/accuracies", (44, 160, 44)))


def _read(path: Path) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {k: [] for k, _ in SERIES}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("type") != "step":
            continue
        for key, _ in SERIES:
            if isinstance(row.get(key), (int, float)):
                out[key].append((float(row["step"]), float(row[key])))
    return out


def plot_metrics(metrics: str | Path, png: str | Path, width: int = 640, height: int = 360) -> Path:
    data = _read(Path(metrics))
    png = Path(png)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for (key, colour), ax in zip(SERIES[:2], axes):
            pts = data[key]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=[c / 255 for c in colour])
            ax.set_title(key)
            ax.set_xlabel("step")
        fig.tight_layout()
        with atomic_file(png) as tmp:  # keeps the .png suffix, from which matplotlib takes the format
            fig.savefig(tmp)
        plt.close(fig)
        return png
    except ImportError:
        pass
    pix = bytearray([255]) * (width * height * 3)
    m = 20

    def put(x: int, y: int, c) -> None:
        if 0 <= x < width and 0 <= y < height:
            i = (y * width + x) * 3
            pix[i : i + 3] = bytes(c)

    for x in range(m, width - m):
        put(x, height - m, (0, 0, 0))
    for y in range(m, height - m + 1):
        put(m, y, (0, 0, 0))
    steps = [p[0] for pts in data.values() for p in pts]
    if steps:
        s0, s1 = min(steps), max(steps)
        for key, colour in SERIES:
            pts = data[key]
            if not pts:
                continue
            v0, v1 = min(p[1] for p in pts), max(p[1] for p in pts)
            xy = [
                (m + int((s - s0) / ((s1 - s0) or 1) * (width - 2 * m - 1)), height - m - int((v - v0) / ((v1 - v0) or 1) * (height - 2 * m - 1)))
                for s, v in pts
            ]
            for (x0, y0), (x1, y1) in zip(xy, xy[1:] or xy):
                n = max(abs(x1 - x0), abs(y1 - y0), 1)
                for t in range(n + 1):
                    x, y = x0 + (x1 - x0) * t // n, y0 + (y1 - y0) * t // n
                    for dx in (0, 1):
                        for dy in (0, 1):
                            put(x + dx, y + dy, colour)
    with atomic_file(png) as tmp:
        tmp.write_bytes(encode_png(width, height, pix))
    return png
