"""The Frechet distance between two Gaussians fitted to features (FID's formula, in any feature space)."""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, rows are samples) of a feature matrix, in float64.

    Args:
        features (`np.ndarray`): `(num_samples, dim)`, at least two samples.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"`features` must be (num_samples >= 2, dim), got shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """`|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`.

    The trace of the matrix square root is computed as the sum of the square roots of the eigenvalues of the symmetric
    positive semi-definite `sigma1^(1/2) sigma2 sigma1^(1/2)`, which has the same spectrum as `sigma1 sigma2`; this
    avoids scipy's non-symmetric `sqrtm` and its complex round-off.

    Args:
        mu1, mu2 (`np.ndarray`): Means, `(dim,)`.
        sigma1, sigma2 (`np.ndarray`): Covariances, `(dim, dim)`.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}; "
            "expected (dim,) means and (dim, dim) covariances"
        )
    eigvals, eigvecs = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    sqrt1 = (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T
    inner = sqrt1 @ sigma2 @ sqrt1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)
