"""Time grids: diffusers' `retrieve_timesteps`, the resolution-dependent shift, the official ODE grid and the scheduler
MPDiT pipelines ship with."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler, SchedulerMixin


# Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.retrieve_timesteps: every diffusers
# module that defines it also imports transformers, which MPDiT does not otherwise need.
def retrieve_timesteps(
    scheduler: SchedulerMixin,
    num_inference_steps: int | None = None,
    device: str | torch.device | None = None,
    timesteps: list[int] | None = None,
    sigmas: list[float] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, int]:
    """Calls `scheduler.set_timesteps` (with custom `timesteps` or `sigmas` where it accepts them) and returns the
    timesteps and their count."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    if timesteps is not None:
        if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" timestep schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(timesteps=timesteps, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    elif sigmas is not None:
        if "sigmas" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" sigmas schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
        timesteps = scheduler.timesteps
    return timesteps, num_inference_steps


def calculate_shift(image_seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15) -> float:
    """Resolution-dependent shift `mu` for schedulers with `use_dynamic_shifting` (as in diffusers' SD3/Flux)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + base_shift - m * base_seq_len


def official_euler_sigmas(num_points: int = 250) -> np.ndarray:
    """`sigmas=` that make `FlowMatchEulerDiscreteScheduler` (shift 1) run the official ODE sampler exactly.

    The official sampler takes Euler steps over `linspace(1, 0, num_points)`; the scheduler appends the final 0 itself.
    """
    return np.linspace(1.0, 0.0, num_points)[:-1]


def default_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The scheduler MPDiT pipelines ship with: Euler, shift 1 (the official sampler's time grid)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
