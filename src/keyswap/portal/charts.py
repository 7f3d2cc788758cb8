"""Usage drawn on the server: stacked bar charts as SVG (no script, no external asset).

Every text in the SVG is escaped by the template engine: :func:`bar_chart` returns plain data (bars
and labels) that the ``chart.svg`` macro renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CLASSES", "Bar", "Chart", "Row", "bar_chart"]

#: Status classes in stacking order, with their colours (readable on white, told apart by lightness).
CLASSES = (("2xx", "#15803d"), ("3xx", "#2563eb"), ("4xx", "#d97706"), ("5xx", "#b91c1c"))


@dataclass(frozen=True, slots=True)
class Row:
    """One bucket's numbers: its label and requests per status class."""

    label: str
    counts: tuple[int, int, int, int]

    @property
    def total(self) -> int:
        """Requests in the bucket."""
        return sum(self.counts)


@dataclass(frozen=True, slots=True)
class Bar:
    """One rectangle of the chart."""

    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """What the template draws: size, bars, axis labels and the largest total."""

    width: int
    height: int
    bars: list[Bar]
    labels: list[tuple[float, str]]
    peak: int
    title: str


def bar_chart(
    rows: Sequence[Row], *, title: str, width: int = 720, height: int = 200, label_every: int = 1
) -> Chart:
    """A stacked bar chart of ``rows`` (one bar per row, stacked by status class)."""
    top, bottom = 10, 24
    plot = height - top - bottom
    peak = max((row.total for row in rows), default=0)
    slot = width / max(1, len(rows))
    bars: list[Bar] = []
    labels: list[tuple[float, str]] = []
    for index, row in enumerate(rows):
        x = index * slot + slot * 0.1
        y = float(top + plot)
        for (name, colour), count in zip(CLASSES, row.counts, strict=True):
            if not count or not peak:
                continue
            h = plot * count / peak
            y -= h
            bars.append(
                Bar(
                    round(x, 2),
                    round(y, 2),
                    round(slot * 0.8, 2),
                    round(h, 2),
                    colour,
                    f"{row.label}: {count} {name}",
                )
            )
        if index % label_every == 0:
            labels.append((round(index * slot + slot / 2, 2), row.label))
    return Chart(width, height, bars, labels, peak, title)
