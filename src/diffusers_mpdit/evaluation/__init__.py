"""Evaluation: Frechet distances, and a classifier-based judge for small labelled datasets."""

from .classifier import ClassifierScorer, LabelledImages, SmallImageClassifier, balanced_indices, load_split
from .frechet import feature_statistics, frechet_distance

__all__ = [
    "ClassifierScorer",
    "LabelledImages",
    "SmallImageClassifier",
    "balanced_indices",
    "feature_statistics",
    "frechet_distance",
    "load_split",
]
