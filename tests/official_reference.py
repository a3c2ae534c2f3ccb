"""The official MPDiT, written again straight from the specification (mpdit-reference.md sections 2, 3 and 5).

The official code cannot run here (it imports timm, which needs torchvision), so this file stands in for it: the
official state-dict layout and forward pass, written independently of the package with different primitives (a fused
qkv Linear and explicit softmax attention, `F.pixel_shuffle`, an einsum unpatchify, numpy MAE position tables, a
zero-filled spectrum). The package must reproduce it to float32 rounding after conversion.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def mae_2d_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's table: the first half of the channels from the column coordinate (`meshgrid(w, h)`)."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)

    def one_axis(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_axis(embed_dim // 2, grid[0]), one_axis(embed_dim // 2, grid[1])], axis=1)


class PatchEmbed(nn.Module):
    def __init__(self, patch, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, mods):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class SpectralConv1d(nn.Module):
    def __init__(self, width, modes):
        super().__init__()
        self.modes = modes
        self.weights_real = nn.Parameter(torch.randn(width, width, modes))
        self.weights_imag = nn.Parameter(torch.randn(width, width, modes))

    def forward(self, x):
        b, _, g = x.shape
        x_ft = torch.fft.rfft(x)
        w = torch.complex(self.weights_real, self.weights_imag)
        out_ft = torch.zeros(b, w.shape[1], g // 2 + 1, dtype=x_ft.dtype)
        out_ft[:, :, : self.modes] = torch.einsum("bix,iox->box", x_ft[:, :, : self.modes], w)
        return torch.fft.irfft(out_ft, n=g)


class MixedFNO(nn.Module):
    def __init__(self, dim, width=32, modes=16, grid=32):
        super().__init__()
        self.grid = grid
        self.fc0 = nn.Linear(1, width)
        for i in range(3):
            setattr(self, f"conv{i}", SpectralConv1d(width, modes))
            setattr(self, f"w{i}", nn.Conv1d(width, width, 1))
        self.fc1 = nn.Linear(width, dim)

    def forward(self, t):
        x = torch.linspace(-1, 1, self.grid, dtype=t.dtype)[None] + t[:, None]
        x = self.fc0(x[..., None]).permute(0, 2, 1)
        for i in range(3):
            x = getattr(self, f"conv{i}")(x) + getattr(self, f"w{i}")(x)
            if i < 2:
                x = F.gelu(x)
        return self.fc1(x.mean(-1))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim, freq=256):
        super().__init__()
        self.freq = freq
        self.mlp = nn.Sequential(nn.Linear(freq, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        half = self.freq // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, dim, tokens):
        super().__init__()
        self.tokens = tokens
        self.embedding_table = nn.Embedding(num_classes + 1, dim * tokens)

    def forward(self, y):
        return self.embedding_table(y).reshape(y.shape[0], self.tokens, -1)


class Upsampler(nn.Module):
    def __init__(self, dim, factor, num_tokens):
        super().__init__()
        self.factor, self.num_tokens = factor, num_tokens
        self.proj = nn.Linear(dim, dim * factor * factor)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.refine = nn.Linear(dim, dim)

    def forward(self, x):
        cls, x = x[:, : self.num_tokens], x[:, self.num_tokens :]
        b, n, _ = x.shape
        h = int(math.isqrt(n))
        x = self.proj(x).transpose(1, 2).reshape(b, -1, h, h)
        x = F.pixel_shuffle(x, self.factor).flatten(2).transpose(1, 2)
        x = F.gelu(x, approximate="tanh")
        return self.refine(self.norm(torch.cat([cls, x], dim=1)))


class FinalLayer(nn.Module):
    def __init__(self, dim, out):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, 4 * out)

    def forward(self, x, shift, scale):
        return self.linear(modulate(self.norm(x), shift, scale))


class OfficialMPDiT(nn.Module):
    """Both official families in the official key layout: `levels=2` is `MPDiT`, `levels=3` is `MPDiTv2`."""

    def __init__(
        self,
        levels=2,
        input_size=32,
        in_channels=4,
        hidden_size=64,
        depths=(2, 1),
        num_heads=4,
        mlp_ratio=4.0,
        num_classes=10,
        class_tokens=4,
        time_embed="fno",
        skip=True,
        joint=False,
        fno=(32, 16, 32),
    ):
        super().__init__()
        self.levels, self.m, self.c_in = levels, class_tokens, in_channels
        self.c_out = in_channels * (2 if joint else 1)
        d = hidden_size
        patches = [8, 4, 2] if levels == 3 else [4, 2]
        self.patches = patches
        self.x_embedder = PatchEmbed(patches[0], in_channels, d)
        self.t_embedder = MixedFNO(d, *fno) if time_embed == "fno" else TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(num_classes, d, class_tokens)
        self.time_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.downsample_blocks = nn.ModuleList([Block(d, num_heads, mlp_ratio) for _ in range(depths[0])])
        names = ["", "_lvl1", "_lvl2"] if levels == 3 else ["", ""]
        self.skip = skip
        for level in range(1, levels):
            sfx = names[level]
            setattr(self, f"upsampler{sfx}", Upsampler(d, 2, class_tokens))
            setattr(
                self,
                f"upsample_blocks{sfx}",
                nn.ModuleList([Block(d, num_heads, mlp_ratio) for _ in range(depths[level])]),
            )
            if skip:
                emb = f"x_embedder{sfx}" if levels == 3 else "x_embedder_skip"
                setattr(self, emb, PatchEmbed(patches[level], in_channels, d))
                setattr(self, f"linear_skip{sfx}", nn.Linear(d, d))
        pos_names = (
            ["pos_embed", "pos_embed_lvl1", "pos_embed_lvl2"]
            if levels == 3
            else ["pos_embed_downsampled", "pos_embed"]
        )
        for name, p in zip(pos_names, patches):
            table = torch.from_numpy(mae_2d_sincos(d, input_size // p)).float().unsqueeze(0)
            setattr(self, name, nn.Parameter(table, requires_grad=False))
        self.pos_names = pos_names
        self.final_layer = FinalLayer(d, self.c_out)

    def forward(self, x, t, y):
        x_in = x
        x = self.x_embedder(x) + getattr(self, self.pos_names[0])
        t = self.t_embedder(t)
        x = torch.cat([self.y_embedder(y), x], dim=1)
        mods = self.time_modulation(t).chunk(6, dim=1)
        for blk in self.downsample_blocks:
            x = blk(x, mods)
        names = ["", "_lvl1", "_lvl2"] if self.levels == 3 else ["", ""]
        for level in range(1, self.levels):
            sfx = names[level]
            x = getattr(self, f"upsampler{sfx}")(x)
            cls, spatial = x[:, : self.m], x[:, self.m :]
            if self.skip:
                emb = f"x_embedder{sfx}" if self.levels == 3 else "x_embedder_skip"
                spatial = spatial + getattr(self, f"linear_skip{sfx}")(getattr(self, emb)(x_in))
            spatial = spatial + getattr(self, self.pos_names[level])
            x = torch.cat([cls, spatial], dim=1)
            for blk in getattr(self, f"upsample_blocks{sfx}"):
                x = blk(x, mods)
        x = self.final_layer(x[:, self.m :], mods[3], mods[4])
        n, hw, _ = x.shape
        h = int(math.isqrt(hw))
        x = x.reshape(n, h, h, 2, 2, self.c_out)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, self.c_out, h * 2, h * 2)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fills every trainable tensor with random values, so that no zero-initialised path hides a mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 / math.sqrt(max(p.shape[-1], 1))) + 0.01)
    return model
