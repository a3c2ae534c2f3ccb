"""Convert official MPDiT checkpoints (GitHub quandao10/MPDiT) to diffusers format, and back.

    mpdit convert --checkpoint official.pt --output DIR [--weights ema|model] [--num-heads N]
                  [--vae stabilityai/sd-vae-ft-ema]          (or: python -m diffusers_mpdit.convert ...)

The official `.pt` holds a dict with `"model"`, `"ema"`, `"opt"` and `"args"`; sampling uses `"ema"`. The model config
(family, width, depths, classes, class tokens, time embedding, skip, "joint" outputs, latent size) is read from the
tensor shapes; heads follow the official presets (12 at width 768, 16 otherwise) unless `--num-heads` says otherwise.
Without `--vae` the output is a transformer folder; with it, a complete `MPDiTPipeline` folder (transformer, the VAE
with the official latent statistics in its config, the Euler scheduler, and the ImageNet names for 1000 classes).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from .atomic import save_pretrained_atomically
from .data import imagenet1k_id2label
from .models.embeddings import get_2d_sincos_pos_embed_grid
from .models.transformer_mpdit import MPDiTTransformer2DModel
from .pipelines import MPDiTPipeline, default_scheduler

WEIGHTS_CHOICES = ("ema", "model")

# The official code normalises SD-VAE (ft-EMA) latents per channel with these ImageNet-256 statistics, unscaled.
OFFICIAL_LATENTS_MEAN = (5.81, 3.25, 0.12, -2.15)
OFFICIAL_LATENTS_STD = (4.17, 4.62, 3.71, 3.28)

# Official names of the per-level modules, coarse to fine, by number of levels (spec section 5).
_LEVEL_NAMES = {
    2: {
        "blocks": ["downsample_blocks", "upsample_blocks"],
        "upsamplers": ["upsampler"],
        "skip_embeds": ["x_embedder_skip"],
        "skip_projs": ["linear_skip"],
        "pos_embeds": ["pos_embed_downsampled", "pos_embed"],
    },
    3: {
        "blocks": ["downsample_blocks", "upsample_blocks_lvl1", "upsample_blocks_lvl2"],
        "upsamplers": ["upsampler_lvl1", "upsampler_lvl2"],
        "skip_embeds": ["x_embedder_lvl1", "x_embedder_lvl2"],
        "skip_projs": ["linear_skip_lvl1", "linear_skip_lvl2"],
        "pos_embeds": ["pos_embed", "pos_embed_lvl1", "pos_embed_lvl2"],
    },
}

# Inside a block: official module -> ours. `attn.qkv` is split into to_q / to_k / to_v separately.
_BLOCK_MODULES = {"attn.proj": "attn.to_out.0", "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2"}

_PREFIXES_TO_STRIP = ("_orig_mod.", "module.")


class ConversionError(ValueError):
    """A checkpoint that does not have the official MPDiT layout."""


def _module_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(official module prefix, our module prefix) pairs for everything but the fused qkv and the position tables."""
    if config.get("modulation", "shared") != "shared":
        raise ConversionError("The official layout has one shared modulation; a per_block model has no official form.")
    levels = len(config["patch_sizes"])
    if levels not in _LEVEL_NAMES:
        raise ConversionError(f"The official layout has 2 or 3 levels; this config has {levels} (`patch_sizes`).")
    names = _LEVEL_NAMES[levels]
    pairs = [
        ("x_embedder.proj", "patch_embed.proj"),
        ("y_embedder.embedding_table", "class_embed.embedding_table"),
        ("time_modulation.1", "shared_modulation.1"),
        ("final_layer.linear", "final_layer.linear"),
    ]
    if config["time_embedding_type"] == "fno":
        pairs += [("t_embedder.fc0", "time_embed.lift"), ("t_embedder.fc1", "time_embed.proj")]
        for i in range(3):
            pairs += [
                (f"t_embedder.conv{i}.weights_real", f"time_embed.spectral_convs.{i}.weight_real"),
                (f"t_embedder.conv{i}.weights_imag", f"time_embed.spectral_convs.{i}.weight_imag"),
                (f"t_embedder.w{i}", f"time_embed.pointwise_convs.{i}"),
            ]
    else:
        pairs += [
            ("t_embedder.mlp.0", "time_embed.timestep_embedder.linear_1"),
            ("t_embedder.mlp.2", "time_embed.timestep_embedder.linear_2"),
        ]
    start = 0
    for level, depth in enumerate(config["depths"]):
        for i in range(depth):
            for official, ours in _BLOCK_MODULES.items():
                pairs.append((f"{names['blocks'][level]}.{i}.{official}", f"transformer_blocks.{start + i}.{ours}"))
        start += depth
        if level > 0:
            pairs.append((names["upsamplers"][level - 1] + ".proj", f"upsamplers.{level - 1}.proj"))
            pairs.append((names["upsamplers"][level - 1] + ".refine", f"upsamplers.{level - 1}.refine"))
            if config["skip_connections"]:
                pairs.append((names["skip_embeds"][level - 1] + ".proj", f"skip_embeds.{level - 1}.patch_embed.proj"))
                pairs.append((names["skip_projs"][level - 1], f"skip_embeds.{level - 1}.proj"))
    return pairs


