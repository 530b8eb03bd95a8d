"""How numbers read in the report and its conclusions (one place, so text and tables agree)."""

from __future__ import annotations

import math
import numbers

NOT_AVAILABLE = "n/a"


def is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def percent(value: float) -> str:
    """A recall in percent, one decimal."""
    return f"{value:.1f}" if is_number(value) else NOT_AVAILABLE


def signed(value: float) -> str:
    """A difference in points with its sign, using a real minus sign."""
    if not is_number(value):
        return NOT_AVAILABLE
    text = f"{value:+.1f}"
    return text.replace("-", "\u2212") if text != "-0.0" else "+0.0"


def interval(low: float, high: float) -> str:
    return f"{signed(low)} to {signed(high)}"


def duration(seconds: float) -> str:
    """Seconds in the unit a reader expects: s below 2 min, min below 2 h, else h."""
    if not is_number(seconds):
        return NOT_AVAILABLE
    unit, scale = duration_unit([seconds])
    return f"{seconds / scale:.{1 if unit == 'h' else 0}f} {unit}"


def duration_unit(seconds: list[float]) -> tuple[str, float]:
    """The unit (and seconds per unit) that suits the largest of `seconds`."""
    largest = max((value for value in seconds if is_number(value)), default=0.0)
    if largest >= 7200:
        return "h", 3600.0
    if largest >= 120:
        return "min", 60.0
    return "s", 1.0


def millions(value: float) -> str:
    return f"{value / 1e6:.1f} M" if is_number(value) else NOT_AVAILABLE


def number(value: float, decimals: int = 1) -> str:
    return f"{value:,.{decimals}f}" if is_number(value) else NOT_AVAILABLE


def p_value(value: float) -> str:
    """A p-value to three decimals, or '< 0.001'."""
    if not is_number(value):
        return NOT_AVAILABLE
    return "< 0.001" if value < 0.001 else f"{value:.3f}"
