"""Which of diffusers' caches MPDiT runs, how, and why the others are refused.

diffusers' block caches assume one chain of blocks of constant shape. MPDiT's upsampler changes the token count
between levels, so a cache that spans the chain either fails (FirstBlockCache) or slices a residual across the level
boundary and runs silently wrong (MagCache). FirstBlockCache is therefore applied per level; the caches that work on
single attention layers (TaylorSeer, Pyramid Attention Broadcast) run as they are; the rest are refused at
`enable_cache`.
"""

from __future__ import annotations

from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    SeaCacheConfig,
    TextKVCacheConfig,
    apply_first_block_cache,
)
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from torch import nn

from .level_cache import LEVEL_CACHE_HOOK, LevelCacheConfig, apply_level_cache

REFUSED_CACHES: dict[type, str] = {
    MagCacheConfig: (
        "MagCache reuses one residual across all blocks as a single chain of constant shape, and MPDiT's upsampler "
        "changes the token count between levels (it would run silently wrong); use FirstBlockCacheConfig, applied per "
        "level, or LevelCacheConfig"
    ),
    FasterCacheConfig: (
        "FasterCache splits every call as one [uncond, cond] batch, while MPDiTPipeline batches [cond, uncond] and "
        "runs the conditional half alone outside the guidance interval, and its attention reuse matches no MPDiT "
        "layer; LevelCacheConfig(uncond_every=...) reuses the unconditional branch instead"
    ),
    SeaCacheConfig: (
        "SeaCache replaces the whole block stack with one residual, across MPDiT's upsampler, and reads video latents; "
        "use LevelCacheConfig or FirstBlockCacheConfig"
    ),
    TextKVCacheConfig: "it caches text-encoder keys and values, and MPDiT has no text encoder",
}


class _LevelBlocks(nn.Module):
    # FirstBlockCache hooks the blocks of every `transformer_blocks` list of the module it is given: handing it one
    # level's blocks at a time gives each level its own head, tail and state.
    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.transformer_blocks = blocks


def register_block_metadata(block_class: type) -> None:
    """Registers MPDiT's block with diffusers' `TransformerBlockRegistry`: it takes `hidden_states` first and returns
    them alone (no encoder states), which FirstBlockCache's hooks read.

    Args:
        block_class (`type`): The block class.
    """
    metadata = TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None)
    metadata._cls = block_class
    # The entry `TransformerBlockRegistry.register` writes, without its first step, which imports every diffusers
    # transformer (about a second at each start).
    TransformerBlockRegistry._registry[block_class] = metadata


def apply_mpdit_cache(model: nn.Module, config: object) -> bool:
    """Applies the caches MPDiT handles itself; refuses the ones it cannot run. Returns False for a cache that
    diffusers' own `enable_cache` applies unchanged (TaylorSeer, Pyramid Attention Broadcast).

    Args:
        model (`MPDiTTransformer2DModel`): The model.
        config: A diffusers cache config or a [`LevelCacheConfig`].

    Raises:
        ValueError: in one line naming the config, for a cache that cannot run on MPDiT.
    """
    for refused, why in REFUSED_CACHES.items():
        if isinstance(config, refused):
            raise ValueError(f"{type(config).__name__} is not supported by {type(model).__name__}: {why}.")
    if isinstance(config, LevelCacheConfig):
        apply_level_cache(model, config)
        return True
    if isinstance(config, FirstBlockCacheConfig):
        # A level needs a head and a tail block; a one-block level has nothing to skip and runs uncached.
        levels = [blocks for blocks in model._level_blocks() if len(blocks) >= 2]
        if not levels:
            raise ValueError(
                f"FirstBlockCacheConfig is not supported by this {type(model).__name__}: it skips the blocks after a "
                f"level's first, and every level has one block (depths {tuple(model.config.depths)})."
            )
        for blocks in levels:
            apply_first_block_cache(_LevelBlocks(blocks), config)
        return True
    return False


def remove_mpdit_cache(model: nn.Module, config: object) -> bool:
    """Removes the level cache's hooks; returns False for a config whose hooks diffusers' `disable_cache` removes."""
    if isinstance(config, LevelCacheConfig):
        for level in model.levels:
            registry = getattr(level, "_diffusers_hook", None)
            if registry is not None:
                registry.remove_hook(LEVEL_CACHE_HOOK, recurse=False)
        return True
    return False
