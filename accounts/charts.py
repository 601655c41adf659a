"""Small charts for the usage dashboard, drawn in Python as inline SVG.

Server-side SVG means the admin needs no JavaScript and nothing from the internet, and
the numbers are in the page (each bar and point carries a ``<title>`` tooltip with the
exact value). Every label goes through ``format_html``, so a key or model name cannot
inject markup. Text and axes use ``currentColor`` so the charts follow the admin's
light or dark theme.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

# Tableau 10, minus grey, which is kept for "Other".
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
OTHER_COLOUR = "#9e9e9e"

WIDTH = 760
PLOT_TOP = 12
PLOT_HEIGHT = 200
PLOT_LEFT = 64  # room for the y tick labels and the axis title
PLOT_RIGHT = WIDTH - 12
X_AXIS_HEIGHT = 40  # tick labels, then the axis title
LEGEND_TOP_GAP = 12
LEGEND_ROW_HEIGHT = 18
LEGEND_COLUMN_WIDTH = 245
LEGEND_LABEL_CHARS = 34  # longer labels are cut; the full label is in the tooltip
MAX_X_LABELS = 16


@dataclass
class Series:
    label: str
    values: list[int]
    colour: str = ""

    @property
    def total(self) -> int:
        return sum(self.values)


def colour_series(series: list[Series], other_label: str | None = None) -> list[Series]:
    """Give each series a palette colour, in order; the "Other" series is grey."""
    for index, item in enumerate(series):
        if not item.colour:
            item.colour = OTHER_COLOUR if item.label == other_label else PALETTE[index % len(PALETTE)]
    return series


def stacked_bar_chart(x_labels: list[str], series: list[Series], *, title: str, y_label: str,
                      x_label: str = "Day", unit: str = "") -> SafeString:
    """One bar per x label, its series stacked from the bottom in the given order."""
    totals = [sum(item.values[i] for item in series) for i in range(len(x_labels))]
    top, ticks = _y_scale(max(totals, default=0))
    band = (PLOT_RIGHT - PLOT_LEFT) / max(len(x_labels), 1)
    bar_width = max(band * 0.7, 1)

    bars = []
    for i, x_text in enumerate(x_labels):
        x = PLOT_LEFT + band * i + (band - bar_width) / 2
        stacked = 0
        for item in series:
            value = item.values[i]
            if not value:
                continue
            y_top = _y(stacked + value, top)
            bars.append(format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}: {}: {} {}</title></rect>',
                _n(x), _n(y_top), _n(bar_width), _n(_y(stacked, top) - y_top), item.colour,
                x_text, item.label, _thousands(value), unit,
            ))
            stacked += value
    return _chart(x_labels, series, top, ticks, mark_safe("".join(bars)),
                  title=title, y_label=y_label, x_label=x_label, unit=unit)


def line_chart(x_labels: list[str], series: list[Series], *, title: str, y_label: str,
               x_label: str = "Day", unit: str = "") -> SafeString:
    """One line per series, a point (with its tooltip) per x label."""
    top, ticks = _y_scale(max((max(item.values, default=0) for item in series), default=0))
    band = (PLOT_RIGHT - PLOT_LEFT) / max(len(x_labels), 1)

    lines = []
    for item in series:
        points = [(PLOT_LEFT + band * (i + 0.5), _y(value, top)) for i, value in enumerate(item.values)]
        lines.append(format_html(
            '<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>',
            item.colour, " ".join(f"{_n(x)},{_n(y)}" for x, y in points),
        ))
        for (x, y), x_text, value in zip(points, x_labels, item.values):
            lines.append(format_html(
                '<circle cx="{}" cy="{}" r="3" fill="{}"><title>{}: {}: {} {}</title></circle>',
                _n(x), _n(y), item.colour, x_text, item.label, _thousands(value), unit,
            ))
    return _chart(x_labels, series, top, ticks, mark_safe("".join(lines)),
                  title=title, y_label=y_label, x_label=x_label, unit=unit)


def _chart(x_labels, series, top, ticks, plot: SafeString, *, title, y_label, x_label, unit) -> SafeString:
    """The frame around a plot: grid, axes, tick labels, axis titles and the legend."""
    plot_bottom = PLOT_TOP + PLOT_HEIGHT
    legend_top = plot_bottom + X_AXIS_HEIGHT + LEGEND_TOP_GAP
    columns = max(int((WIDTH - PLOT_LEFT) // LEGEND_COLUMN_WIDTH), 1)
    legend_rows = math.ceil(len(series) / columns)
    height = legend_top + legend_rows * LEGEND_ROW_HEIGHT + 4

    parts = [format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart" role="img" aria-label="{}" '
        'viewBox="0 0 {} {}" width="{}" height="{}" font-size="11" fill="currentColor">'
        '<title>{}</title>',
        title, WIDTH, height, WIDTH, height, title,
    )]
    # Horizontal grid lines with their values on the y axis.
    for value in ticks:
        y = _y(value, top)
        parts.append(format_html(
            '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="currentColor" stroke-opacity="0.15"/>'
            '<text x="{}" y="{}" text-anchor="end" dominant-baseline="middle">{}</text>',
            PLOT_LEFT, PLOT_RIGHT, _n(y), _n(y), PLOT_LEFT - 6, _n(y), _compact(value),
        ))
    parts.append(plot)
    parts.append(format_html(
        '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="currentColor"/>',
        PLOT_LEFT, PLOT_RIGHT, plot_bottom, plot_bottom,
    ))
    # Label every day (or hour) while they fit, every n-th one for a long range.
    band = (PLOT_RIGHT - PLOT_LEFT) / max(len(x_labels), 1)
    step = math.ceil(len(x_labels) / MAX_X_LABELS) or 1
    for i in range(0, len(x_labels), step):
        parts.append(format_html(
            '<text x="{}" y="{}" text-anchor="middle">{}</text>',
            _n(PLOT_LEFT + band * (i + 0.5)), plot_bottom + 14, _short_day(x_labels[i]),
        ))
    parts.append(format_html(
        '<text x="{}" y="{}" text-anchor="middle">{}</text>',
        _n((PLOT_LEFT + PLOT_RIGHT) / 2), plot_bottom + 32, x_label,
    ))
    parts.append(format_html(
        '<text transform="translate(14 {}) rotate(-90)" text-anchor="middle">{}</text>',
        _n(PLOT_TOP + PLOT_HEIGHT / 2), y_label,
    ))
    if not any(item.total for item in series):
        parts.append(format_html(
            '<text x="{}" y="{}" text-anchor="middle" fill-opacity="0.6">No usage in this range.</text>',
            _n((PLOT_LEFT + PLOT_RIGHT) / 2), _n(PLOT_TOP + PLOT_HEIGHT / 2),
        ))
    parts.append(_legend(series, legend_top, columns, unit))
    parts.append(mark_safe("</svg>"))
    return mark_safe("".join(parts))


def _legend(series: list[Series], top: float, columns: int, unit: str) -> SafeString:
    """A swatch and "label (total)" per series, in rows of ``columns``."""
    return format_html_join("", (
        '<g transform="translate({} {})"><title>{}: {} {} in this range</title>'
        '<rect width="10" height="10" fill="{}"/><text x="15" y="9">{} ({})</text></g>'
    ), (
        (
            PLOT_LEFT + (index % columns) * LEGEND_COLUMN_WIDTH, _n(top + (index // columns) * LEGEND_ROW_HEIGHT),
            item.label, _thousands(item.total), unit,
            item.colour, _shorten(item.label), _thousands(item.total),
        )
        for index, item in enumerate(series)
    ))


def _y_scale(maximum: int) -> tuple[float, list[float]]:
    """A round top for the y axis and its tick values: 0, step, 2*step, ... top."""
    if maximum <= 0:
        return 1, [0, 1]
    rough_step = maximum / 4
    magnitude = 10 ** math.floor(math.log10(rough_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= rough_step)
    step = max(step, 1)  # counts are integers: no 0.5 ticks
    top = step * math.ceil(maximum / step)
    count = round(top / step)
    return top, [step * i for i in range(count + 1)]


def _y(value: float, top: float) -> float:
    return PLOT_TOP + PLOT_HEIGHT * (1 - value / top)


def _n(number: float) -> str:
    """A coordinate with at most one decimal, so the SVG stays small and stable."""
    return f"{number:.1f}".rstrip("0").rstrip(".")


def _thousands(value: int) -> str:
    return f"{value:,}"


def _compact(value: float) -> str:
    """Axis ticks: 1500 -> "1.5k", 2000000 -> "2M"."""
    for limit, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if value >= limit:
            return f"{value / limit:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:g}"


def _short_day(iso_day: str) -> str:
    """"2026-11-20" -> "11-20": the year is in the range shown above the chart. An hour,
    "2026-11-20 13:00" -> "13:00", and midnight -> "11-20": where each day begins."""
    if len(iso_day) == 16:
        return iso_day[5:10] if iso_day.endswith(" 00:00") else iso_day[11:]
    return iso_day[5:] if len(iso_day) == 10 else iso_day


def _shorten(label: str) -> str:
    return label if len(label) <= LEGEND_LABEL_CHARS else label[:LEGEND_LABEL_CHARS - 1] + "…"
