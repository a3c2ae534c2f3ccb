"""Convert official MPDiT checkpoints (GitHub quandao10/MPDiT) to diffusers folders, and back.

    mpdit convert --checkpoint official.pt --output DIR [--weights ema|model] [--num-heads N]
                  [--vae stabilityai/sd-vae-ft-ema]

The weight layout itself (key mapping, config from shapes) is `models.official_layout`, which
`MPDiTTransformer2DModel.from_single_file` also uses. Without `--vae` the output is a transformer folder; with it, a
complete `MPDiTPipeline` folder (transformer, the VAE with the official latent statistics in its config, the Euler
scheduler, and the ImageNet names for 1000 classes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from .atomic import save_pretrained_atomically
from .data import imagenet1k_id2label
from .models.official_layout import (
    WEIGHTS_CHOICES,
    ConversionError,
    UnreadableCheckpointError,
    convert_official_state_dict,
    diffusers_to_official,
    infer_config,
    strip_prefixes,
)
from .models.transformer_mpdit import MPDiTTransformer2DModel
from .pipelines import MPDiTPipeline, default_scheduler

__all__ = [
    "OFFICIAL_LATENTS_MEAN",
    "OFFICIAL_LATENTS_STD",
    "WEIGHTS_CHOICES",
    "ConversionError",
    "UnreadableCheckpointError",
    "assemble_pipeline",
    "convert_checkpoint",
    "diffusers_to_official",
    "infer_config",
    "official_to_diffusers",
    "strip_prefixes",
]

# The official code normalises SD-VAE (ft-EMA) latents per channel with these ImageNet-256 statistics, unscaled.
OFFICIAL_LATENTS_MEAN = (5.81, 3.25, 0.12, -2.15)
OFFICIAL_LATENTS_STD = (4.17, 4.62, 3.71, 3.28)


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
    return config, convert_official_state_dict(state_dict, config, MPDiTTransformer2DModel)


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
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"`checkpoint` {str(checkpoint)!r} is not a file.")
    overrides = {} if num_attention_heads is None else {"num_attention_heads": num_attention_heads}
    model = MPDiTTransformer2DModel.from_single_file(checkpoint, weights=weights, **overrides)
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
