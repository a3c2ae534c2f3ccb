#!/usr/bin/env python
"""Turn Fashion-MNIST (Debian's `dataset-fashion-mnist`, MIT) into a `datasets` parquet folder for train_mpdit.py.

    apt-get install dataset-fashion-mnist
    python examples/prepare_fashion_mnist.py --output_dir data/fashion-mnist
    accelerate launch examples/train_mpdit.py --dataset_name data/fashion-mnist --image_preprocessing pad \\
        --resolution 32 --image_channels 1 ...

Writes `train.parquet` (60,000 images) and `test.parquet` (10,000) with an `image` column and a `label` ClassLabel
carrying the ten class names, so `load_dataset(output_dir)` restores the names that become the pipeline's `id2label`.
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

SOURCE = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_dir", default=SOURCE, help="folder with the *-idx*-ubyte.gz files")
    parser.add_argument("--output_dir", required=True, help="where train.parquet and test.parquet go")
    args = parser.parse_args()
    source, output = Path(args.source_dir), Path(args.output_dir)
    if not (source / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"error: no Fashion-MNIST files in {source}; apt-get install dataset-fashion-mnist")
    output.mkdir(parents=True, exist_ok=True)
    features = Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        records = {"image": [PILImage.fromarray(image) for image in images], "label": labels.tolist()}
        dataset = Dataset.from_dict(records, features=features)
        tmp = output / f".{split}.parquet.tmp"
        dataset.to_parquet(str(tmp))
        os.replace(tmp, output / f"{split}.parquet")
        print(
            f"{split}: {len(dataset)} images of {images.shape[1]}x{images.shape[2]} -> {output / f'{split}.parquet'}"
        )


if __name__ == "__main__":
    main()
