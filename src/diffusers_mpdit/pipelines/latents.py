"""Latent normalisation through the VAE config, shared by training (encode side) and the pipeline (decode side)."""

from __future__ import annotations

from typing import Any

import torch


def _shift_and_scale(vae_config: Any, latents: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """(shift, scale) with model latents = (z - shift) * scale."""
    mean, std = getattr(vae_config, "latents_mean", None), getattr(vae_config, "latents_std", None)
    if mean is None or std is None:
        return getattr(vae_config, "shift_factor", None) or 0.0, vae_config.scaling_factor
    shape = (1, -1) + (1,) * (latents.ndim - 2)
    mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
    std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
    return mean, vae_config.scaling_factor / std


def normalize_latents(latents: torch.Tensor, vae_config: Any | None) -> torch.Tensor:
    """Maps VAE latents to the model's space.

    With per-channel `latents_mean` / `latents_std` in the config (the official MPDiT convention, with the SD-VAE's
    ImageNet statistics) this is `(z - mean) / std * scaling_factor`; otherwise `(z - shift_factor) * scaling_factor`.
    MPDiT's VAE configs set `scaling_factor=1.0`, as the official code does not rescale further.

    Args:
        latents (`torch.Tensor`): `(batch, channels, height, width)` latents from the VAE (or pixels).
        vae_config: The VAE's `config`, or None for pixel-space models (identity).
    """
    if vae_config is None:
        return latents
    shift, scale = _shift_and_scale(vae_config, latents)
    return (latents - shift) * scale


def denormalize_latents(latents: torch.Tensor, vae_config: Any | None) -> torch.Tensor:
    """Inverse of [`normalize_latents`]: the model's space back to what `vae.decode` expects.

    Args:
        latents (`torch.Tensor`): Model-space latents.
        vae_config: The VAE's `config`, or None for pixel-space models (identity).
    """
    if vae_config is None:
        return latents
    shift, scale = _shift_and_scale(vae_config, latents)
    return latents / scale + shift
