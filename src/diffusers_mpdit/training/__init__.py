"""Helpers shared by the pipeline, the training examples and the tests."""

from .data import center_crop_arr, image_to_tensor, pad_to
from .flow_matching import (
    WEIGHTING_SCHEMES,
    drop_class_labels,
    flow_matching_loss,
    sample_flow_times,
    step_generator,
)
from .latent_cache import LatentCacheDataset
from .latents import denormalize_latents, normalize_latents

__all__ = [
    "WEIGHTING_SCHEMES",
    "LatentCacheDataset",
    "center_crop_arr",
    "denormalize_latents",
    "drop_class_labels",
    "flow_matching_loss",
    "image_to_tensor",
    "normalize_latents",
    "pad_to",
    "sample_flow_times",
    "step_generator",
]
