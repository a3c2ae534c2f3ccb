"""The level cache: reuse a coarse level's work across adjacent sampling steps, recompute the finer levels every step.

MPDiT's global level draws the coarse layout on few tokens, and that layout changes slowly from one step to the next;
the local level, which refines detail on four times the tokens, keeps running at every step. The cache stores the
level's residual (output minus input) at a recomputed step and, at the steps in between, adds it to the level's new
input, so the skip embedding and class tokens of every step still reach the finer levels.

The hook sits on an [`MPDiTLevel`] and keeps one state per cache context, as diffusers' caches do:
`MPDiTPipeline` runs unguided steps in the context `"cond"` and guided ones, a `[cond, uncond]` batch, in
`CFG_CONTEXT`, and resets every state at the start of a call and wherever the batch layout changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from torch import nn

# The context of a guided call: its batch is the conditional half followed by the unconditional half.
CFG_CONTEXT = "cond_uncond"
LEVEL_CACHE_HOOK = "mpdit_level_cache"


@dataclass
class LevelCacheConfig:
    """Reuse whole levels of MPDiT across sampling steps; enable with `transformer.enable_cache(LevelCacheConfig(...))`.

    Two schedules: fixed (`every=k`: recompute the cached levels every k-th call, reuse them in between) and adaptive
    (`threshold=x`: recompute when the level's input has changed by more than x since the last recompute, measured as
    the larger relative L1 change of its tokens and of the shared modulation; FirstBlockCache's kind of signal, at the
    cost of two means). Give one of the two; neither means `every=2`.

    Args:
        every (`int`, *optional*): Fixed schedule: recompute every `every` calls (1 never reuses).
        threshold (`float`, *optional*): Adaptive schedule: the relative change that triggers a recompute (0 never
            reuses).
        levels (`tuple[int, ...]`, defaults to `(0,)`): Levels to cache, 0 being the global one; the finest level always
            runs.
        uncond_every (`int`, *optional*): In guided calls, also reuse the unconditional half's levels across
            recomputes: its half is recomputed only when at least `uncond_every` calls have passed since its last
            recompute, and otherwise takes its cached residual while the conditional half is recomputed. None
            recomputes both halves together.
        warmup_steps (`int`, defaults to 0): Calls at the start of each context that always recompute (the first
            steps from noise move the layout most).
    """

    every: int | None = None
    threshold: float | None = None
    levels: tuple[int, ...] = (0,)
    uncond_every: int | None = None
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.every is not None and self.threshold is not None:
            raise ValueError(
                f"LevelCacheConfig takes `every` (fixed schedule) or `threshold` (adaptive), not both; "
                f"got every={self.every}, threshold={self.threshold}."
            )
        if self.every is None and self.threshold is None:
            self.every = 2
        if self.every is not None and (
            isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1
        ):
            raise ValueError(f"LevelCacheConfig `every` must be an integer >= 1, got {self.every!r}.")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float)) and self.threshold >= 0):
            raise ValueError(f"LevelCacheConfig `threshold` must be a number >= 0, got {self.threshold!r}.")
        if self.uncond_every is not None and (not isinstance(self.uncond_every, int) or self.uncond_every < 1):
            raise ValueError(
                f"LevelCacheConfig `uncond_every` must be an integer >= 1 or None, got {self.uncond_every!r}."
            )
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"LevelCacheConfig `warmup_steps` must be an integer >= 0, got {self.warmup_steps!r}.")
        self.levels = tuple(self.levels)


class LevelCacheState(BaseState):
    """What one level keeps per cache context: the residual and input of its last recompute, and call counts."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.last_recompute = -1
        self.last_uncond_recompute = -1
        self.residual: torch.Tensor | None = None
        self.reference: torch.Tensor | None = None
        self.reference_conditioning: torch.Tensor | None = None


class LevelCacheHook(ModelHook):
    """Replaces a level's forward by its cached residual on the steps the schedule skips."""

    _is_stateful = True

    def __init__(self, state_manager: StateManager, config: LevelCacheConfig):
        super().__init__()
        self.state_manager = state_manager
        self.config = config

    def new_forward(
        self, module: nn.Module, hidden_states: torch.Tensor, conditioning: torch.Tensor, blocks: nn.ModuleList
    ) -> torch.Tensor:
        state: LevelCacheState = self.state_manager.get_state()
        call = state.calls
        state.calls += 1
        # A cold state, or one from a batch of another shape, has nothing to reuse.
        cold = state.residual is None or state.residual.shape != hidden_states.shape
        if cold or call < self.config.warmup_steps or self._due(state, call, hidden_states, conditioning):
            guided = self.state_manager.context.name == CFG_CONTEXT
            uncond_due = (
                cold
                or not guided
                or self.config.uncond_every is None
                or call - state.last_uncond_recompute >= self.config.uncond_every
            )
            if uncond_due:
                output = self.fn_ref.original_forward(hidden_states, conditioning, blocks)
                state.residual = output - hidden_states
                state.reference, state.reference_conditioning = hidden_states, conditioning
                if guided:
                    state.last_uncond_recompute = call
            else:
                # The conditional half alone; the unconditional half takes its own cached residual.
                half = hidden_states.shape[0] // 2
                cond = self.fn_ref.original_forward(hidden_states[:half], conditioning[:half], blocks)
                state.residual = torch.cat([cond - hidden_states[:half], state.residual[half:]])
                state.reference = torch.cat([hidden_states[:half], state.reference[half:]])
                state.reference_conditioning = conditioning
                output = torch.cat([cond, hidden_states[half:] + state.residual[half:]])
            state.last_recompute = call
            return output
        return hidden_states + state.residual

    @torch.compiler.disable
    def _due(self, state: LevelCacheState, call: int, hidden_states: torch.Tensor, conditioning: torch.Tensor) -> bool:
        if self.config.every is not None:
            return call - state.last_recompute >= self.config.every
        # One host sync for both signals.
        changes = torch.stack(
            [
                _relative_change(hidden_states, state.reference),
                _relative_change(conditioning, state.reference_conditioning),
            ]
        )
        return changes.max().item() > self.config.threshold

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.state_manager.reset()
        return module


def _relative_change(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    # Same shapes always: a state of another batch shape is cold and never gets here.
    reference = reference.float()
    return (current.float() - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12)


def apply_level_cache(model: nn.Module, config: LevelCacheConfig) -> None:
    """Hooks the level cache onto `model.levels[i]` for each `i` in `config.levels`.

    Args:
        model (`MPDiTTransformer2DModel`): The model.
        config ([`LevelCacheConfig`]): The schedule.
    """
    num_levels = len(model.levels)
    if num_levels < 2:
        raise ValueError(
            "LevelCacheConfig needs a model of two or more levels: this one has a single level, which must run at "
            "every step."
        )
    cacheable = tuple(range(num_levels - 1))
    if not config.levels or any(level not in cacheable for level in config.levels):
        raise ValueError(
            f"LevelCacheConfig `levels` must be non-empty, from {cacheable} (the finest level, {num_levels - 1}, runs "
            f"at every step), got {config.levels}."
        )
    for level in sorted(set(config.levels)):
        state_manager = StateManager(LevelCacheState)
        registry = HookRegistry.check_if_exists_or_initialize(model.levels[level])
        registry.register_hook(LevelCacheHook(state_manager, config), LEVEL_CACHE_HOOK)
