"""The schedulers MPDiT pipelines are tested with, by name, for the `mpdit` command and the Space."""

from __future__ import annotations

from collections.abc import Callable

from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# UniPC and DPM-Solver need flow sigmas and flow prediction to sample a velocity model.
SCHEDULERS: dict[str, Callable[[dict], SchedulerMixin]] = {
    "euler": lambda c: FlowMatchEulerDiscreteScheduler.from_config(c),
    "euler-stochastic": lambda c: FlowMatchEulerDiscreteScheduler.from_config(c, stochastic_sampling=True),
    "heun": lambda c: FlowMatchHeunDiscreteScheduler.from_config(c),
    "unipc": lambda c: UniPCMultistepScheduler.from_config(c, use_flow_sigmas=True, prediction_type="flow_prediction"),
    "dpm-solver": lambda c: DPMSolverMultistepScheduler.from_config(
        c, use_flow_sigmas=True, prediction_type="flow_prediction"
    ),
}


def make_scheduler(name: str, config: dict) -> SchedulerMixin:
    """A scheduler by name, built from another scheduler's config (the pipeline's, to keep its time grid settings).

    Args:
        name (`str`): One of `SCHEDULERS`: euler (the default), euler-stochastic, heun, unipc, dpm-solver.
        config (`dict`): A scheduler config, e.g. `pipe.scheduler.config`.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](config)
