"""Embeddings used by MPDiT: position tables, the FNO and MLP time embeddings, and class tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import (
    TimestepEmbedding,
    Timesteps,
    get_2d_sincos_pos_embed_from_grid,
)
from torch import nn


def get_2d_sincos_pos_embed_grid(embed_dim: int, height: int, width: int, device=None) -> torch.Tensor:
    """The MAE/DiT 2-D sin-cos table for a `height` x `width` token grid, rows in row-major (h, w) order.

    The first half of the channels encodes the column coordinate and the second half the row coordinate (MAE's
    `meshgrid(w, h)` order, which the official MPDiT tables reproduce). Positions are plain integer indices, so a table
    for a larger grid extends the training one instead of rescaling it.

    Args:
        embed_dim (`int`): Number of channels; must be divisible by 4.
        height (`int`): Grid rows.
        width (`int`): Grid columns.
        device (`torch.device`, *optional*): Where to build the table.

    Returns:
        `torch.Tensor`: float64 tensor of shape `(height * width, embed_dim)`.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"`embed_dim` must be divisible by 4 for a 2-D sin-cos table, got {embed_dim}.")
    grid_w = torch.arange(width, dtype=torch.float64, device=device)
    grid_h = torch.arange(height, dtype=torch.float64, device=device)
    grid = torch.stack(torch.meshgrid(grid_w, grid_h, indexing="xy"), dim=0)  # (2, h, w); grid[0] is the column
    return get_2d_sincos_pos_embed_from_grid(embed_dim, grid)


class SpectralConv1d(nn.Module):
    """Fourier layer of an FNO: keep the lowest `modes` frequencies and mix channels with complex weights.

    The complex weights are stored as two real tensors, as in the official checkpoints, so that safetensors,
    layerwise casting and optimisers never see complex parameters.

    Args:
        in_channels (`int`): Input channels.
        out_channels (`int`): Output channels.
        modes (`int`): Number of low frequencies kept.
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int):
        super().__init__()
        self.modes = modes
        self.weight_real = nn.Parameter(torch.randn(in_channels, out_channels, modes))
        self.weight_imag = nn.Parameter(torch.randn(in_channels, out_channels, modes))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype, grid_size = hidden_states.dtype, hidden_states.shape[-1]
        # FFTs in half precision are inaccurate and, on CUDA, limited to powers of two: run them in float32 at least.
        fft_dtype = torch.promote_types(dtype, torch.float32)
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            spectrum = torch.fft.rfft(hidden_states.to(fft_dtype), dim=-1)[..., : self.modes]
            weight = torch.complex(self.weight_real.to(fft_dtype), self.weight_imag.to(fft_dtype))
            spectrum = torch.einsum("bix,iox->box", spectrum, weight)
            # irfft zero-pads the truncated spectrum to grid_size // 2 + 1 frequencies.
            hidden_states = torch.fft.irfft(spectrum, n=grid_size, dim=-1)
        return hidden_states.to(dtype)


class FNOTimestepEmbedding(nn.Module):
    """The paper's Fourier-neural-operator time embedding ("MixedFNO").

    The flow time `t` becomes the 1-D signal `linspace(-1, 1, grid_size) + t`, which is lifted to `width` channels,
    passed through three Fourier layers (GELU, exact, after the first two), averaged over the grid and projected to
    the model width.

    Args:
        embed_dim (`int`): Output width (the transformer's hidden size).
        width (`int`, defaults to 32): Channels inside the operator.
        modes (`int`, defaults to 16): Frequencies kept by each Fourier layer.
        grid_size (`int`, defaults to 32): Points of the signal.
        num_layers (`int`, defaults to 3): Fourier layers.
    """

    def __init__(self, embed_dim: int, width: int = 32, modes: int = 16, grid_size: int = 32, num_layers: int = 3):
        super().__init__()
        if modes > grid_size // 2 + 1:
            raise ValueError(f"`fno_modes` must be at most grid_size // 2 + 1 = {grid_size // 2 + 1}, got {modes}.")
        self.grid_size = grid_size
        self.lift = nn.Linear(1, width)
        self.spectral_convs = nn.ModuleList([SpectralConv1d(width, width, modes) for _ in range(num_layers)])
        self.pointwise_convs = nn.ModuleList([nn.Conv1d(width, width, 1) for _ in range(num_layers)])
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(self.lift.weight.dtype, torch.float32)
        grid = torch.linspace(-1.0, 1.0, self.grid_size, device=timestep.device, dtype=dtype)
        signal = grid[None, :] + timestep.to(dtype)[:, None]  # (B, G)
        hidden_states = self.lift(signal.unsqueeze(-1).to(self.lift.weight.dtype)).transpose(1, 2)  # (B, W, G)
        last = len(self.spectral_convs) - 1
        for i, (spectral, pointwise) in enumerate(zip(self.spectral_convs, self.pointwise_convs)):
            hidden_states = spectral(hidden_states) + pointwise(hidden_states)
            if i < last:
                hidden_states = F.gelu(hidden_states)
        return self.proj(hidden_states.mean(dim=-1))


class MLPTimestepEmbedding(nn.Module):
    """DiT's time embedding: 256 sinusoidal frequencies (cos first) and a two-layer SiLU MLP.

    Args:
        embed_dim (`int`): Output width.
        frequency_embedding_size (`int`, defaults to 256): Sinusoidal channels.
    """

    def __init__(self, embed_dim: int, frequency_embedding_size: int = 256):
        super().__init__()
        # downscale_freq_shift=0 is DiT's exact frequency ladder (diffusers' DiT uses 1, which differs slightly).
        self.time_proj = Timesteps(frequency_embedding_size, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(frequency_embedding_size, embed_dim)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        projected = self.time_proj(timestep).to(self.timestep_embedder.linear_1.weight.dtype)
        return self.timestep_embedder(projected)


class ClassTokenEmbedding(nn.Module):
    """Turns each class id into `num_tokens` tokens, prepended to the image tokens.

    The table has `num_classes + 1` rows; the last row, id `num_classes`, is the null class used for classifier-free
    guidance. A row is read as `num_tokens` consecutive chunks of `embed_dim` columns. Label dropout is left to the
    training code, so the model is deterministic in train mode as well.

    Args:
        num_classes (`int`): Number of real classes.
        num_tokens (`int`): Tokens per class.
        embed_dim (`int`): Token width.
    """

    def __init__(self, num_classes: int, num_tokens: int, embed_dim: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.embedding_table = nn.Embedding(num_classes + 1, embed_dim * num_tokens)

    def forward(self, class_labels: torch.Tensor) -> torch.Tensor:
        tokens = self.embedding_table(class_labels)
        return tokens.unflatten(-1, (self.num_tokens, -1))
