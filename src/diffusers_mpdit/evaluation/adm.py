"""FID, sFID, Inception Score, precision and recall with the definitions of the ADM evaluator (guided-diffusion).

The evaluator is TensorFlow code; this is a PyTorch rendering of its formulas on the same Inception weights
(`inception.py`). Reference batches are ADM's `.npz` files (`arr_0` images, and optionally the precomputed `mu`,
`sigma`, `mu_s`, `sigma_s`, which are then used for FID and sFID as the evaluator does) or folders of images.

`evaluate` streams: images are read a batch at a time (`batches.py`), feature means and covariances are accumulated,
Inception Score is taken split by split, and the pool features that precision and recall need go to a file on disk
and come back in blocks. Memory stays the same whatever the number of images.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .batches import FolderImages, NpzImages, NpzWriter
from .frechet import frechet_distance

# Rows and columns of one block of pairwise distances (64 MB in float32): fixed, so that memory does not grow with
# the number of images. ADM uses 10,000 on a GPU.
BLOCK_SIZE = 4096


def inception_score(probabilities: np.ndarray, split_size: int = 5000) -> float:
    """`exp(E_x KL(p(y|x) || p(y)))`, averaged over consecutive splits of `split_size` samples, as ADM computes it.

    Args:
        probabilities (`np.ndarray`): `(N, classes)` softmax outputs.
        split_size (`int`, defaults to 5000): Samples per split (ADM's default; the last split may be smaller).
    """
    return float(np.mean(_split_scores(probabilities, split_size)))


def _split_scores(probabilities: np.ndarray, split_size: int) -> list[float]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) == 0:
        raise ValueError(f"`probabilities` must be (num_samples, classes), got shape {probabilities.shape}.")
    scores = []
    for start in range(0, len(probabilities), split_size):
        part = probabilities[start : start + split_size]
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        scores.append(float(np.exp(kl.sum(axis=1).mean())))
    return scores


class RunningMoments:
    """Mean and unbiased covariance of feature rows seen a batch at a time, in float64.

    Sums are taken around the first batch's mean, which keeps the covariance free of the cancellation that raw
    second moments suffer when the mean is large against the spread. The outer products are added in place.
    """

    def __init__(self):
        self.count, self.shift, self.total, self.outer = 0, None, None, None

    def update(self, rows: np.ndarray | torch.Tensor) -> None:
        """Adds a batch of feature rows to the running sums.

        Args:
            rows (`np.ndarray` or `torch.Tensor`): `(n, features)`.
        """
        rows = torch.as_tensor(rows).double().cpu()
        if self.shift is None:
            self.shift = rows.mean(dim=0)
            self.total = torch.zeros_like(self.shift)
            self.outer = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64)
        centred = rows - self.shift
        self.count += len(rows)
        self.total += centred.sum(dim=0)
        self.outer.addmm_(centred.T, centred)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """`(mean, covariance)` as numpy arrays."""
        if self.count < 2:
            raise ValueError(f"need at least two images for a covariance, got {self.count}")
        offset = self.total / self.count
        covariance = (self.outer - self.count * torch.outer(offset, offset)) / (self.count - 1)
        return (self.shift + offset).numpy(), covariance.numpy()


class FeatureFile:
    """Float32 feature rows appended to a file and read back in blocks.

    Args:
        folder (`str`): Where to put the file (removed with the folder).
        dim (`int`): Features per row.
    """

    def __init__(self, folder: str, dim: int):
        self.path, self.dim, self.rows = os.path.join(folder, f"features-{id(self)}.f32"), dim, 0
        self._file = open(self.path, "wb")

    def append(self, rows: np.ndarray) -> None:
        """Writes a batch of feature rows to the end of the file, as float32.

        Args:
            rows (`np.ndarray`): `(n, features)`.
        """
        self._file.write(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        """Closes the file for writing; the rows stay readable."""
        self._file.close()

    def __len__(self) -> int:
        return self.rows

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows `start` to `stop` (clipped to the file), into `out` (float32, enough rows) if given."""
        count = min(stop, self.rows) - start
        out = np.empty((count, self.dim), np.float32) if out is None else out[:count]
        with open(self.path, "rb") as f:
            f.seek(start * self.dim * 4)
            f.readinto(memoryview(out).cast("B"))
        return out


class _Blocks:
    """Blocks of rows of an array or a `FeatureFile` as float32 tensors, and one reused buffer per role, so that a
    pass over many blocks allocates the same few arrays once (repeated large allocations fragment the heap, and the
    process's memory would creep up with the number of blocks)."""

    def __init__(self, features: np.ndarray | torch.Tensor | FeatureFile, block_size: int):
        self.features = features if isinstance(features, FeatureFile) else torch.as_tensor(features).float()
        self.block_size, self.buffers = block_size, {}

    def __len__(self) -> int:
        return len(self.features)

    def starts(self) -> range:
        return range(0, len(self), self.block_size)

    def block(self, start: int, role: str) -> torch.Tensor:
        stop = start + self.block_size
        if not isinstance(self.features, FeatureFile):
            return self.features[start:stop]
        if role not in self.buffers:
            self.buffers[role] = np.empty((min(self.block_size, len(self)), self.features.dim), np.float32)
        return torch.from_numpy(self.features.read(start, stop, self.buffers[role]))


class _Scratch:
    """A reused float32 distance block and boolean mask, viewed at each block's shape."""

    def __init__(self, rows: int, columns: int):
        self.distances = torch.empty(rows * columns)
        self.mask = torch.empty(rows * columns, dtype=torch.bool)

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return pairwise_squared_distances(a, b, out=self.distances[: len(a) * len(b)].view(len(a), len(b)))

    def within(self, distances: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
        return torch.le(distances, radii, out=self.mask[: distances.numel()].view(distances.shape))


def pairwise_squared_distances(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`|a_i - b_j|^2` as ADM's distance block computes it (`|a|^2 - 2 a.b + |b|^2`, clamped at 0), in float32.

    Args:
        a (`torch.Tensor`): `(n, dim)`.
        b (`torch.Tensor`): `(m, dim)`.
        out (`torch.Tensor`, *optional*): An `(n, m)` float32 tensor to write into.
    """
    a, b = a.float(), b.float()
    # |b|^2 - 2 a.b in one addmm, then |a|^2 added in place: no block-sized temporaries.
    distances = torch.addmm(b.square().sum(1)[None], a, b.T, alpha=-2, out=out)
    return distances.add_(a.square().sum(1, keepdim=True)).clamp_min_(0)


def manifold_radii(
    features: np.ndarray | torch.Tensor | FeatureFile, k: int = 3, block_size: int = BLOCK_SIZE
) -> torch.Tensor:
    """Squared distance from each feature to its k-th nearest neighbour in the same set (ADM's `manifold_radii`).

    Blocks of `block_size` x `block_size` distances, keeping each row's k + 1 smallest as the columns go by.

    Args:
        features (`np.ndarray`, `torch.Tensor` or `FeatureFile`): `(N, dim)`, N > k.
        k (`int`, defaults to 3): Neighbourhood size; the point itself, at distance 0, is not counted.
        block_size (`int`): Rows and columns per distance block.
    """
    blocks = _Blocks(features, block_size)
    if len(blocks) <= k:
        raise ValueError(f"need more than k={k} features to estimate a manifold, got {len(blocks)}")
    scratch = _Scratch(min(block_size, len(blocks)), min(block_size, len(blocks)))
    radii = torch.empty(len(blocks))
    for start in blocks.starts():
        rows, nearest = blocks.block(start, "rows"), None
        for column in blocks.starts():
            distances = scratch.pairwise(rows, blocks.block(column, "columns"))
            smallest = torch.topk(distances, min(k + 1, distances.shape[1]), dim=1, largest=False).values
            candidates = smallest if nearest is None else torch.cat([nearest, smallest], dim=1)
            nearest = torch.topk(candidates, min(k + 1, candidates.shape[1]), dim=1, largest=False).values
        radii[start : start + len(rows)] = nearest[:, k]
    return radii


def precision_recall(
    reference: np.ndarray | torch.Tensor | FeatureFile,
    samples: np.ndarray | torch.Tensor | FeatureFile,
    k: int = 3,
    block_size: int = BLOCK_SIZE,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) on k-NN manifolds, as ADM's `compute_prec_recall`.

    Precision: the fraction of samples inside some reference point's k-NN ball; recall: the fraction of reference
    points inside some sample's ball. Balls are closed (`<=`), radii and distances squared. No more than one
    `block_size` x `block_size` block of distances is held at a time.

    Args:
        reference (`np.ndarray`, `torch.Tensor` or `FeatureFile`): Reference features `(N, dim)`.
        samples (`np.ndarray`, `torch.Tensor` or `FeatureFile`): Sample features `(M, dim)`.
        k (`int`, defaults to 3): Neighbourhood size.
        block_size (`int`): Rows and columns per distance block.
    """
    reference_radii = manifold_radii(reference, k, block_size)
    sample_radii = manifold_radii(samples, k, block_size)
    reference, samples = _Blocks(reference, block_size), _Blocks(samples, block_size)
    scratch = _Scratch(min(block_size, len(reference)), min(block_size, len(samples)))
    samples_inside = torch.zeros(len(samples), dtype=torch.bool)
    reference_inside = torch.zeros(len(reference), dtype=torch.bool)
    for start in reference.starts():
        rows = reference.block(start, "rows")
        stop = start + len(rows)
        for column in samples.starts():
            distances = scratch.pairwise(rows, samples.block(column, "columns"))
            end = column + distances.shape[1]
            reference_inside[start:stop] |= scratch.within(distances, sample_radii[None, column:end]).any(dim=1)
            samples_inside[column:end] |= scratch.within(distances, reference_radii[start:stop, None]).any(dim=0)
    return samples_inside.double().mean().item(), reference_inside.double().mean().item()


@dataclass
class StreamedActivations:
    """What one pass of the Inception network over an image set leaves: feature moments, the pool features on disk,
    and the Inception Score's per-split scores (empty without softmax weights)."""

    pool: RunningMoments
    spatial: RunningMoments
    pool_features: FeatureFile
    split_scores: list[float]

    def statistics(self) -> dict[str, np.ndarray]:
        """`mu`, `sigma`, `mu_s`, `sigma_s` in ADM's reference-batch layout."""
        mu, sigma = self.pool.statistics()
        mu_s, sigma_s = self.spatial.statistics()
        return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def stream_activations(
    extractor: Callable[[np.ndarray], dict[str, torch.Tensor]],
    images: NpzImages | FolderImages,
    folder: str,
    batch_size: int = 50,
    desc: str | None = None,
    on_batch: Callable[[np.ndarray], None] | None = None,
    split_size: int = 5000,
) -> StreamedActivations:
    """Runs `extractor` over `images` a batch at a time.

    Args:
        extractor (`Callable`): uint8 `(B, H, W, C)` -> `pool`, `spatial` and optionally `softmax` features
            (an [`InceptionV3Features`]).
        images (`NpzImages` or `FolderImages`): The images.
        folder (`str`): Where the pool features are kept for precision and recall.
        batch_size (`int`): Images per forward pass.
        desc (`str`, *optional*): A progress bar's label; None shows none.
        on_batch (`Callable`, *optional*): Called with each batch of images (e.g. to save them).
        split_size (`int`): Inception Score's split size.
    """
    pool, spatial, pool_file = RunningMoments(), RunningMoments(), None
    split_scores, split = [], []
    progress = tqdm(total=len(images), desc=desc, disable=desc is None)
    for batch in images.batches(batch_size):
        features = {name: value.double().cpu().numpy() for name, value in extractor(batch).items()}
        pool.update(features["pool"])
        spatial.update(features["spatial"])
        if pool_file is None:
            pool_file = FeatureFile(folder, features["pool"].shape[1])
        pool_file.append(features["pool"])
        if "softmax" in features:
            split.append(features["softmax"])
            while sum(len(p) for p in split) >= split_size:
                rows = np.concatenate(split)
                split_scores += _split_scores(rows[:split_size], split_size)
                split = [rows[split_size:].copy()]  # a view would keep the whole concatenation alive
        if on_batch is not None:
            on_batch(batch)
        progress.update(len(batch))
    progress.close()
    if split and sum(len(p) for p in split):
        split_scores += _split_scores(np.concatenate(split), split_size)
    pool_file.close()
    return StreamedActivations(pool, spatial, pool_file, split_scores)


def evaluate(
    extractor: Callable[[np.ndarray], dict[str, torch.Tensor]],
    samples: NpzImages | FolderImages,
    reference: NpzImages | FolderImages,
    batch_size: int = 50,
    block_size: int = BLOCK_SIZE,
    save_reference: str | None = None,
    progress: bool = False,
    workdir: str | None = None,
) -> dict:
    """ADM's metrics of `samples` against `reference`, streamed.

    FID and sFID use the reference batch's precomputed statistics when it has them (as ADM does), else the reference
    images'; precision and recall use the reference images; Inception Score is None without softmax features.

    Args:
        extractor (`Callable`): The Inception network ([`InceptionV3Features`]).
        samples (`NpzImages` or `FolderImages`): Generated images.
        reference (`NpzImages` or `FolderImages`): Real images (an ADM reference batch or a folder).
        batch_size (`int`): Images per Inception forward pass.
        block_size (`int`): Rows and columns per block of pairwise distances.
        save_reference (`str`, *optional*): Also write the reference as an ADM batch (images and statistics) here.
        progress (`bool`): Show progress bars.
        workdir (`str`, *optional*): Where the pool features wait for precision and recall (default: the system's
            temporary folder); 8 KB per image.
    """
    with tempfile.TemporaryDirectory(dir=workdir, prefix="mpdit-evaluate-") as folder:
        writer = NpzWriter(save_reference, "arr_0", reference.shape) if save_reference else None
        try:
            real = stream_activations(
                extractor, reference, folder, batch_size, "Inception (reference)" if progress else None,
                on_batch=writer.write if writer else None,
            )  # fmt: skip
        except BaseException:
            if writer:
                writer.abort()
            raise
        if writer:
            writer.close(real.statistics())
        fake = stream_activations(extractor, samples, folder, batch_size, "Inception (samples)" if progress else None)
        sample_stats = fake.statistics()
        reference_stats = reference.statistics or real.statistics()
        precision, recall = precision_recall(real.pool_features, fake.pool_features, block_size=block_size)
        return {
            "fid": frechet_distance(
                sample_stats["mu"], sample_stats["sigma"], reference_stats["mu"], reference_stats["sigma"]
            ),
            "sfid": frechet_distance(
                sample_stats["mu_s"], sample_stats["sigma_s"], reference_stats["mu_s"], reference_stats["sigma_s"]
            ),
            "inception_score": float(np.mean(fake.split_scores)) if fake.split_scores else None,
            "precision": precision,
            "recall": recall,
            "num_samples": len(fake.pool_features),
            "num_reference": len(real.pool_features),
            "reference_statistics": "precomputed" if reference.statistics else "computed",
        }
