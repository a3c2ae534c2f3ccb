"""FID, sFID, Inception Score, precision and recall with the definitions of the ADM evaluator (guided-diffusion).

The evaluator is TensorFlow code; this is a PyTorch rendering of its formulas on the same Inception weights
(`inception.py`). Reference batches are ADM's `.npz` files (`arr_0` images, and optionally the precomputed `mu`,
`sigma`, `mu_s`, `sigma_s`, which are then used for FID and sFID as the evaluator does) or folders of images.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..atomic import atomic_path
from ..training.data import center_crop_arr
from .frechet import feature_statistics, frechet_distance
from .inception import InceptionV3Features

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
STATISTICS = ("mu", "sigma", "mu_s", "sigma_s")


def inception_score(probabilities: np.ndarray, split_size: int = 5000) -> float:
    """`exp(E_x KL(p(y|x) || p(y)))`, averaged over consecutive splits of `split_size` samples, as ADM computes it.

    Args:
        probabilities (`np.ndarray`): `(N, classes)` softmax outputs.
        split_size (`int`, defaults to 5000): Samples per split (ADM's default; the last split may be smaller).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) == 0:
        raise ValueError(f"`probabilities` must be (num_samples, classes), got shape {probabilities.shape}.")
    scores = []
    for start in range(0, len(probabilities), split_size):
        part = probabilities[start : start + split_size]
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


def pairwise_squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`|a_i - b_j|^2` as ADM's distance block computes it (`|a|^2 - 2 a.b + |b|^2`, clamped at 0), in float32."""
    a, b = a.float(), b.float()
    distances = a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None]
    return distances.clamp_min_(0)


def manifold_radii(features: torch.Tensor, k: int = 3, batch_size: int = 10000) -> torch.Tensor:
    """Squared distance from each feature to its k-th nearest neighbour in the same set (ADM's `manifold_radii`).

    Args:
        features (`torch.Tensor`): `(N, dim)`, N > k.
        k (`int`, defaults to 3): Neighbourhood size; the point itself, at distance 0, is not counted.
        batch_size (`int`): Rows per distance block.
    """
    if len(features) <= k:
        raise ValueError(f"need more than k={k} features to estimate a manifold, got {len(features)}")
    radii = [
        torch.kthvalue(pairwise_squared_distances(features[start : start + batch_size], features), k + 1, dim=1).values
        for start in range(0, len(features), batch_size)
    ]
    return torch.cat(radii)