def _qkv_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(official `...attn.qkv`, our `...attn`) prefixes, one per block."""
    names = _LEVEL_NAMES[len(config["patch_sizes"])]["blocks"]
    pairs, start = [], 0
    for level, depth in enumerate(config["depths"]):
        pairs += [(f"{names[level]}.{i}.attn.qkv", f"transformer_blocks.{start + i}.attn") for i in range(depth)]
        start += depth
    return pairs


def _official_pos_tables(config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    names = _LEVEL_NAMES[len(config["patch_sizes"])]["pos_embeds"]
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    tables = {}
    for name, patch in zip(names, config["patch_sizes"]):
        grid = config["sample_size"] // patch
        tables[name] = get_2d_sincos_pos_embed_grid(dim, grid, grid).float().unsqueeze(0)
    return tables


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removes the `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes from every key.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): A state dict.
    """
    pattern = re.compile("|".join(re.escape(p) for p in _PREFIXES_TO_STRIP))
    return {pattern.sub("", key): value for key, value in state_dict.items()}


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"Not an official MPDiT state dict: missing key {key!r}.")
    return state_dict[key]


def infer_config(state_dict: Mapping[str, torch.Tensor], num_attention_heads: int | None = None) -> dict[str, Any]:
    """Reads an `MPDiTTransformer2DModel` config from the tensor shapes of an official state dict.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): Official weights, prefixes already stripped.
        num_attention_heads (`int`, *optional*): Heads; by default 12 at width 768 and 16 otherwise (official presets).

    Returns:
        `dict`: keyword arguments for `MPDiTTransformer2DModel`.
    """
    x_embed = _require(state_dict, "x_embedder.proj.weight")
    dim, in_channels, patch = x_embed.shape[0], x_embed.shape[1], x_embed.shape[2]
    if "upsampler_lvl1.proj.weight" in state_dict:
        levels = 3
    elif "upsampler.proj.weight" in state_dict:
        levels = 2
    else:
        raise ConversionError(
            "Not an official MPDiT state dict: found neither `upsampler.proj.weight` (MPDiT) nor "
            "`upsampler_lvl1.proj.weight` (MPDiTv2)."
        )
    names = _LEVEL_NAMES[levels]
    patch_sizes = [patch]
    for upsampler in names["upsamplers"]:
        factor = math.isqrt(_require(state_dict, f"{upsampler}.proj.weight").shape[0] // dim)
        patch_sizes.append(patch_sizes[-1] // factor)
    depths = []
    for blocks in names["blocks"]:
        indices = {
            int(m.group(1)) for k in state_dict if (m := re.fullmatch(rf"{blocks}\.(\d+)\.attn\.qkv\.weight", k))
        }
        if not indices:
            raise ConversionError(f"Not an official MPDiT state dict: no blocks under `{blocks}`.")
        depths.append(max(indices) + 1)

    heads = num_attention_heads or (12 if dim == 768 else 16)
    if dim % heads:
        raise ConversionError(f"`num_heads`={heads} does not divide the width {dim}; pass --num-heads.")
    table = _require(state_dict, "y_embedder.embedding_table.weight")
    if "t_embedder.fc0.weight" in state_dict:
        time_embedding = {
            "time_embedding_type": "fno",
            "fno_width": state_dict["t_embedder.fc0.weight"].shape[0],
            "fno_modes": _require(state_dict, "t_embedder.conv0.weights_real").shape[2],
        }
    elif "t_embedder.mlp.0.weight" in state_dict:
        time_embedding = {"time_embedding_type": "mlp"}
    else:
        raise ConversionError("Not an official MPDiT state dict: no `t_embedder.fc0` (FNO) or `t_embedder.mlp` (MLP).")
    finest_pos = _require(state_dict, names["pos_embeds"][-1])
    final = _require(state_dict, "final_layer.linear.weight")
    return {
        "sample_size": patch_sizes[-1] * math.isqrt(finest_pos.shape[-2]),
        "in_channels": in_channels,
        "out_channels": final.shape[0] // patch_sizes[-1] ** 2,
        "patch_sizes": patch_sizes,
        "depths": depths,
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "mlp_ratio": _require(state_dict, "downsample_blocks.0.mlp.fc1.weight").shape[0] / dim,
        "num_classes": table.shape[0] - 1,
        "num_class_tokens": table.shape[1] // dim,
        "skip_connections": f"{names['skip_projs'][0]}.weight" in state_dict,
        **time_embedding,
    }


def _official_keys(config: Mapping[str, Any]) -> set[str]:
    with torch.device("meta"):
        model = MPDiTTransformer2DModel(**config)
    return set(diffusers_to_official(model.state_dict(), config, with_pos_embeds=False)) | set(
        _LEVEL_NAMES[len(config["patch_sizes"])]["pos_embeds"]
    )


def official_to_diffusers(
    state_dict: Mapping[str, torch.Tensor], num_attention_heads: int | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Converts an official MPDiT/MPDiTv2 state dict to an `MPDiTTransformer2DModel` config and state dict.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): Official weights (`"ema"` or `"model"` entry of the checkpoint).
        num_attention_heads (`int`, *optional*): Overrides the official head count.

    Raises:
        ConversionError: naming every missing and unexpected key, or a position table that differs from the standard
            sin-cos table.
    """
    state_dict = strip_prefixes(state_dict)
    config = infer_config(state_dict, num_attention_heads)
    expected = _official_keys(config)
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise ConversionError(
            "The checkpoint does not match the official MPDiT layout inferred from its shapes "
            f"({len(config['patch_sizes'])} levels, depths {config['depths']}).\n"
            f"  missing keys ({len(missing)}): {missing}\n  unexpected keys ({len(unexpected)}): {unexpected}"
        )
    for name, table in _official_pos_tables(config).items():
        stored = state_dict[name].float().reshape(table.shape)
        if not torch.allclose(stored, table, atol=1e-5):
            raise ConversionError(
                f"`{name}` is not the standard 2-D sin-cos table for a {config['sample_size']}-pixel input; "
                "MPDiT computes its position tables and cannot carry custom ones."
            )

    converted = {}
    for official, ours in _module_map(config):
        for key in [k for k in state_dict if k == official or k.startswith(official + ".")]:
            converted[ours + key[len(official) :]] = state_dict[key]
    for official, ours in _qkv_map(config):
        for suffix in ("weight", "bias"):
            for name, chunk in zip(("to_q", "to_k", "to_v"), state_dict[f"{official}.{suffix}"].chunk(3, dim=0)):
                converted[f"{ours}.{name}.{suffix}"] = chunk.clone()
    return config, converted


def diffusers_to_official(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], with_pos_embeds: bool = True
) -> dict[str, torch.Tensor]:
    """Converts an `MPDiTTransformer2DModel` state dict back to the official layout (for the official sampler).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): Our weights.
        config (`Mapping[str, Any]`): The model config; needs 2 or 3 levels.
        with_pos_embeds (`bool`, defaults to `True`): Add the fixed position tables the official code stores.
    """
    official = {}
    for theirs, ours in _module_map(config):
        for key in [k for k in state_dict if k == ours or k.startswith(ours + ".")]:
            official[theirs + key[len(ours) :]] = state_dict[key]
    for theirs, ours in _qkv_map(config):
        for suffix in ("weight", "bias"):
            official[f"{theirs}.{suffix}"] = torch.cat(
                [state_dict[f"{ours}.{n}.{suffix}"] for n in ("to_q", "to_k", "to_v")]
            )
    if with_pos_embeds:
        official.update(_official_pos_tables(config))
    return official


def load_official_state_dict(checkpoint: str | os.PathLike, weights: str = "ema") -> dict[str, torch.Tensor]:
    """Loads the `weights` entry of an official `.pt` checkpoint safely (`weights_only=True`).

    A bare state dict (a `.pt` holding only tensors, or a `.safetensors` file) is accepted too and returned as it is:
    it holds one set of weights, so `weights` has nothing to choose from.

    Args:
        checkpoint (`str` or `os.PathLike`): Path of the `.pt` or `.safetensors` file.
        weights (`str`, defaults to `"ema"`): `"ema"` (for sampling) or `"model"` (the raw training weights) of a full
            official checkpoint.
    """
    if weights not in WEIGHTS_CHOICES:
        raise ValueError(f"`weights` must be one of {WEIGHTS_CHOICES}, got {weights!r}.")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"`checkpoint` {str(checkpoint)!r} is not a file.")
    if str(checkpoint).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(checkpoint)
    # The official "args" entry is an argparse.Namespace: allow that one class, and nothing else, to be unpickled.
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{checkpoint} holds a {type(obj).__name__}, not a checkpoint dict.")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if weights not in obj:
        raise ConversionError(f"{checkpoint} has no {weights!r} entry; it has {sorted(map(str, obj))}.")
    return dict(obj[weights])


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    weights: str = "ema",
    num_attention_heads: int | None = None,
    overwrite: bool = False,
    vae: str | os.PathLike | AutoencoderKL | None = None,
) -> MPDiTTransformer2DModel | MPDiTPipeline:
    """Converts an official checkpoint and saves it as a diffusers folder, in safetensors.

    The folder is written under a temporary name and renamed when complete, so an interrupted run leaves nothing
    half-written at `output_dir`.

    Args:
        checkpoint (`str` or `os.PathLike`): Official `.pt` checkpoint, or a bare state dict (`.pt` or `.safetensors`).
        output_dir (`str` or `os.PathLike`): Folder to create.
        weights (`str`, defaults to `"ema"`): `"ema"` or `"model"`.
        num_attention_heads (`int`, *optional*): Overrides the official head count.
        overwrite (`bool`, defaults to `False`): Replace an existing non-empty `output_dir`.
        vae (`str`, `os.PathLike` or `AutoencoderKL`, *optional*): The SD-VAE the model was trained with (a folder,
            a Hub id such as `stabilityai/sd-vae-ft-ema`, or a loaded model). When given, a complete pipeline folder is
            written instead of a transformer folder.

    Returns:
        The converted model (in eval mode), or the assembled pipeline when `vae` is given.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"`output_dir` {str(output_dir)!r} exists and is not empty; pass overwrite=True.")
    config, state_dict = official_to_diffusers(load_official_state_dict(checkpoint, weights), num_attention_heads)
    with torch.device("meta"):
        model = MPDiTTransformer2DModel(**config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.eval()
    if vae is None:
        save_pretrained_atomically(model, output_dir)
        return model
    pipeline = assemble_pipeline(model, vae)
    save_pretrained_atomically(pipeline, output_dir)
    return pipeline


def assemble_pipeline(
    transformer: MPDiTTransformer2DModel,
    vae: str | os.PathLike | AutoencoderKL,
    latents_mean: tuple[float, ...] = OFFICIAL_LATENTS_MEAN,
    latents_std: tuple[float, ...] = OFFICIAL_LATENTS_STD,
    id2label: dict[int, str] | None = None,
) -> MPDiTPipeline:
    """Builds the complete pipeline an official checkpoint needs.

    Args:
        transformer ([`MPDiTTransformer2DModel`]): The converted model.
        vae (`str`, `os.PathLike` or `AutoencoderKL`): The VAE, or where to load it from.
        latents_mean (`tuple[float, ...]`): Per-channel latent mean written into the VAE config (official values).
        latents_std (`tuple[float, ...]`): Per-channel latent std written into the VAE config (official values).
        id2label (`dict[int, str]`, *optional*): Class names; the ImageNet-1k names for 1000-class models by default.
    """
    if not isinstance(vae, AutoencoderKL):
        vae = AutoencoderKL.from_pretrained(vae)
    if vae.config.latent_channels != transformer.config.in_channels or len(latents_mean) != len(latents_std):
        raise ValueError(
            f"`vae` has {vae.config.latent_channels} latent channels but the transformer takes "
            f"{transformer.config.in_channels}, or `latents_mean`/`latents_std` lengths differ."
        )
    # The official code applies no 0.18215 factor: (z - mean) / std is the whole normalisation.
    vae.register_to_config(latents_mean=list(latents_mean), latents_std=list(latents_std), scaling_factor=1.0)
    if id2label is None and transformer.config.num_classes == 1000:
        id2label = imagenet1k_id2label()
    return MPDiTPipeline(transformer=transformer, vae=vae.eval(), scheduler=default_scheduler(), id2label=id2label)


if __name__ == "__main__":  # `python -m diffusers_mpdit.convert` is `mpdit convert`
    from .cli import main

    sys.exit(main(["convert", *sys.argv[1:]]))
