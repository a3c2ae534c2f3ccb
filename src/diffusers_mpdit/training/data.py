"""Image preparation with PIL and numpy (torchvision cannot be imported beside torch 2.13 here)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image


class UnreadableImageError(ValueError):
    """An image of the training data that PIL cannot decode (truncated, not an image, ...), named by its path."""

    def summary(self) -> str:
        """The message's last line: a dataloader worker re-raises this error with its own traceback in the message."""
        return str(self).strip().splitlines()[-1].removeprefix(f"{type(self).__name__}: ")


def image_folder_classes(train_data_dir: str) -> list[str]:
    """The class names `datasets`' imagefolder gives a folder (its subfolders that hold images, sorted), checked
    without decoding anything, so that a bad folder is refused before a run starts.

    Args:
        train_data_dir (`str`): One subfolder of images per class.

    Raises:
        ValueError: if the folder does not exist, holds no image files, or holds images outside class subfolders.
    """
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    if not os.path.isdir(train_data_dir):
        raise ValueError(f"{train_data_dir!r} is not a folder")
    classes, loose = set(), 0
    for root, _, files in os.walk(train_data_dir):
        images = [f for f in files if os.path.splitext(f)[1].lower() in ImageFolder.EXTENSIONS]
        if images and os.path.samefile(root, train_data_dir):
            loose += len(images)
        elif images:
            classes.add(os.path.basename(root))
    if not classes:
        why = f" ({loose} images lie at its top level)" if loose else ""
        raise ValueError(
            f"{train_data_dir!r} holds no images in class subfolders{why}: it needs one subfolder of images "
            "(.png, .jpg, .webp, ...) per class"
        )
    return sorted(classes)


def decode_image(value: Any) -> Image.Image:
    """A `datasets` image value (a PIL image, or the `{"bytes", "path"}` dict of an undecoded `Image` feature) as a
    fully loaded PIL image.

    Args:
        value: The image cell.

    Raises:
        UnreadableImageError: naming the file (or "an image without a path") and PIL's reason.
    """
    if isinstance(value, Image.Image):
        return value
    path = value.get("path")
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else path
        image = Image.open(source)
        image.load()  # decode now: a truncated file fails here, not inside a batch
        return image
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImageError(
            f"unreadable image {path or '(no path: an image stored inline)'}: {error}"
        ) from None


def drop_unreadable_images(dataset, log: Callable[[str], None] = print):
    """Decodes every image of a dataset loaded by `load_image_dataset` once and drops those that fail, logging each
    path and the count: the opt-in alternative to stopping the run at the first one.

    Args:
        dataset (`datasets.Dataset`): With an undecoded `image` column.
        log (`Callable[[str], None]`): Where the paths and the count go.
    """
    keep, bad = [], 0
    values = (row["image"] for batch in dataset.iter(batch_size=256) for row in _rows(batch))
    for index, value in enumerate(values):
        try:
            decode_image(value)
            keep.append(index)
        except UnreadableImageError as error:
            bad += 1
            log(f"skipped {error}")
    if bad:
        log(f"skipped {bad} unreadable images of {len(dataset)}; training on {len(keep)}")
    return dataset if not bad else dataset.select(keep)


def center_crop_arr(image: Image.Image, image_size: int) -> Image.Image:
    """ADM's centre crop: halve with a box filter while the short side is at least twice the target, resize the short
    side to `image_size` (bicubic), then crop the centre square.

    Args:
        image (`PIL.Image.Image`): Any size.
        image_size (`int`): Side of the output square.
    """
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def image_to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image as a `(channels, H, W)` float tensor in [-1, 1]; 1 channel is greyscale, 3 is RGB.

    Args:
        image (`PIL.Image.Image`): The image.
        channels (`int`): 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 (greyscale) or 3 (RGB) for images, got {channels}.")
    arr = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr / 127.5 - 1.0)


def pad_to(image: Image.Image, size: int) -> Image.Image:
    """Pads an image smaller than `size` with black borders to a centred `size` x `size` square (e.g. 28 -> 32)."""
    if image.width > size or image.height > size:
        raise ValueError(f"cannot pad a {image.width}x{image.height} image to {size}x{size}")
    canvas = Image.new(image.mode, (size, size))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def _rows(batch: dict) -> list[dict]:
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


