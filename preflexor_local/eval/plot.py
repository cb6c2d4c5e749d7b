"""The report's picture: accuracy against generated tokens per item, one point per condition, 95 % bars.

Uses matplotlib when it is installed, else a small built-in rasteriser (a
3×5 pixel font, stdlib zlib for the PNG), so the report always has its plot.
"""

from __future__ import annotations

import io
import math

from ..png import encode_png

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75), (227, 119, 194)]


def _points(report: dict) -> list[tuple[str, float, float, list[float] | None]]:
    out = []
    for cond in report["conditions"]:
        c = report["summary"]["conditions"].get(cond)
        if c and c["accuracy"] is not None and c["mean_tokens"] is not None:
            out.append((cond, c["mean_tokens"], c["accuracy"], c["accuracy_ci95"]))
    return out


def plot_report(report: dict) -> bytes:
    points = _points(report)
    title = f"accuracy (keyed items) vs generated tokens per item, {report['question_set']['source']}"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _raster(points, title)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, x, y, ci) in enumerate(points):
        colour = [c / 255 for c in COLOURS[i % len(COLOURS)]]
        err = [[y - ci[0]], [ci[1] - y]] if ci else None
        ax.errorbar([x], [y], yerr=err, fmt="o", color=colour, capsize=4)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), color=colour)
    ax.set_xlabel("mean generated tokens per item")
    ax.set_ylabel("accuracy (keyed items)")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# -- built-in rasteriser ------------------------------------------------------------

# 3×5 glyphs, rows top to bottom, "#" = ink. Upper case only; text is upper-cased.
_GLYPHS = {
    "A": ".#.#.#####.##.#",
    "B": "##.#.###.#.###.",
    "C": ".###..#..#...##",
    "D": "##.#.##.##.###.",
    "E": "####..##.#..###",
    "F": "####..##.#..#..",
    "G": ".###..#.##.#.##",
    "H": "#.##.#####.##.#",
    "I": "###.#..#..#.###",
    "J": "..#..#..##.#.#.",
    "K": "#.##.###.#.##.#",
    "L": "#..#..#..#..###",
    "M": "#.#####.##.##.#",
    "N": "##.#.##.##.##.#",
    "O": ".#.#.##.##.#.#.",
    "P": "##.#.###.#..#..",
    "Q": ".#.#.##.###..##",
    "R": "##.#.###.#.##.#",
    "S": ".###...#...###.",
    "T": "###.#..#..#..#.",
    "U": "#.##.##.##.####",
    "V": "#.##.##.##.#.#.",
    "W": "#.##.########.#",
    "X": "#.##.#.#.#.##.#",
    "Y": "#.##.#.#..#..#.",
    "Z": "###..#.#.#..###",
    "0": "####.##.##.####",
    "1": ".#.##..#..#.###",
    "2": "##...#.#.#..###",
    "3": "##...#.#...###.",
    "4": "#.##.####..#..#",
    "5": "####..##...###.",
    "6": ".###..####.####",
    "7": "###..#.#..#..#.",
    "8": "####.#####.####",
    "9": "####.####..###.",
    "-": "......###......",
    ".": ".............#.",
    ",": "..........#.#..",
    "%": "#.#..#.#.#..#.#",
    "(": ".#.#..#..#...#.",
    ")": ".#...#..#..#.#.",
    ":": "....#.....#....",
    "/": "..#..#.#.#..#..",
    "+": "....#.###.#....",
    "=": "...###...###...",
    "_": "............###",
    ">": "#...#...#.#.#..",
    " ": "...............",
}
SCALE = 2


class _Canvas:
    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.pix = bytearray([255]) * (width * height * 3)

    def put(self, x: int, y: int, c) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.pix[i : i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c, width: int = 1) -> None:
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for t in range(n + 1):
            x, y = x0 + (x1 - x0) * t // n, y0 + (y1 - y0) * t // n
            for d in range(width):
                self.put(x + d, y, c) if abs(y1 - y0) > abs(x1 - x0) else self.put(x, y + d, c)

    def disc(self, cx: int, cy: int, r: int, c) -> None:
        for y in range(-r, r + 1):
            for x in range(-r, r + 1):
                if x * x + y * y <= r * r:
                    self.put(cx + x, cy + y, c)

    def text(self, x: int, y: int, s: str, c=(0, 0, 0)) -> None:
        for ch in s.upper():
            glyph = _GLYPHS.get(ch, _GLYPHS[" "])
            for i, bit in enumerate(glyph):
                if bit == "#":
                    for dy in range(SCALE):
                        for dx in range(SCALE):
                            self.put(x + (i % 3) * SCALE + dx, y + (i // 3) * SCALE + dy, c)
            x += 4 * SCALE

    @staticmethod
    def text_width(s: str) -> int:
        return len(s) * 4 * SCALE


def _nice_step(span: float) -> float:
    raw = span / 5 or 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _raster(points, title: str, width: int = 720, height: int = 460) -> bytes:
    cv = _Canvas(width, height)
    left, right, top, bottom = 70, 30, 40, 60
    x0, x1, y0, y1 = left, width - right, height - bottom, top
    grey, black = (200, 200, 200), (0, 0, 0)
    cv.text(8, 12, title[: (width - 16) // (4 * SCALE)])
    xmax = max((p[1] for p in points), default=1.0) * 1.15 or 1.0
    step = _nice_step(xmax)
    xmax = math.ceil(xmax / step) * step

    def px(v: float) -> int:
        return x0 + int(v / xmax * (x1 - x0))

    def py(v: float) -> int:
        return y0 - int(v * (y0 - y1))

    for i in range(5):  # accuracy grid: 0, 25, 50, 75, 100 %
        v = i / 4
        cv.line(x0, py(v), x1, py(v), grey)
        label = f"{int(v * 100)}%"
        cv.text(x0 - 8 - cv.text_width(label), py(v) - 5, label)
    v = 0.0
    while v <= xmax + 1e-9:
        cv.line(px(v), y0, px(v), y0 + 5, black)
        label = f"{v:g}"
        cv.text(px(v) - cv.text_width(label) // 2, y0 + 10, label)
        v += step
    cv.line(x0, y0, x1, y0, black)
    cv.line(x0, y0, x0, y1, black)
    cv.text((x0 + x1) // 2 - cv.text_width("mean generated tokens per item") // 2, height - 22, "mean generated tokens per item")
    boxes: list[tuple[int, int, int, int]] = []
    for i, (name, x, y, ci) in enumerate(points):
        colour = COLOURS[i % len(COLOURS)]
        cx, cy = px(x), py(y)
        if ci:
            lo, hi = py(ci[0]), py(ci[1])
            cv.line(cx, lo, cx, hi, colour, 2)
            cv.line(cx - 5, lo, cx + 5, lo, colour, 2)
            cv.line(cx - 5, hi, cx + 5, hi, colour, 2)
        cv.disc(cx, cy, 5, colour)
        w, h = cv.text_width(name), 5 * SCALE
        tx, ty = min(cx + 10, width - w - 4), cy - 14
        while any(tx < bx1 and tx + w > bx0 and ty < by1 and ty + h > by0 for bx0, by0, bx1, by1 in boxes):
            ty += h + 4  # labels never overlap: move down until free
        boxes.append((tx, ty, tx + w, ty + h))
        cv.text(tx, ty, name, colour)
    if not points:
        cv.text(x0 + 20, (y0 + y1) // 2, "no keyed items scored")
    return encode_png(width, height, cv.pix)
