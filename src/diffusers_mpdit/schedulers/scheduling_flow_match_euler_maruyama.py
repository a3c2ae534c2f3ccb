"""FlowMatchEulerMaruyamaScheduler: the official MPDiT release's SDE sampler (`sample.py --sample_type sde`).

diffusers has no flow-matching Euler-Maruyama sampler with a score-based diffusion term: its FlowMatchEuler
`stochastic_sampling` re-noises to the next time instead, which is a different sampler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .diffusion import check_diffusion_form, check_last_step_size, diffusion_coefficient


@dataclass
class FlowMatchEulerMaruyamaSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor`): The sample at the next (smaller) flow time.
    """

    prev_sample: torch.Tensor


class FlowMatchEulerMaruyamaScheduler(SchedulerMixin, ConfigMixin):
    r"""Euler-Maruyama sampling of the reverse SDE of a flow-matching model, as the official MPDiT/SiT `sample.py` does.

    With flow time t (1 = noise, 0 = data), `x_t = (1 - t) x_0 + t noise` and the model's velocity `v = noise - x_0`,
    the score is `s = -((1 - t) v + x) / t`. Each step follows the drift `d = v - w(t) s` and adds
    `sqrt(2 w(t) |dt|)` times fresh standard normal noise; the last step, from the smallest time to 0, is a plain
    drift step without noise.

    The time grid has `num_inference_steps = N` points, `linspace(1 - h, h, N)` with `h = last_step_size`, and costs N
    model evaluations: N - 1 noisy steps and the final one. Timesteps are `t * num_train_timesteps`.

    Args:
        num_train_timesteps (`int`, defaults to 1000): Timesteps are flow times times this.
        diffusion_form (`str`, defaults to `"SBDM"`): The diffusion coefficient `w(t)`, with `n = diffusion_norm`:
            `"constant"` n; `"SBDM"` n t / (1 - t); `"sigma"` n t; `"decreasing"` 0.25 (n cos(pi (1 - t)) + 1)^2;
            `"increasing-decreasing"` n sin(pi (1 - t))^2.
        diffusion_norm (`float`, defaults to 1.0): The scale `n` of the diffusion coefficient.
        last_step_size (`float`, defaults to 0.04): `h`: the grid starts at `1 - h` and its last point is `h`; in (0, 0.5).
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        diffusion_form: str = "SBDM",
        diffusion_norm: float = 1.0,
        last_step_size: float = 0.04,
    ):
        check_diffusion_form(diffusion_form)
        check_last_step_size(last_step_size)
        if not math.isfinite(diffusion_norm) or diffusion_norm < 0:
            raise ValueError(f"`diffusion_norm` must be a finite number >= 0, got {diffusion_norm!r}.")
        self.num_inference_steps: int | None = None
        self.sigmas = torch.zeros(0)
        self.timesteps = torch.zeros(0)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        """The index of the next step (None before the first `step` after `set_timesteps`)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The index of the first step, if a pipeline set one with `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Starts the next run at grid point `begin_index` (for pipelines that start part-way, as img2img does).

        Args:
            begin_index (`int`): Index into `timesteps`.
        """
        self._begin_index = begin_index

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | np.ndarray | None = None,
        timesteps: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Sets the time grid: `linspace(1 - h, h, num_inference_steps)`, or custom flow times.

        Args:
            num_inference_steps (`int`, *optional*): Grid points, >= 2; each costs one model evaluation.
            device (`str` or `torch.device`, *optional*): Where to put `timesteps`.
            sigmas (`Sequence[float]`, *optional*): Custom flow times, strictly decreasing within (0, 1). The final
                noiseless step goes from the last of them to 0. As with diffusers' flow schedulers, a given
                `num_inference_steps` must equal their number.
            timesteps (`Sequence[float]`, *optional*): The same as `sigmas`, times `num_train_timesteps`.
        """
        train = self.config.num_train_timesteps
        if sigmas is not None and timesteps is not None:
            raise ValueError("Pass `sigmas` or `timesteps`, not both.")
        if timesteps is not None:
            sigmas = np.asarray(timesteps, dtype=np.float64) / train
        if sigmas is not None:
            sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
            if num_inference_steps is not None and num_inference_steps != len(sigmas):
                raise ValueError(
                    f"`num_inference_steps` ({num_inference_steps}) must equal the number of custom sigmas "
                    f"({len(sigmas)}) when both are given."
                )
            if len(sigmas) < 1 or not np.all((sigmas > 0) & (sigmas < 1)) or np.any(np.diff(sigmas) >= 0):
                raise ValueError(
                    "`sigmas` must be strictly decreasing flow times within (0, 1): the score divides by t, and "
                    f"the SBDM diffusion by 1 - t; got {sigmas.tolist()}."
                )
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
                raise ValueError(f"`num_inference_steps` must be an integer >= 2, got {num_inference_steps!r}.")
            if num_inference_steps < 2:
                raise ValueError(
                    f"`num_inference_steps` must be >= 2 for {type(self).__name__} (grid points from 1 - h to h), "
                    f"got {num_inference_steps}."
                )
            h = self.config.last_step_size
            sigmas = torch.linspace(1 - h, h, num_inference_steps, dtype=torch.float32).numpy()
        self.num_inference_steps = len(sigmas)
        sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
        self.timesteps = (sigmas * train).to(device)
        # Kept on the host, as FlowMatchEuler does: each step reads two of them.
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self._step_index = None
        self._begin_index = None

    def diffusion(self, t: float) -> float:
        """The diffusion coefficient `w(t)` of `diffusion_form`.

        Args:
            t (`float`): Flow time in (0, 1).
        """
        return diffusion_coefficient(self.config.diffusion_form, t, self.config.diffusion_norm)

    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        """The grid index of `timestep` (one of `timesteps`)."""
        matches = (self.timesteps.cpu() == torch.as_tensor(timestep, dtype=torch.float32).cpu()).nonzero()
        if len(matches) == 0:
            raise ValueError(f"`timestep` {float(timestep)} is not on the grid set by `set_timesteps`.")
        return int(matches[0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> FlowMatchEulerMaruyamaSchedulerOutput | tuple:
        """One Euler-Maruyama step from `timestep` to the next grid point (a noiseless drift step at the last point).

        Args:
            model_output (`torch.Tensor`): The (guided) velocity `noise - data` at `sample`.
            timestep (`float` or `torch.Tensor`): The current element of `timesteps`.
            sample (`torch.Tensor`): `x_t`.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): For the step's noise, one standard
                normal tensor of the sample's shape drawn with diffusers' `randn_tensor` (one generator per image
                keeps each image's noise its own).
            return_dict (`bool`, defaults to `True`): Return a [`FlowMatchEulerMaruyamaSchedulerOutput`].
        """
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps` before `step`.")
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("`timestep` must be one of `scheduler.timesteps` (a float), not an integer index.")
        if self._step_index is None:
            self._step_index = (
                self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
            )
        i = self._step_index
        t, t_next = self.sigmas[i].item(), self.sigmas[i + 1].item()
        dt = t_next - t
        # In float32 whatever the model's dtype, as FlowMatchEuler does.
        x, velocity = sample.to(torch.float32), model_output.to(torch.float32)
        w = self.diffusion(t)
        score = -((1 - t) * velocity + x) / t
        prev_sample = x + dt * (velocity - w * score)
        if i < self.num_inference_steps - 1:
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            prev_sample = prev_sample + math.sqrt(2 * w) * math.sqrt(abs(dt)) * noise
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerMaruyamaSchedulerOutput(prev_sample=prev_sample)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