def load_image_dataset(
    train_data_dir: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    max_samples: int | None = None,
):
    """A labelled image set as a `datasets.Dataset` with `image` and `label` columns, and its `id2label`. Images
    stay undecoded (`{"bytes", "path"}`) until `ImageTransform` (or `decode_image`) reads them.

    Args:
        train_data_dir (`str`, *optional*): An imagefolder: one subfolder of images per class.
        dataset_name (`str`, *optional*): A `datasets` dataset, by name or local path (give this or the folder).
        dataset_config_name (`str`, *optional*): Its configuration.
        split (`str`): Its split.
        image_column (`str`): Its image column (an imagefolder's is always `image`).
        label_column (`str`): Its label column; a `ClassLabel` gives the class names (an imagefolder's is `label`).
        max_samples (`int`, *optional*): Keep only the first this many (at least 1).
    """
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    if max_samples is not None and max_samples < 1:
        raise ValueError(f"`max_samples` must be at least 1, got {max_samples}")
    if bool(train_data_dir) == bool(dataset_name):
        raise ValueError("give exactly one of `train_data_dir` and `dataset_name`")
    if train_data_dir:
        dataset = load_dataset("imagefolder", data_dir=train_data_dir, split="train")
        image_column, label_column = "image", "label"
    else:
        dataset = load_dataset(dataset_name, dataset_config_name, split=split)
    for column, name in ((image_column, "image_column"), (label_column, "label_column")):
        if column not in dataset.column_names:
            raise ValueError(f"`{name}` {column!r} is not a column of the dataset; it has {dataset.column_names}.")
    feature = dataset.features[label_column]
    if hasattr(feature, "names"):
        id2label = dict(enumerate(feature.names))
    else:
        id2label = {int(i): str(i) for i in sorted(set(dataset[label_column]))}
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    columns = {image_column: "image", label_column: "label"}
    dataset = dataset.select_columns([image_column, label_column]).rename_columns(columns)
    if isinstance(dataset.features["image"], ImageFeature):
        # Decoded by `decode_image` instead, which names the file of an image that cannot be read.
        dataset = dataset.cast_column("image", ImageFeature(decode=False))
    return dataset, id2label


class ImageTransform:
    """PIL -> ADM centre crop (or padding) -> tensor in [-1, 1], for `datasets`' `with_transform`; picklable for
    dataloader workers.

    Args:
        resolution (`int`): Output side.
        channels (`int`): 1 (greyscale) or 3 (RGB).
        preprocessing (`str`): `center_crop` (ADM's) or `pad` (black borders, e.g. 28 -> 32).
    """

    def __init__(self, resolution: int, channels: int, preprocessing: str):
        if preprocessing not in ("center_crop", "pad"):
            raise ValueError(f"`preprocessing` must be 'center_crop' or 'pad', got {preprocessing!r}.")
        self.resolution, self.channels, self.preprocessing = resolution, channels, preprocessing

    def __call__(self, batch: dict) -> dict:
        prepare = pad_to if self.preprocessing == "pad" else center_crop_arr
        images = [prepare(decode_image(image), self.resolution) for image in batch["image"]]
        return {"pixels": [image_to_tensor(image, self.channels) for image in images], "label": batch["label"]}


class EpochSampler(torch.utils.data.Sampler):
    """A permutation per epoch determined by (seed, epoch) alone: the data order survives restarts and world sizes.

    Args:
        size (`int`): Dataset length.
        seed (`int`): The run's seed.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order `__iter__` yields (the order depends on the seed and the epoch only).

        Args:
            epoch (`int`): The epoch.
        """
        self.epoch = epoch

    def __iter__(self):
        from .flow_matching import step_generator

        return iter(torch.randperm(self.size, generator=step_generator(self.seed, -1, self.epoch)).tolist())

    def __len__(self) -> int:
        return self.size


def collate(examples: list[dict]) -> dict:
    """Stacks `pixels` (images) or `mean`/`std` (a latent cache) and the labels of a list of examples.

    Args:
        examples (`list[dict]`): Dataset rows, each with `label` and either `pixels` or `mean` and `std`.
    """
    batch = {"label": torch.tensor([int(e["label"]) for e in examples])}
    for key in ("pixels", "mean", "std"):
        if key in examples[0]:
            batch[key] = torch.stack([e[key] for e in examples])
    return batch
