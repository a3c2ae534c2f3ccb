"""MPDiT: a multi-patch, global-to-local diffusion transformer (Dao and Metaxas, CVPR 2026).

The data path, front to back: patch-embed the input at the coarsest patch size and prepend class tokens; run the
global level's blocks; for each finer level, upsample the tokens, add a skip embedding of the input at that level's
patch size, and run that level's blocks; then the final layer and unpatchify. All blocks and the final layer share one
adaLN modulation computed from the FNO time embedding.

This module path is recorded in every saved pipeline's `model_index.json`: never move the class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks import HookRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import apply_lora_scale
from diffusers.utils.torch_utils import maybe_allow_in_graph
from torch import nn

from .attention_mpdit import MPDiTAttention
from .cache_support import apply_mpdit_cache, register_block_metadata, remove_mpdit_cache
from .embeddings import (
    ClassTokenEmbedding,
    FNOTimestepEmbedding,
    MLPTimestepEmbedding,
    get_2d_sincos_pos_embed_grid,
)
from .loading import check_local_folder, raise_if_unreadable_weights
from .presets import get_preset
from .remote_code import write_entry_point
from .single_file import FromOfficialCheckpointMixin

TIME_EMBEDDING_TYPES = ("fno", "mlp")
MODULATION_TYPES = ("shared", "per_block")


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


def _modulate(hidden_states: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return hidden_states * (1 + scale) + shift


def _own_modulation(dim: int, chunks: int) -> nn.Sequential:
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))


@maybe_allow_in_graph
class MPDiTBlock(nn.Module):
    """A transformer block whose shift, scale and gate come from the shared modulation: it owns no modulation weights.

    Args:
        dim (`int`): Token width.
        num_attention_heads (`int`): Attention heads.
        mlp_ratio (`float`, defaults to 4.0): Hidden width of the MLP relative to `dim`.
        own_modulation (`bool`, defaults to `False`): Give the block DiT's adaLN of its own instead (the per-block
            ablation of the shared modulation).
    """

    def __init__(self, dim: int, num_attention_heads: int, mlp_ratio: float = 4.0, own_modulation: bool = False):
        super().__init__()
        self.norm1 = _layer_norm(dim)
        self.attn = MPDiTAttention(dim, num_attention_heads)
        self.norm2 = _layer_norm(dim)
        self.ff = FeedForward(dim, inner_dim=int(dim * mlp_ratio), activation_fn="gelu-approximate")
        self.modulation = _own_modulation(dim, 6) if own_modulation else None

    def forward(self, hidden_states: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """`conditioning`: the shared modulation `(B, 6, 1, D)`, or the time embedding `(B, D)` for a block that owns
        its modulation."""
        if self.modulation is not None:
            conditioning = self.modulation(conditioning).unflatten(-1, (6, 1, hidden_states.shape[-1]))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = conditioning.unbind(1)
        hidden_states = hidden_states + gate_msa * self.attn(
            _modulate(self.norm1(hidden_states), shift_msa, scale_msa)
        )
        return hidden_states + gate_mlp * self.ff(_modulate(self.norm2(hidden_states), shift_mlp, scale_mlp))


class MPDiTLevel(nn.Module):
    """One level of the hierarchy: its blocks, run in order on one token grid.

    A level owns no weights. Its blocks stay in the model's flat `transformer_blocks` list (the official layout, and
    what offloading and `device_map` see) and are passed in; the level is the module a cache hooks to reuse a whole
    level's work across steps.

    Args:
        index (`int`): The level's place in the hierarchy, 0 being the coarsest (global) level.
    """

    def __init__(self, index: int):
        super().__init__()
        self.index = index
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, conditioning: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        for block in blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, conditioning)
            else:
                hidden_states = block(hidden_states, conditioning)
        return hidden_states


class MPDiTUpsampler(nn.Module):
    """Moves the tokens to a grid `factor` times finer per side.

    Each image token is projected to `factor**2` tokens placed by a pixel shuffle (channels read as
    (channel, row offset, column offset)), followed by a tanh-GELU; then all tokens, class tokens included, go through
    a LayerNorm and a refine Linear.

    Args:
        dim (`int`): Token width.
        factor (`int`): Upsampling factor per side.
    """

    def __init__(self, dim: int, factor: int):
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(dim, dim * factor * factor)
        self.norm = _layer_norm(dim)
        self.refine = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, num_prefix_tokens: int, height: int, width: int) -> torch.Tensor:
        prefix, spatial = hidden_states[:, :num_prefix_tokens], hidden_states[:, num_prefix_tokens:]
        spatial = shuffle_tokens(self.proj(spatial), height, width, self.factor)
        spatial = F.gelu(spatial, approximate="tanh")
        return self.refine(self.norm(torch.cat([prefix, spatial], dim=1)))


class MPDiTSkipEmbedding(nn.Module):
    """Embeds the original input at a finer level's patch size, to be added to the upsampled tokens.

    Args:
        in_channels (`int`): Input channels.
        dim (`int`): Token width.
        patch_size (`int`): The level's patch size.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_embed = _patch_embed(in_channels, dim, patch_size)
        self.proj = nn.Linear(dim, dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.proj(self.patch_embed(sample))


class MPDiTFinalLayer(nn.Module):
    """LayerNorm, modulation by the shared MLP shift and scale (no adaLN of its own), and a Linear to patch pixels.

    Args:
        dim (`int`): Token width.
        patch_size (`int`): The finest patch size.
        out_channels (`int`): Output channels.
        own_modulation (`bool`, defaults to `False`): A shift and scale of its own from the time embedding, as DiT's
            final layer has (the per-block ablation).
    """

    def __init__(self, dim: int, patch_size: int, out_channels: int, own_modulation: bool = False):
        super().__init__()
        self.norm = _layer_norm(dim)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.modulation = _own_modulation(dim, 2) if own_modulation else None

    def forward(self, hidden_states: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """`conditioning`: the shared modulation `(B, 6, 1, D)`, or the time embedding `(B, D)`."""
        if self.modulation is not None:
            shift, scale = self.modulation(conditioning).unflatten(-1, (2, 1, hidden_states.shape[-1])).unbind(1)
        else:
            shift, scale = conditioning[:, 3], conditioning[:, 4]
        return self.linear(_modulate(self.norm(hidden_states), shift, scale))


def shuffle_tokens(tokens: torch.Tensor, height: int, width: int, factor: int) -> torch.Tensor:
    """Pixel shuffle on a token grid: `(B, h*w, D*f*f)` -> `(B, (h*f)*(w*f), D)`, row-major on both sides.

    Channel `(c, i, j)` of token `(y, x)` (channels read as `(D, f, f)`) becomes channel `c` of token
    `(y*f + i, x*f + j)`, as `torch.nn.functional.pixel_shuffle` does on a feature map.
    """
    batch_size = tokens.shape[0]
    tokens = tokens.unflatten(-1, (-1, factor, factor)).unflatten(1, (height, width))  # (B, h, w, D, i, j)
    return tokens.permute(0, 1, 4, 2, 5, 3).reshape(batch_size, height * factor * width * factor, -1)


def unpatchify(tokens: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """`(B, h*w, p*p*C)` -> `(B, C, h*p, w*p)`: channel `(p', q', c)` of token `(y, x)` is pixel `(c, y*p + p', x*p + q')`."""
    batch_size = tokens.shape[0]
    tokens = tokens.reshape(batch_size, height, width, patch_size, patch_size, -1)
    return tokens.permute(0, 5, 1, 3, 2, 4).reshape(batch_size, -1, height * patch_size, width * patch_size)


def _patch_embed(in_channels: int, dim: int, patch_size: int) -> PatchEmbed:
    # Positions are added by the model for the actual grid, so the embedding itself carries none.
    return PatchEmbed(
        height=patch_size,
        width=patch_size,
        patch_size=patch_size,
        in_channels=in_channels,
        embed_dim=dim,
        pos_embed_type=None,
    )


class MPDiTTransformer2DModel(
    ModelMixin, AttentionMixin, CacheMixin, ConfigMixin, PeftAdapterMixin, FromOfficialCheckpointMixin
):
    """MPDiT, a class-conditional flow-matching transformer that runs on a hierarchy of patch sizes.

    The hierarchy is a list of levels, coarse to fine: level `i` runs `depths[i]` blocks on a grid of
    `patch_sizes[i]`-pixel patches. The official two-level models use `patch_sizes=(4, 2)`, the three-level ones
    `(8, 4, 2)`; a single level is an isotropic DiT/SiT with MPDiT's embeddings.

    Args:
        sample_size (`int`, defaults to 32): Training resolution of the input (latent) grid; also the pipeline default.
            Any height and width divisible by `patch_sizes[0]` work.
        in_channels (`int`, defaults to 4): Input channels.
        out_channels (`int`, *optional*): Output channels; defaults to `in_channels`. Twice `in_channels` gives the
            official "joint" variant.
        patch_sizes (`tuple[int, ...]`, defaults to `(4, 2)`): Patch size of each level, coarse to fine; each must be a
            multiple of the next.
        depths (`tuple[int, ...]`, defaults to `(22, 6)`): Blocks per level.
        num_attention_heads (`int`, defaults to 16): Attention heads.
        attention_head_dim (`int`, defaults to 72): Channels per head; the hidden size is the product of the two.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden width relative to the hidden size.
        num_classes (`int`, defaults to 1000): Number of classes; id `num_classes` is the null class. 0 makes an
            unconditional model without class tokens.
        num_class_tokens (`int`, defaults to 16): Tokens per class label.
        time_embedding_type (`str`, defaults to `"fno"`): `"fno"` (the paper's) or `"mlp"` (DiT's).
        fno_width (`int`, defaults to 32): Channels of the FNO time embedding.
        fno_modes (`int`, defaults to 16): Frequencies kept by each FNO layer.
        fno_grid_size (`int`, defaults to 32): Points of the FNO's input signal.
        skip_connections (`bool`, defaults to `True`): Add a patch embedding of the input at every finer level.
        modulation (`str`, defaults to `"shared"`): `"shared"`, the paper's one adaLN modulation for all blocks, or
            `"per_block"`, DiT's adaLN-Zero in every block and the final layer (for ablations; official checkpoints
            are shared).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["MPDiTBlock"]
    _skip_layerwise_casting_patterns = ["patch_embed", "time_embed", "class_embed", "norm"]
    _repeated_blocks = ["MPDiTBlock"]
    # The FNO's one-input lift and its FFTs lose the time signal in half precision, and quantizers cannot pack a
    # Linear(1, width): keep the time embedding float32 on load and out of the quantizers. "lift" is named as well
    # because Quanto matches leaf names only (it would still quantize the FNO's last, ordinary-sized `proj`).
    _keep_in_fp32_modules = ["time_embed", "lift"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 4,
        out_channels: int | None = None,
        patch_sizes: tuple[int, ...] = (4, 2),
        depths: tuple[int, ...] = (22, 6),
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        num_class_tokens: int = 16,
        time_embedding_type: str = "fno",
        fno_width: int = 32,
        fno_modes: int = 16,
        fno_grid_size: int = 32,
        skip_connections: bool = True,
        modulation: str = "shared",
    ):
        super().__init__()
        _validate_config(
            patch_sizes, depths, num_attention_heads * attention_head_dim, num_classes, num_class_tokens,
            time_embedding_type, modulation,
        )  # fmt: skip
        dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.gradient_checkpointing = False

        self.patch_embed = _patch_embed(in_channels, dim, patch_sizes[0])
        if time_embedding_type == "fno":
            self.time_embed = FNOTimestepEmbedding(dim, fno_width, fno_modes, fno_grid_size)
        else:
            self.time_embed = MLPTimestepEmbedding(dim)
        self.class_embed = ClassTokenEmbedding(num_classes, num_class_tokens, dim) if num_classes > 0 else None
        # The paper's "shared AdaIN": one modulation for every block of every level and for the final layer.
        per_block = modulation == "per_block"
        self.shared_modulation = None if per_block else _own_modulation(dim, 6)

        # Blocks of all levels sit in one flat list, so block-level group offloading and `device_map` see each block.
        self.transformer_blocks = nn.ModuleList(
            [MPDiTBlock(dim, num_attention_heads, mlp_ratio, per_block) for _ in range(sum(depths))]
        )
        self.levels = nn.ModuleList([MPDiTLevel(i) for i in range(len(depths))])
        self.upsamplers = nn.ModuleList(
            [MPDiTUpsampler(dim, coarse // fine) for coarse, fine in zip(patch_sizes[:-1], patch_sizes[1:])]
        )
        self.skip_embeds = nn.ModuleList(
            [MPDiTSkipEmbedding(in_channels, dim, p) for p in patch_sizes[1:]] if skip_connections else []
        )
        self.final_layer = MPDiTFinalLayer(dim, patch_sizes[-1], out_channels, per_block)

        self._pos_embed_cache: dict[tuple, torch.Tensor] = {}
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MPDiTTransformer2DModel:
        """Builds a freshly initialised model from an official configuration name.

        Args:
            name (`str`): `"MPDiT-B/4x"`, `"MPDiT-L/4x"`, `"MPDiT-XL/4x"`, `"MPDiTv2-B"`, `"MPDiTv2-L"`, `"MPDiTv2-XL"`
                or `"MPDiT-tiny"`.
            **overrides: Config values that replace the preset's (e.g. `num_classes=10`, `in_channels=1`).
        """
        return cls(**{**get_preset(name), **overrides})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, **kwargs: Any) -> Any:
        """diffusers' `from_pretrained`, with clear errors for a missing folder and an unreadable weights file.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): A saved model folder (`~` is expanded) or a Hub
                repo id such as `org/name`.
            **kwargs: As in [`ModelMixin.from_pretrained`] (`subfolder`, `dtype`, `variant`, `device_map`, ...).

        Raises:
            FileNotFoundError: for a name that can only be a local path (absolute, starting with `.` or `~`, or with
                more than one `/`) and is not an existing folder.
            UnreadableCheckpointError: (an OSError) for a weights file that is damaged or truncated, naming it.
        """
        if pretrained_model_name_or_path is not None:
            pretrained_model_name_or_path = check_local_folder(pretrained_model_name_or_path)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except Exception as error:
            raise_if_unreadable_weights(error)
            raise

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> tuple:
        # `auto_map` is for `AutoModel`, not a setting: without this, every load would warn that it is unexpected.
        return super().extract_init_dict({k: v for k, v in config_dict.items() if k != "auto_map"}, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        push_to_hub: bool = False,
        use_flashpack: bool = False,
        **kwargs: Any,
    ) -> None:
        """diffusers' `save_pretrained`, plus the entry point that `config.json`'s `auto_map` names, so that
        `AutoModel.from_pretrained(folder, trust_remote_code=True)` loads the folder without importing this package.
        The signature is diffusers' own, spelled out because `DiffusionPipeline.save_pretrained` passes `variant`
        and the like only to a method that names them.

        Args:
            save_directory, is_main_process, save_function, safe_serialization, variant, max_shard_size,
            use_flashpack: As in [`ModelMixin.save_pretrained`].
            push_to_hub (`bool`, defaults to `False`): Upload the folder afterwards, entry point included, with
                `push_to_hub`; `repo_id` (default: the folder's name), `token`, `private`, `commit_message` and
                `create_pr` go to it.
            **kwargs: For `push_to_hub`.
        """
        super().save_pretrained(
            save_directory,
            is_main_process=is_main_process,
            save_function=save_function,
            safe_serialization=safe_serialization,
            variant=variant,
            max_shard_size=max_shard_size,
            use_flashpack=use_flashpack,
        )
        # A subclass defined elsewhere (a script's __main__, say) has no module an entry point could import.
        if is_main_process and type(self).__module__.startswith("diffusers_mpdit."):
            write_entry_point(save_directory, type(self))
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.abspath(save_directory)))
            self.push_to_hub(repo_id, safe_serialization=safe_serialization, variant=variant, **kwargs)

    def initialize_weights(self) -> None:
        """The official initialisation: Xavier-uniform Linears and patch convs with zero biases, N(0, 0.02) class
        table and MLP time embedding, zero shared modulation (or per-block ones) and final Linear, standard-normal
        spectral weights."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        for block in self.transformer_blocks:
            # The official fused qkv Linear is (3D, D): draw it as one Xavier matrix, so the fan-out is 3D.
            attn = block.attn
            qkv = torch.empty(3 * attn.inner_dim, attn.inner_dim, device=attn.to_q.weight.device)
            nn.init.xavier_uniform_(qkv)
            for linear, chunk in zip((attn.to_q, attn.to_k, attn.to_v), qkv.chunk(3)):
                with torch.no_grad():
                    linear.weight.copy_(chunk)
        for embed in [self.patch_embed] + [skip.patch_embed for skip in self.skip_embeds]:
            nn.init.xavier_uniform_(embed.proj.weight.view(embed.proj.weight.shape[0], -1))
            nn.init.zeros_(embed.proj.bias)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.embedding_table.weight, std=0.02)
        if isinstance(self.time_embed, MLPTimestepEmbedding):
            nn.init.normal_(self.time_embed.timestep_embedder.linear_1.weight, std=0.02)
            nn.init.normal_(self.time_embed.timestep_embedder.linear_2.weight, std=0.02)
        else:
            for spectral in self.time_embed.spectral_convs:
                nn.init.normal_(spectral.weight_real)
                nn.init.normal_(spectral.weight_imag)
        modulations = [self.shared_modulation, self.final_layer.modulation]
        modulations += [block.modulation for block in self.transformer_blocks]
        zeroed = [m[1] for m in modulations if m is not None] + [self.final_layer.linear]
        for linear in zeroed:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def enable_cache(self, config: Any) -> None:
        """Turns on a training-free cache, diffusers' way; `MPDiTPipeline` runs every call in a cache context.

        Supported: [`LevelCacheConfig`] (MPDiT's own: reuse the global level across steps), `FirstBlockCacheConfig`
        (applied per level: a level's first block decides whether the rest of that level reruns),
        `TaylorSeerCacheConfig` and `PyramidAttentionBroadcastConfig` (per attention layer, as diffusers applies them;
        give PAB `current_timestep_callback=lambda: pipe.current_timestep`). MagCache, FasterCache, SeaCache and
        TextKVCache are refused in one line that says why.

        Args:
            config: The cache's config.

        Raises:
            ValueError: for a cache MPDiT cannot run, or when a cache is already enabled.
        """
        if self.is_cache_enabled:
            raise ValueError(
                f"A cache is already enabled ({type(self._cache_config).__name__}): call `disable_cache()` first."
            )
        if apply_mpdit_cache(self, config):
            # New block hooks stale any child-registry list an earlier `cache_context` built.
            HookRegistry.check_if_exists_or_initialize(self).invalidate_child_registries_cache()
            self._cache_config = config
        else:
            super().enable_cache(config)

    def disable_cache(self) -> None:
        """Removes the enabled cache's hooks (diffusers' `disable_cache`, plus the level cache's)."""
        if self._cache_config is not None and remove_mpdit_cache(self, self._cache_config):
            HookRegistry.check_if_exists_or_initialize(self).invalidate_child_registries_cache()
            self._cache_config = None
        else:
            super().disable_cache()

    @property
    def hidden_size(self) -> int:
        """Token width, `num_attention_heads * attention_head_dim`."""
        return self.config.num_attention_heads * self.config.attention_head_dim

    @property
    def null_class_id(self) -> int | None:
        """The class id used for unconditional predictions, or None for an unconditional model."""
        return self.config.num_classes if self.config.num_classes > 0 else None

    def _pos_embed(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Inside a compiled graph the table is traced as constant work, keeping guards free of the cache.
            return get_2d_sincos_pos_embed_grid(self.hidden_size, height, width, device).to(dtype)
        key = (height, width, device, dtype)
        if key not in self._pos_embed_cache:
            table = get_2d_sincos_pos_embed_grid(self.hidden_size, height, width)
            self._pos_embed_cache[key] = table.to(device=device, dtype=dtype)
        return self._pos_embed_cache[key]

    def _level_blocks(self) -> list[nn.ModuleList]:
        ends = list(accumulate(self.config.depths))
        return [self.transformer_blocks[end - depth : end] for end, depth in zip(ends, self.config.depths)]

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor | int | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predicts the flow velocity `noise - data`.

        Args:
            hidden_states (`torch.Tensor`): Noisy input of shape `(batch, in_channels, height, width)`; height and
                width must be multiples of `patch_sizes[0]`.
            timestep (`torch.Tensor` or `float`): Flow time t in [0, 1], 1 being pure noise; shape `(batch,)` or a
                scalar. Schedulers' timesteps must be divided by their `num_train_timesteps` first.
            class_labels (`torch.Tensor` or `int`, *optional*): Class ids in `[0, num_classes]`, shape `(batch,)` or a
                scalar; `num_classes` is the null class. None means the null class (unconditional).
            attention_kwargs (`dict`, *optional*): `{"scale": s}` multiplies every LoRA adapter's contribution by `s`
                for this call (0 gives the base model), as in diffusers' other transformers.
            return_dict (`bool`, defaults to `True`): Return a [`Transformer2DModelOutput`] instead of a tuple.

        Returns:
            [`Transformer2DModelOutput`] or `tuple`: the velocity, shape `(batch, out_channels, height, width)`.
        """
        timestep, class_labels = self._check_inputs(hidden_states, timestep, class_labels)
        sample = hidden_states
        height, width = sample.shape[-2:]
        dim = self.hidden_size

        # Embed: time -> shared modulation; coarsest patches + positions; class tokens in front.
        # The time embedding stays float32 (`_keep_in_fp32_modules`); the rest runs in the input's dtype.
        temb = self.time_embed(timestep).to(hidden_states.dtype)
        if self.shared_modulation is not None:
            conditioning = self.shared_modulation(temb).unflatten(-1, (6, 1, dim))  # (B, 6, 1, D)
        else:
            conditioning = temb  # each block and the final layer modulate themselves

        hidden_states = self.patch_embed(sample)
        grid_h, grid_w = height // self.config.patch_sizes[0], width // self.config.patch_sizes[0]
        hidden_states = hidden_states + self._pos_embed(grid_h, grid_w, hidden_states.device, hidden_states.dtype)
        num_prefix_tokens = 0
        if self.class_embed is not None:
            class_tokens = self.class_embed(class_labels)
            num_prefix_tokens = class_tokens.shape[1]
            hidden_states = torch.cat([class_tokens, hidden_states], dim=1)

        # Levels, coarse to fine; every finer level starts with the upsampler and the skip embedding.
        for level, blocks in enumerate(self._level_blocks()):
            if level > 0:
                hidden_states = self.upsamplers[level - 1](hidden_states, num_prefix_tokens, grid_h, grid_w)
                grid_h, grid_w = height // self.config.patch_sizes[level], width // self.config.patch_sizes[level]
                prefix, spatial = hidden_states[:, :num_prefix_tokens], hidden_states[:, num_prefix_tokens:]
                if len(self.skip_embeds) > 0:
                    spatial = spatial + self.skip_embeds[level - 1](sample)
                spatial = spatial + self._pos_embed(grid_h, grid_w, spatial.device, spatial.dtype)
                hidden_states = torch.cat([prefix, spatial], dim=1)
            hidden_states = self.levels[level](hidden_states, conditioning, blocks)

        # Output: final layer on image tokens, then unpatchify (token (h, w) channels read as (p, q, c)).
        hidden_states = self.final_layer(hidden_states[:, num_prefix_tokens:], conditioning)
        output = unpatchify(hidden_states, grid_h, grid_w, self.config.patch_sizes[-1])

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    def _check_inputs(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor | float, class_labels: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        config = self.config
        if hidden_states.ndim != 4 or hidden_states.shape[1] != config.in_channels:
            raise ValueError(
                f"`hidden_states` must have shape (batch, {config.in_channels}, height, width), "
                f"got {tuple(hidden_states.shape)}."
            )
        batch_size, _, height, width = hidden_states.shape
        coarsest = config.patch_sizes[0]
        if height % coarsest or width % coarsest:
            raise ValueError(
                f"`hidden_states` height and width must be multiples of the coarsest patch size {coarsest}, "
                f"got {height}x{width}."
            )

        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if not timestep.is_floating_point():
            timestep = timestep.float()
        timestep = _expand_to_batch(timestep, batch_size, "timestep")

        if config.num_classes == 0:
            if class_labels is not None:
                raise ValueError("`class_labels` must be None: this model is unconditional (num_classes=0).")
            return timestep, None
        if class_labels is None:
            class_labels = config.num_classes
        class_labels = torch.as_tensor(class_labels, device=hidden_states.device)
        if class_labels.is_floating_point() or class_labels.is_complex():
            raise ValueError(f"`class_labels` must hold integer class ids, got dtype {class_labels.dtype}.")
        class_labels = _expand_to_batch(class_labels.long(), batch_size, "class_labels")
        # Out-of-range ids would be a silent device assert on CUDA; the check costs a sync, so skip it when compiled.
        if not torch.compiler.is_compiling() and ((class_labels < 0) | (class_labels > config.num_classes)).any():
            raise ValueError(
                f"`class_labels` must be in [0, {config.num_classes}] ({config.num_classes} is the null class), "
                f"got {class_labels.tolist()}."
            )
        return timestep, class_labels


register_block_metadata(MPDiTBlock)
# `config.json` names the entry point in `auto_map`, for `AutoModel.from_pretrained(..., trust_remote_code=True)`.
MPDiTTransformer2DModel.register_for_auto_class("AutoModel")


def _expand_to_batch(values: torch.Tensor, batch_size: int, name: str) -> torch.Tensor:
    if values.ndim == 0 or (values.ndim == 1 and values.shape[0] == 1):
        return values.reshape(1).expand(batch_size)
    if values.ndim == 1 and values.shape[0] == batch_size:
        return values
    raise ValueError(
        f"`{name}` must be a scalar or have shape ({batch_size},) to match the batch, got {tuple(values.shape)}."
    )


def _validate_config(
    patch_sizes,
    depths,
    hidden_size: int,
    num_classes: int,
    num_class_tokens: int,
    time_embedding_type: str,
    modulation: str = "shared",
) -> None:
    if len(patch_sizes) == 0 or len(patch_sizes) != len(depths):
        raise ValueError(
            f"`patch_sizes` and `depths` must be non-empty and of equal length (one entry per level), "
            f"got {tuple(patch_sizes)} and {tuple(depths)}."
        )
    if any(p < 1 for p in patch_sizes) or any(c % f or c <= f for c, f in zip(patch_sizes[:-1], patch_sizes[1:])):
        raise ValueError(
            f"`patch_sizes` must be positive and each a larger multiple of the next (coarse to fine), "
            f"got {tuple(patch_sizes)}."
        )
    if any(d < 1 for d in depths):
        raise ValueError(f"`depths` must all be at least 1, got {tuple(depths)}.")
    if hidden_size % 4:
        raise ValueError(
            f"The hidden size (num_attention_heads * attention_head_dim = {hidden_size}) must be divisible by 4 "
            "for the 2-D sin-cos position table."
        )
    if modulation not in MODULATION_TYPES:
        raise ValueError(f"`modulation` must be one of {MODULATION_TYPES}, got {modulation!r}.")
    if time_embedding_type not in TIME_EMBEDDING_TYPES:
        raise ValueError(f"`time_embedding_type` must be one of {TIME_EMBEDDING_TYPES}, got {time_embedding_type!r}.")
    if num_classes < 0:
        raise ValueError(f"`num_classes` must be >= 0 (0 for an unconditional model), got {num_classes}.")
    if num_classes > 0 and num_class_tokens < 1:
        raise ValueError(f"`num_class_tokens` must be >= 1 for a class-conditional model, got {num_class_tokens}.")
