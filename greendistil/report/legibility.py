"""Whether a figure can be read: no two of its texts (tick labels, axis labels, titles, annotations,
legends) overlap once it is drawn.

Every figure the report writes is drawn by a `draw_*` function that returns the `Figure`; the tests draw each
one on realistic records and require `overlapping_texts(fig)` to be empty. A legend counts as one box.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

TOLERANCE_PX = 1.0  # boxes that only touch (anti-aliasing, rounding) do not count as overlapping


@dataclass(frozen=True)
class TextBox:
    """A drawn text (or legend) and its box in display pixels."""

    what: str
    box: Bbox


def text_boxes(fig: Figure) -> list[TextBox]:
    """Every visible, non-empty text of the drawn figure, and each legend as one box."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts: list[tuple[str, Text]] = []
    for index, ax in enumerate(fig.axes):
        where = f"axes {index}"
        texts += [(f"{where} x tick", t) for t in _drawn_tick_labels(ax.xaxis)]
        texts += [(f"{where} y tick", t) for t in _drawn_tick_labels(ax.yaxis)]
        texts += [(f"{where} x label", ax.xaxis.label), (f"{where} y label", ax.yaxis.label),
                  (f"{where} title", ax.title), (f"{where} x offset", ax.xaxis.get_offset_text()),
                  (f"{where} y offset", ax.yaxis.get_offset_text())]
        texts += [(f"{where} text", t) for t in ax.texts]
    texts += [("figure text", t) for t in fig.texts]  # the suptitle is one of them
    boxes = [TextBox(f"{what} {t.get_text()!r}", t.get_window_extent(renderer)) for what, t in texts
             if t.get_visible() and t.get_text().strip()]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    boxes += [TextBox(f"legend {i}", legend.get_window_extent(renderer)) for i, legend in enumerate(legends)
              if legend.get_visible()]
    return boxes


def _drawn_tick_labels(axis: Any) -> list[Text]:
    """The major tick labels matplotlib draws: those of ticks inside the view (it keeps others unplaced)."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) or 1.0
    return [tick.label1 for tick in axis.get_major_ticks()
            if tick.label1.get_visible() and low - 1e-9 * span <= tick.get_loc() <= high + 1e-9 * span]


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """The pairs of texts that overlap by more than `TOLERANCE_PX` in both directions."""
    pairs = []
    for a, b in combinations(text_boxes(fig), 2):
        width = min(a.box.x1, b.box.x1) - max(a.box.x0, b.box.x0)
        height = min(a.box.y1, b.box.y1) - max(a.box.y0, b.box.y0)
        if width > TOLERANCE_PX and height > TOLERANCE_PX:
            pairs.append((a.what, b.what))
    return pairs


def outside_figure(fig: Figure) -> list[str]:
    """Texts drawn (partly) outside the figure: cut off in the PNG."""
    boxes = text_boxes(fig)  # draws the figure on an Agg canvas
    width, height = fig.canvas.get_width_height()
    return [t.what for t in boxes
            if t.box.x0 < -TOLERANCE_PX or t.box.y0 < -TOLERANCE_PX or t.box.x1 > width + TOLERANCE_PX
            or t.box.y1 > height + TOLERANCE_PX]
