"""A cache of VAE posteriors: sharded safetensors with an index, read back as a dataset.

Each image is encoded once; the cache keeps the posterior mean and std so that training draws a fresh posterior
sample every step, as the official code does. The index (written last, so a cache without one is incomplete) records
the shards, labels, `id2label`, and the per-channel statistics of the posterior samples that training normalises with
and that the final pipeline's VAE config records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX_NAME = "latents_index.json"


def write_shard(
    path: str | os.PathLike, indices: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, labels: torch.Tensor
) -> None:
    """Writes one shard under a temporary name, then renames it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {"indices": indices.long(), "mean": mean.float(), "std": std.float(), "labels": labels.long()}
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


class ChannelStatistics:
    """Running sums for the per-channel mean and std of posterior samples `mean + std * eps`.

    E[z] = E[mean]; Var[z] = E[mean^2] + E[std^2] - E[z]^2 (eps has unit variance and is independent of both).
    """

    def __init__(self, channels: int):
        self.sums = torch.zeros(3, channels, dtype=torch.float64)  # sum mean, sum mean^2, sum std^2
        self.count = torch.zeros((), dtype=torch.float64)

    def update(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        dims = [d for d in range(mean.ndim) if d != 1]
        mean, std = mean.double().cpu(), std.double().cpu()
        self.sums += torch.stack([mean.sum(dims), (mean**2).sum(dims), (std**2).sum(dims)])
        self.count += mean.numel() / mean.shape[1]

    def result(self) -> tuple[list[float], list[float]]:
        mu = self.sums[0] / self.count
        var = (self.sums[1] + self.sums[2]) / self.count - mu**2
        return mu.tolist(), var.clamp_min(0).sqrt().tolist()


def write_index(
    cache_dir: str | os.PathLike,
    shards: list[str],
    num_samples: int,
    latent_shape: list[int],
    id2label: dict[int, str],
    latents_mean: list[float],
    latents_std: list[float],
    vae: str,
    resolution: int,
) -> None:
    """Writes the index atomically; only then is the cache complete."""
    index = {
        "shards": sorted(shards),
        "num_samples": num_samples,
        "latent_shape": latent_shape,
        "id2label": {str(k): v for k, v in id2label.items()},
        "latents_mean": latents_mean,
        "latents_std": latents_std,
        "vae": vae,
        "resolution": resolution,
    }
    path = Path(cache_dir) / INDEX_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, path)


class LatentCacheDataset(torch.utils.data.Dataset):
    """Reads a cache written by `examples/extract_latents.py`: item `i` is `(mean, std, label)` of image `i`.

    Args:
        cache_dir (`str` or `os.PathLike`): The cache folder.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        cache_dir = Path(cache_dir)
        index_path = cache_dir / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(
                f"`latents_dir` {str(cache_dir)!r} has no {INDEX_NAME}: not a latent cache, or an unfinished one."
            )
        self.index = json.loads(index_path.read_text())
        parts = {"indices": [], "mean": [], "std": [], "labels": []}
        for shard in self.index["shards"]:
            with safe_open(str(cache_dir / shard), framework="pt") as f:
                for key in parts:
                    parts[key].append(f.get_tensor(key))
        data = {k: torch.cat(v) for k, v in parts.items()}
        order = torch.argsort(data["indices"])
        if not torch.equal(data["indices"][order], torch.arange(self.index["num_samples"])):
            raise ValueError(f"The latent cache {str(cache_dir)!r} does not hold every index exactly once.")
        self.mean, self.std, self.labels = data["mean"][order], data["std"][order], data["labels"][order]
        self.id2label = {int(k): v for k, v in self.index["id2label"].items()}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"mean": self.mean[i], "std": self.std[i], "label": self.labels[i]}
