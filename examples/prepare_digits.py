#!/usr/bin/env python
"""Turn scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) into a `datasets` parquet folder.

    python examples/prepare_digits.py --output_dir data/digits
    accelerate launch examples/train_mpdit.py --dataset_name data/digits --image_preprocessing pad --resolution 32 \\
        --image_channels 1 --pretrained_model_name_or_path bundled-model-folder --lora_rank 16 ...

Each digit is scaled from 8x8 to 24x24 (bicubic) and centred on a 28x28 black canvas, the layout of (Fashion-)MNIST,
so that `--image_preprocessing pad` brings it to 32x32 like the bundled model's garments. A stratified split keeps
`--test_fraction` of every class for `test.parquet`. The classes are named "digit 0" to "digit 9": names the bundled
Fashion-MNIST model lacks, so fine-tuning it on this folder adds them as ten new classes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from diffusers_mpdit.arguments import OneLineParser, integer, number

CLASS_NAMES = [f"digit {d}" for d in range(10)]
SIDE, CANVAS = 24, 28


def digit_image(values: np.ndarray) -> PILImage.Image:
    """One 8x8 scan (values 0-16) as a 28x28 greyscale image, the digit scaled to 24x24 in the middle."""
    small = PILImage.fromarray(np.round(values * (255 / 16)).astype(np.uint8))
    canvas = PILImage.new("L", (CANVAS, CANVAS))
    offset = (CANVAS - SIDE) // 2
    canvas.paste(small.resize((SIDE, SIDE), PILImage.BICUBIC), (offset, offset))
    return canvas


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and test splits, each class split at `test_fraction` (rounded), in a seeded order."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = int(round(len(members) * test_fraction))
        test += members[:cut].tolist()
        train += members[cut:].tolist()
    return np.sort(train), np.sort(test)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="where train.parquet and test.parquet go")
    parser.add_argument(
        "--test_fraction",
        type=number(0, 1, include_minimum=False, include_maximum=False),
        default=0.2,
        help="share of each class held out as the test split (default 0.2)",
    )
    parser.add_argument("--seed", type=integer(0), default=0, help="seeds the split (default 0)")
    args = parser.parse_args(argv)
    from sklearn.datasets import load_digits

    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        parser.error(f"--output_dir {args.output_dir!r} is a file, not a folder")
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    output.mkdir(parents=True, exist_ok=True)
    features = Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})
    for split, indices in zip(("train", "test"), stratified_split(labels, args.test_fraction, args.seed)):
        records = {"image": [digit_image(images[i]) for i in indices], "label": labels[indices].tolist()}
        dataset = Dataset.from_dict(records, features=features)
        tmp = output / f".{split}.parquet.tmp"
        dataset.to_parquet(str(tmp))
        os.replace(tmp, output / f"{split}.parquet")
        print(f"{split}: {len(dataset)} images of {CANVAS}x{CANVAS} -> {output / f'{split}.parquet'}")


if __name__ == "__main__":
    main()
