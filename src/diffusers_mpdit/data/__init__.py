"""Data that ships with the package."""

import json
import os
from functools import cache
from importlib import resources

# The demo model that ships with the package: Fashion-MNIST, pixel space, 32x32 grey (see its README.md).
BUNDLED_MODEL = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bundled", "mpdit-fashion-mnist")
# What the front ends accept for it in place of a path (`--model bundled`).
BUNDLED_MODEL_NAME = "bundled"


@cache
def _imagenet1k_id2label() -> dict[int, str]:
    text = resources.files(__name__).joinpath("imagenet1k_id2label.json").read_text(encoding="utf-8")
    return {int(k): v for k, v in json.loads(text).items()}


def imagenet1k_id2label() -> dict[int, str]:
    """The 1000 ImageNet-1k class names in class-id order (WordNet lemmas, synonyms separated by commas).

    These are the names diffusers' DiT checkpoints carry in `id2label` (from timm's `imagenet_synset_to_lemma.txt`).
    """
    return dict(_imagenet1k_id2label())
