"""The EMA of the saved weights: diffusers' `EMAModel`, loaded quietly, and what a run's length lets it become."""

from __future__ import annotations

import logging
import os

# Below this, what remains of the initial weights in the EMA no longer shows in samples.
VISIBLE_INITIAL_WEIGHT = 0.1


def load_ema(directory: str | os.PathLike, model_cls):
    """`diffusers.training_utils.EMAModel.from_pretrained`, without its warnings.

    `EMAModel.save_pretrained` stores its own state (`decay`, `use_ema_warmup`, ...) in the model's `config.json`, and
    loading that folder makes the model class report each of those keys as unexpected, twice: noise on every resume.

    Args:
        directory (`str` or `os.PathLike`): A folder written by `EMAModel.save_pretrained`.
        model_cls: The model class, e.g. `MPDiTTransformer2DModel`.
    """
    from diffusers.training_utils import EMAModel

    config_logger = logging.getLogger("diffusers.configuration_utils")
    level = config_logger.level
    config_logger.setLevel(logging.ERROR)
    try:
        return EMAModel.from_pretrained(os.fspath(directory), model_cls)
    finally:
        config_logger.setLevel(level)


def ema_initial_weight(decay: float, steps: int) -> float:
    """The weight the initial parameters still carry in a constant-decay EMA after `steps` updates: `decay ** steps`.

    Args:
        decay (`float`): The EMA decay, in [0, 1).
        steps (`int`): Updates.
    """
    return decay**steps


def ema_warning(decay: float, steps: int, flag: str = "--ema_decay") -> str | None:
    """A warning for a run too short for its EMA to move away from the initialisation (None when it is long enough).

    Args:
        decay (`float`): The EMA decay.
        steps (`int`): The run's optimisation steps.
        flag (`str`): What the front end calls the decay.
    """
    remaining = ema_initial_weight(decay, steps)
    if remaining <= VISIBLE_INITIAL_WEIGHT:
        return None
    horizon = 1 / (1 - decay) if decay < 1 else float("inf")
    return (
        f"{flag} {decay:g} averages over about {horizon:,.0f} steps (1 / (1 - decay)); after {steps} steps the EMA "
        f"weights, which the validation grids and the saved pipeline use, are still {remaining:.0%} the random "
        f"initialisation, so their samples will look like noise. For a short run, lower {flag} (e.g. "
        f"{0.01 ** (1 / steps):.4g}, which keeps 1% of it after {steps} steps)."
    )
