"""Caches by name and setting, as every front end spells them: `--cache level:3`, `--cache fbc:0.1`, ...

| spec | cache |
| --- | --- |
| `level:K` | `LevelCacheConfig(every=K)`: recompute the global level every K steps |
| `level-adaptive:X` | `LevelCacheConfig(threshold=X)`: recompute when its input changed by more than X |
| `fbc:X` | `FirstBlockCacheConfig(threshold=X)`, per level |
| `taylorseer:K` | `TaylorSeerCacheConfig(cache_interval=K)`, Taylor factors in float32 |
| `pab:K` | `PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=K)`, reading the pipeline's timestep |

The level caches take options after a comma: `uncond=N` (`uncond_every`) and `warmup=N` (`warmup_steps`), e.g.
`level:3,uncond=6`. Parsing needs neither torch nor diffusers, so a front end checks the flag before loading anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CACHE_FORMS = "level:K, level-adaptive:X, fbc:X, taylorseer:K, pab:K (level ones take ,uncond=N and ,warmup=N)"
# name -> (kind of value, whether it takes the level options)
_KINDS = {
    "level": (int, True),
    "level-adaptive": (float, True),
    "fbc": (float, False),
    "taylorseer": (int, False),
    "pab": (int, False),
}
_OPTIONS = {"uncond": "uncond_every", "warmup": "warmup_steps"}


@dataclass(frozen=True)
class CacheSpec:
    """A parsed `--cache` value.

    Args:
        name (`str`): One of `level`, `level-adaptive`, `fbc`, `taylorseer`, `pab`.
        value (`float`): Its setting (an interval for `level`, `taylorseer`, `pab`; a threshold otherwise).
        options (`tuple`): `(option, int)` pairs of the level caches, sorted.
    """

    name: str
    value: float
    options: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        value = f"{int(self.value)}" if _KINDS[self.name][0] is int else f"{self.value:g}"
        return ",".join([f"{self.name}:{value}", *(f"{k}={v}" for k, v in self.options)])

    def make_config(self, pipe: Any) -> Any:
        """The diffusers (or level) cache config, for `pipe.transformer.enable_cache`.

        Args:
            pipe (`MPDiTPipeline`): The pipeline, whose `current_timestep` PAB reads.
        """
        import torch
        from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

        from .models.level_cache import LevelCacheConfig

        options = {_OPTIONS[k]: v for k, v in self.options}
        if self.name == "level":
            return LevelCacheConfig(every=int(self.value), **options)
        if self.name == "level-adaptive":
            return LevelCacheConfig(threshold=self.value, **options)
        if self.name == "fbc":
            return FirstBlockCacheConfig(threshold=self.value)
        if self.name == "taylorseer":
            # float32 factors: latents and their arithmetic stay float32 in this package.
            return TaylorSeerCacheConfig(cache_interval=int(self.value), taylor_factors_dtype=torch.float32)
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=int(self.value), current_timestep_callback=lambda: pipe.current_timestep
        )


def parse_cache(spec: str, name: str = "`cache`") -> CacheSpec:
    """Parses a cache spec; raises a one-line ValueError naming `name` and the allowed forms.

    Args:
        spec (`str`): E.g. `level:3`, `level:3,uncond=6`, `fbc:0.1`.
        name (`str`): What the front end calls the setting (a flag), for the error.
    """

    def fail(why: str) -> ValueError:
        return ValueError(f"{name} {spec!r}: {why}; give one of {CACHE_FORMS}")

    if not isinstance(spec, str):
        raise fail("not a string")
    head, *extras = spec.strip().split(",")
    cache, sep, raw = head.partition(":")
    if cache not in _KINDS or not sep:
        raise fail("unknown cache" if cache not in _KINDS else "missing its setting")
    kind, takes_options = _KINDS[cache]
    try:
        value = kind(raw)
    except ValueError:
        raise fail(f"the setting must be {'an integer' if kind is int else 'a number'}") from None
    if kind is int and value < 1:
        raise fail("the interval must be >= 1")
    if kind is float and not (math.isfinite(value) and value >= 0):
        raise fail("the threshold must be a finite number >= 0")
    options = {}
    for extra in extras:
        key, sep, raw = extra.partition("=")
        if not takes_options or key not in _OPTIONS or not sep:
            raise fail(f"unknown option {extra!r}")
        try:
            options[key] = int(raw)
        except ValueError:
            raise fail(f"option {key} must be an integer") from None
        if options[key] < (1 if key == "uncond" else 0):
            raise fail(f"option {key} must be >= {1 if key == 'uncond' else 0}")
    return CacheSpec(cache, float(value), tuple(sorted(options.items())))
