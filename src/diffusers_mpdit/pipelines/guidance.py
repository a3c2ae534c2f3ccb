"""The rules for classifier-free guidance settings, shared by the pipeline and every front end."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np


def check_guidance_scale(value: float, name: str = "`guidance_scale`") -> float:
    """Returns `value` as a float if it is a finite number >= 0, else raises a ValueError naming `name`.

    The scale `s` enters `v = v_uncond + s * (v_cond - v_uncond)` as it is: 1 is the conditional prediction alone,
    0 the unconditional one, and values in between interpolate.

    Args:
        value (`float`): The scale.
        name (`str`): What the caller calls it, for the error (an argument in backticks, or a flag).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0 (1 = no guidance, 0 = unconditional), got {value!r}.")
    return float(value)


def check_guidance_interval(value: Sequence[float] | None, name: str = "`guidance_interval`") -> tuple | None:
    """Returns `value` as a `(low, high)` tuple of floats with `0 <= low <= high <= 1`, or None; else raises.

    Args:
        value (`Sequence[float]`, *optional*): Flow times (1 = noise) between which guidance applies.
        name (`str`): What the caller calls it, for the error (an argument in backticks, or a flag).
    """
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 2:
        raise ValueError(f"{name} must be (low, high) or None, got {value!r}.")
    low, high = value
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (low, high)) or not (
        0 <= low <= high <= 1
    ):
        raise ValueError(f"{name} must be (low, high) with 0 <= low <= high <= 1 in flow time t, got {tuple(value)}.")
    return float(low), float(high)
