"""The package's number checks: whole numbers and finite scales, each refused in one line naming what was expected
and what came. A leaf module (it imports nothing of ours), so every part of the package, the core included, uses it."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_whole_number(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within [minimum, maximum], or a one-line error (bools, floats and strings refused)."""
    if minimum is not None and maximum is not None:
        within = f" in [{minimum}, {maximum}]"
    else:
        within = f" >= {minimum}" if minimum is not None else (f" <= {maximum}" if maximum is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"expected {name} as a whole number{within}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"expected {name} as a whole number{within}, got {value}")
    return int(value)


def check_scale(name: str, value: Any, minimum: float | None = None) -> None:
    """A guidance scale or eta: a finite real number (at least ``minimum``), or a one-line error before any work."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"expected {name} as a number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ValueError(f"expected {name} as a finite number{bound}, got {value}")
