"""Markdown building blocks for the report: pipe tables and number formatting.

Every formatter takes `None` (or NaN) for a figure that was not measured and returns "n/a": an absent
figure is never shown as 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

NOT_AVAILABLE = "n/a"

_SI_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def is_missing(value: Any) -> bool:
    """True for None, NaN and pandas' NA: a figure nobody measured."""
    if value is None:
        return True
    if isinstance(value, (str, list, tuple, dict)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt_number(value: float | None, digits: int = 3) -> str:
    """`digits` significant figures; scientific notation (1.25e-6, 9.56e5) below 0.001 and from 100,000 on."""
    if is_missing(value):
        return NOT_AVAILABLE
    value = float(value)
    if value == 0:
        return "0"
    if 10 ** (digits - 1) <= abs(value) < 1e5:
        return f"{value:.0f}"  # whole numbers below 100,000: 1000, 3601
    if 1e-3 <= abs(value) < 10 ** (digits - 1):
        return f"{value:.{digits}g}"
    mantissa, exponent = f"{value:.{max(digits - 1, 0)}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_count(value: float | None) -> str:
    """A count with thousands separators: 67349 -> '67,349'."""
    return NOT_AVAILABLE if is_missing(value) else f"{float(value):,.0f}"


def fmt_si(value: float | None, digits: int = 3) -> str:
    """A count with an SI prefix: 66_000_000 -> '66.0 M', 1.2e15 -> '1.20 P'."""
    if is_missing(value):
        return NOT_AVAILABLE
    value = float(value)
    for scale, prefix in _SI_PREFIXES:
        if abs(value) >= scale:
            return f"{_fixed(value / scale, digits)} {prefix}"
    return _fixed(value, digits)


def fmt_ratio(value: float | None) -> str:
    """A ratio as '0.603×'."""
    return NOT_AVAILABLE if is_missing(value) else f"{fmt_number(value)}×"


def fmt_percent(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: 0.9686 -> '96.9%'."""
    return NOT_AVAILABLE if is_missing(value) else f"{100.0 * float(value):.{digits}f}%"


def _fixed(value: float, digits: int) -> str:
    """`digits` significant figures in fixed notation (keeps trailing zeros: '66.0')."""
    if value == 0:
        return "0"
    decimals = max(digits - 1 - int(math.floor(math.log10(abs(value)))), 0)
    return f"{value:.{decimals}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right_align_from: int = 1) -> str:
    """A pipe table; columns from `right_align_from` on are right-aligned (figures)."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    align = ["---" if i < right_align_from else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def code(text: Any) -> str:
    """Inline code, or n/a when absent."""
    return NOT_AVAILABLE if is_missing(text) or text == "" else f"`{text}`"
