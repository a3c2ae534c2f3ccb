"""Latent normalisation through the VAE config, shared by training (encode side) and the pipeline (decode side)."""

from __future__ import annotations

from typing import Any

import torch


def _stats(vae_config: Any, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    mean, std = getattr(vae_config, "latents_mean", None), getattr(vae_config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, -1) + (1,) * (latents.ndim - 2)
    as_tensor = lambda v: torch.tensor(v, device=latents.device, dtype=latents.dtype).view(shape)  # noqa: E731
    return as_tensor(mean), as_tensor(std)


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
    scaling = vae_config.scaling_factor
    stats = _stats(vae_config, latents)
    if stats is not None:
        mean, std = stats
        return (latents - mean) * scaling / std
    return (latents - (getattr(vae_config, "shift_factor", None) or 0.0)) * scaling


def denormalize_latents(latents: torch.Tensor, vae_config: Any | None) -> torch.Tensor:
    """Inverse of [`normalize_latents`]: the model's space back to what `vae.decode` expects.

    Args:
        latents (`torch.Tensor`): Model-space latents.
        vae_config: The VAE's `config`, or None for pixel-space models (identity).
    """
    if vae_config is None:
        return latents
    scaling = vae_config.scaling_factor
    stats = _stats(vae_config, latents)
    if stats is not None:
        mean, std = stats
        return latents * std / scaling + mean
    return latents / scaling + (getattr(vae_config, "shift_factor", None) or 0.0)