def precision_recall(
    reference: torch.Tensor | np.ndarray, samples: torch.Tensor | np.ndarray, k: int = 3, batch_size: int = 10000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) on k-NN manifolds, as ADM's `compute_prec_recall`.

    Precision: the fraction of samples inside some reference point's k-NN ball; recall: the fraction of reference
    points inside some sample's ball. Balls are closed (`<=`), radii and distances squared.

    Args:
        reference (`torch.Tensor` or `np.ndarray`): Reference features `(N, dim)`.
        samples (`torch.Tensor` or `np.ndarray`): Sample features `(M, dim)`.
        k (`int`, defaults to 3): Neighbourhood size.
        batch_size (`int`): Rows per distance block.
    """
    reference, samples = torch.as_tensor(reference).float(), torch.as_tensor(samples).float()
    reference_radii, sample_radii = manifold_radii(reference, k, batch_size), manifold_radii(samples, k, batch_size)
    samples_inside = torch.zeros(len(samples), dtype=torch.bool)
    reference_inside = torch.zeros(len(reference), dtype=torch.bool)
    for start in range(0, len(reference), batch_size):
        distances = pairwise_squared_distances(reference[start : start + batch_size], samples)
        reference_inside[start : start + batch_size] = (distances <= sample_radii[None]).any(dim=1)
        samples_inside |= (distances <= reference_radii[start : start + batch_size, None]).any(dim=0)
    return samples_inside.double().mean().item(), reference_inside.double().mean().item()


@dataclass
class ImageBatch:
    """uint8 images `(N, H, W, 3)` with, for ADM reference batches, their precomputed Inception statistics."""

    images: np.ndarray
    statistics: dict[str, np.ndarray] | None = None


def load_images(path: str, resolution: int | None = None) -> ImageBatch:
    """An ADM `.npz` (`arr_0`, and `mu`/`sigma`/`mu_s`/`sigma_s` if present) or a folder of images (searched
    recursively, sorted by path).

    Args:
        path (`str`): The `.npz` file or the folder.
        resolution (`int`, *optional*): For folders: ADM's centre crop to this square size (as its reference batches
            were made). Without it, all images must have one size.
    """
    if os.path.isfile(path) and path.endswith(".npz"):
        with np.load(path) as data:
            if "arr_0" not in data:
                raise ValueError(f"{path!r}: an ADM batch holds its images in `arr_0`; found {sorted(data.files)}")
            images = data["arr_0"]
            statistics = {name: data[name] for name in STATISTICS if name in data}
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"{path!r}: `arr_0` must be uint8 (N, H, W, 3), got {images.shape} {images.dtype}")
        if statistics and set(statistics) != set(STATISTICS):
            raise ValueError(f"{path!r}: has only {sorted(statistics)} of the statistics {STATISTICS}")
        return ImageBatch(images, statistics or None)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r}: neither an .npz file nor a folder of images")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if name.lower().endswith(IMAGE_SUFFIXES)
    )
    if not files:
        raise ValueError(f"{path!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    images = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert("RGB")
            if resolution is not None:
                image = center_crop_arr(image, resolution)
            array = np.asarray(image)
        if images and array.shape != images[0].shape:
            raise ValueError(
                f"{file!r} is {array.shape[1]}x{array.shape[0]}, but {files[0]!r} is "
                f"{images[0].shape[1]}x{images[0].shape[0]}: give a resolution to centre-crop them all"
            )
        images.append(array)
    return ImageBatch(np.stack(images))


def inception_activations(
    extractor: InceptionV3Features, images: np.ndarray, batch_size: int = 50, desc: str | None = None
) -> dict[str, np.ndarray]:
    """Inception features of uint8 images `(N, H, W, C)`, in batches, as float64 numpy arrays."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None):
        for name, value in extractor(images[start : start + batch_size]).items():
            parts.setdefault(name, []).append(value.double().cpu().numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def reference_statistics(activations: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`mu`, `sigma`, `mu_s`, `sigma_s` in ADM's reference-batch layout."""
    mu, sigma = feature_statistics(activations["pool"])
    mu_s, sigma_s = feature_statistics(activations["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def metrics_from_activations(
    samples: dict[str, np.ndarray], reference: dict[str, np.ndarray], precomputed: dict | None = None
) -> dict:
    """ADM's metrics from Inception activations (`inception_activations`) of samples and reference.

    FID and sFID use `precomputed` when given (an ADM batch's precomputed ones, as ADM does), else the
    reference activations'; precision and recall use the reference activations. Inception Score is `None` without
    softmax features.

    Args:
        samples (`dict`): The samples' `pool`, `spatial` and optionally `softmax` activations.
        reference (`dict`): The reference's `pool` and `spatial` activations.
        precomputed (`dict`, *optional*): `mu`, `sigma`, `mu_s`, `sigma_s`.
    """
    sample_stats = reference_statistics(samples)
    reference_stats = precomputed or reference_statistics(reference)
    precision, recall = precision_recall(reference["pool"], samples["pool"])
    return {
        "fid": frechet_distance(
            sample_stats["mu"], sample_stats["sigma"], reference_stats["mu"], reference_stats["sigma"]
        ),
        "sfid": frechet_distance(
            sample_stats["mu_s"], sample_stats["sigma_s"], reference_stats["mu_s"], reference_stats["sigma_s"]
        ),
        "inception_score": inception_score(samples["softmax"]) if "softmax" in samples else None,
        "precision": precision,
        "recall": recall,
        "num_samples": len(samples["pool"]),
        "num_reference": len(reference["pool"]),
        "reference_statistics": "precomputed" if precomputed else "computed",
    }


def compute_metrics(
    extractor: InceptionV3Features,
    samples: ImageBatch,
    reference: ImageBatch,
    batch_size: int = 50,
    progress: bool = False,
) -> dict:
    """ADM's evaluation of `samples` against `reference` (see `metrics_from_activations`).

    Args:
        extractor (`InceptionV3Features`): The Inception network.
        samples (`ImageBatch`): Generated images.
        reference (`ImageBatch`): Real images (an ADM reference batch or a folder).
        batch_size (`int`): Images per Inception forward pass.
        progress (`bool`): Show progress bars.
    """
    sample_acts = inception_activations(extractor, samples.images, batch_size, "samples" if progress else None)
    reference_acts = inception_activations(extractor, reference.images, batch_size, "reference" if progress else None)
    return metrics_from_activations(sample_acts, reference_acts, reference.statistics)


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez`, complete or not at all."""
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def write_images_npz(path: str, files: list[str], labels: np.ndarray | None = None) -> tuple[int, ...]:
    """Stacks image files into ADM's sample layout (`arr_0` uint8 `(N, H, W, 3)`, `arr_1` labels), streaming.

    The image array is filled on disk and stored uncompressed in the zip, so 50,000 ImageNet samples (9.8 GB) never
    sit in memory. The file appears under `path` only when complete.

    Args:
        path (`str`): The `.npz` to write.
        files (`list[str]`): Image files in order; all of one size.
        labels (`np.ndarray`, *optional*): One class id per image, stored as `arr_1`.
    """
    with Image.open(files[0]) as first:
        width, height = first.size
    shape = (len(files), height, width, 3)
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as work, atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(os.path.join(work, "arr_0.npy"), mode="w+", dtype=np.uint8, shape=shape)
        for index, file in enumerate(files):
            with Image.open(file) as image:
                image = np.asarray(image.convert("RGB"))
            if image.shape != shape[1:]:
                raise ValueError(f"{file!r} is {image.shape[1]}x{image.shape[0]}, the others {width}x{height}")
            array[index] = image
        array.flush()
        del array
        members = ["arr_0.npy"]
        if labels is not None:
            np.save(os.path.join(work, "arr_1.npy"), np.asarray(labels, dtype=np.int64))
            members.append("arr_1.npy")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for member in members:
                archive.write(os.path.join(work, member), member)
    return shape
