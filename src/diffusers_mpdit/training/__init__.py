"""Helpers shared by the pipeline, the training examples and the tests."""

from .latents import denormalize_latents, normalize_latents

__all__ = ["denormalize_latents", "normalize_latents"]
