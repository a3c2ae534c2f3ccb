"""The diffusion coefficients `w(t)` of the official SDE sampler, and the checks of its settings."""

from __future__ import annotations

import math

DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "decreasing", "increasing-decreasing")


def diffusion_coefficient(form: str, t: float, norm: float = 1.0) -> float:
    """`w(t)` at flow time t (1 = noise), with `n = norm`: `"constant"` n; `"SBDM"` n t / (1 - t); `"sigma"` n t;
    `"decreasing"` 0.25 (n cos(pi (1 - t)) + 1)^2; `"increasing-decreasing"` n sin(pi (1 - t))^2.

    Args:
        form (`str`): One of `DIFFUSION_FORMS`.
        t (`float`): Flow time in (0, 1).
        norm (`float`): The scale `n`.
    """
    if form == "constant":
        return norm
    if form == "SBDM":
        return norm * t / (1 - t)
    if form == "sigma":
        return norm * t
    if form == "decreasing":
        return 0.25 * (norm * math.cos(math.pi * (1 - t)) + 1) ** 2
    if form == "increasing-decreasing":
        return norm * math.sin(math.pi * (1 - t)) ** 2
    raise ValueError(f"`diffusion_form` must be one of {', '.join(DIFFUSION_FORMS)}; got {form!r}.")


def check_diffusion_form(value: str, name: str = "`diffusion_form`") -> str:
    """Returns `value` if it is one of `DIFFUSION_FORMS`, else raises a ValueError naming `name`.

    Args:
        value (`str`): The diffusion form.
        name (`str`): What the caller calls it in errors (an argument or a flag).
    """
    if value not in DIFFUSION_FORMS:
        raise ValueError(f"{name} must be one of {', '.join(DIFFUSION_FORMS)}; got {value!r}.")
    return value


def check_last_step_size(value: float, name: str = "`last_step_size`") -> float:
    """Returns `value` if it lies in (0, 0.5), the sizes that keep the time grid decreasing, else raises.

    Args:
        value (`float`): The last step size `h`.
        name (`str`): What the caller calls it in errors (an argument or a flag).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 0.5:
        raise ValueError(f"{name} must be a number in (0, 0.5), got {value!r}.")
    return float(value)
