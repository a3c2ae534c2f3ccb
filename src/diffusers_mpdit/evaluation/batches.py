"""ADM's image batches, streamed: `.npz` files and image folders read a batch at a time, and `.npz` files written a
batch at a time, so that 50,000 ImageNet samples (9.8 GB at 256 px) never sit in memory.

Readers use plain file reads rather than a memory map: the pages of a map count towards the process's resident
memory for as long as it is mapped, reads do not.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..atomic import atomic_path
from ..sampling import IMAGE_SUFFIXES
from ..training.data import center_crop_arr

STATISTICS = ("mu", "sigma", "mu_s", "sigma_s")


def _read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


class NpzImages:
    """The uint8 images `arr_0` `(N, H, W, C)` of an ADM `.npz` (stored or deflated), read in batches, and its
    precomputed Inception statistics `mu`, `sigma`, `mu_s`, `sigma_s` if it has them.

    Args:
        path (`str`): The `.npz` file.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise ValueError(f"{path!r} is not an .npz file (not a zip archive)") from None
        with archive:
            names = archive.namelist()
            if "arr_0.npy" not in names:
                found = sorted(n.removesuffix(".npy") for n in names)
                raise ValueError(f"{path!r}: an ADM batch holds its images in `arr_0`; found {found}")
            with archive.open("arr_0.npy") as f:
                shape, fortran, dtype = _read_npy_header(f)
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3) or fortran:
            raise ValueError(f"{path!r}: `arr_0` must be uint8 (N, H, W, 3) in C order, got {shape} {dtype}")
        self.shape = tuple(shape)
        present = [name for name in STATISTICS if f"{name}.npy" in names]
        if present and len(present) != len(STATISTICS):
            raise ValueError(f"{path!r}: has only {present} of the statistics {STATISTICS}")
        self.statistics = None
        if present:
            with np.load(path) as data:  # each member is read on access: the images are not
                self.statistics = {name: data[name] for name in STATISTICS}

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive `(batch_size, H, W, C)` arrays (the last may be shorter).

        Args:
            batch_size (`int`): Images per array.
        """
        image_bytes = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as archive, archive.open("arr_0.npy") as f:
            _read_npy_header(f)
            for start in range(0, len(self), batch_size):
                count = min(batch_size, len(self) - start)
                data = f.read(count * image_bytes)
                if len(data) != count * image_bytes:
                    raise ValueError(f"{self.path!r}: `arr_0` ends after {start} of {len(self)} images")
                # A bytearray, not bytes: torch warns on (and must not write through) a read-only buffer.
                yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(count, *self.shape[1:])


class FolderImages:
    """The images of a folder (searched recursively, sorted by path) as RGB uint8, read in batches.

    Args:
        path (`str`): The folder.
        resolution (`int`, *optional*): ADM's centre crop to this square size (as its reference batches were made).
            Without it, all images must have one size.
    """

    statistics = None

    def __init__(self, path: str, resolution: int | None = None):
        self.path, self.resolution = path, resolution
        self.files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.lower().endswith(IMAGE_SUFFIXES)
        )
        if not self.files:
            raise ValueError(f"{path!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        self.shape = (len(self.files), *self._read(self.files[0]).shape)
        if resolution is None:
            # Headers only (PIL decodes lazily): a mixed folder fails before any image is scored.
            for file in self.files[1:]:
                with Image.open(file) as image:
                    if image.size != (self.shape[2], self.shape[1]):
                        self._mismatch(file, image.size)

    def _mismatch(self, file: str, size: tuple[int, int]):
        raise ValueError(
            f"{file!r} is {size[0]}x{size[1]}, but {self.files[0]!r} is {self.shape[2]}x{self.shape[1]}: give a "
            "resolution to centre-crop them all"
        )

    def _read(self, file: str) -> np.ndarray:
        with Image.open(file) as image:
            image = image.convert("RGB")
            if self.resolution is not None:
                image = center_crop_arr(image, self.resolution)
            return np.asarray(image)

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive `(batch_size, H, W, 3)` arrays (the last may be shorter).

        Args:
            batch_size (`int`): Images per array.
        """
        for start in range(0, len(self), batch_size):
            images = []
            for file in self.files[start : start + batch_size]:
                array = self._read(file)
                if array.shape != self.shape[1:]:
                    self._mismatch(file, (array.shape[1], array.shape[0]))
                images.append(array)
            yield np.stack(images)


def open_images(path: str, resolution: int | None = None) -> NpzImages | FolderImages:
    """An ADM `.npz` or a folder of images, for reading in batches.

    Args:
        path (`str`): The `.npz` file or the folder.
        resolution (`int`, *optional*): For folders: ADM's centre crop to this size.
    """
    if os.path.isfile(path) and path.endswith(".npz"):
        return NpzImages(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r}: neither an .npz file nor a folder of images")
    return FolderImages(path, resolution)


class NpzWriter:
    """Writes an `.npz` whose first array arrives in batches; the file appears under `path` only when complete.

    The streamed array goes to a `.npy` on disk beside the target and is stored uncompressed in the zip, as
    `np.savez` does, so `np.load` and ADM's evaluator read it.

    Args:
        path (`str`): The `.npz` to write.
        name (`str`): The streamed array's name, e.g. `arr_0`.
        shape (`tuple[int, ...]`): Its full shape.
        dtype (`np.dtype`): Its dtype.
    """

    def __init__(self, path: str, name: str, shape: tuple[int, ...], dtype=np.uint8):
        self.path, self.name, self.shape, self.dtype = path, name, tuple(shape), np.dtype(dtype)
        self._work = tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
        self._file = open(os.path.join(self._work.name, f"{name}.npy"), "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_2_0(self._file, header)
        self._rows = 0

    def write(self, batch: np.ndarray) -> None:
        """Appends rows along the first axis.

        Args:
            batch (`np.ndarray`): Rows of the array's shape after the first axis.
        """
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if batch.shape[1:] != self.shape[1:] or self._rows + len(batch) > self.shape[0]:
            raise ValueError(f"a batch of shape {batch.shape} does not fit `{self.name}` {self.shape}")
        self._file.write(batch.tobytes())
        self._rows += len(batch)

    def close(self, arrays: dict[str, np.ndarray] | None = None) -> None:
        """Finishes the file, adding `arrays` (small ones, written whole) beside the streamed one.

        Args:
            arrays (`dict[str, np.ndarray]`, *optional*): More members, e.g. labels or statistics.
        """
        try:
            self._file.close()
            if self._rows != self.shape[0]:
                raise ValueError(f"`{self.name}` got {self._rows} of {self.shape[0]} rows")
            members = [f"{self.name}.npy"]
            for name, array in (arrays or {}).items():
                np.save(os.path.join(self._work.name, f"{name}.npy"), array)
                members.append(f"{name}.npy")
            with atomic_path(self.path) as tmp:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                    for member in members:
                        archive.write(os.path.join(self._work.name, member), member)
        finally:
            self._work.cleanup()

    def abort(self) -> None:
        """Drops what was written."""
        self._file.close()
        self._work.cleanup()


def write_images_npz(
    path: str, files: list[str], labels: np.ndarray | None = None, batch_size: int = 256
) -> tuple[int, ...]:
    """Stacks image files into ADM's sample layout (`arr_0` uint8 `(N, H, W, 3)`, `arr_1` labels), streaming.

    Args:
        path (`str`): The `.npz` to write.
        files (`list[str]`): Image files in order; all of one size.
        labels (`np.ndarray`, *optional*): One class id per image, stored as `arr_1`.
        batch_size (`int`): Images read at a time.
    """
    with Image.open(files[0]) as first:
        width, height = first.size
    shape = (len(files), height, width, 3)
    writer = NpzWriter(path, "arr_0", shape)
    try:
        for batch in _read_files(files, batch_size, shape[1:]):
            writer.write(batch)
    except BaseException:
        writer.abort()
        raise
    writer.close(None if labels is None else {"arr_1": np.asarray(labels, dtype=np.int64)})
    return shape


def _read_files(files: list[str], batch_size: int, shape: tuple[int, ...]) -> Iterable[np.ndarray]:
    for start in range(0, len(files), batch_size):
        images = []
        for file in files[start : start + batch_size]:
            with Image.open(file) as image:
                array = np.asarray(image.convert("RGB"))
            if array.shape != shape:
                raise ValueError(f"{file!r} is {array.shape[1]}x{array.shape[0]}, the others {shape[1]}x{shape[0]}")
            images.append(array)
        yield np.stack(images)


def write_reference_npz(
    path: str,
    source: str,
    resolution: int | None = None,
    preprocessing: str = "center_crop",
    split: str = "test",
    image_column: str = "image",
    label_column: str | None = "label",
    max_images: int | None = None,
    batch_size: int = 256,
) -> tuple[int, ...]:
    """Writes real images as a reference batch for `mpdit evaluate`: ADM's layout, `arr_0` uint8 `(N, H, W, 3)` (and
    `arr_1` labels from a dataset that has them), streaming, the file appearing only when complete. The evaluator
    computes the Inception statistics from the images.

    Args:
        path (`str`): The `.npz` to write.
        source (`str`): A folder of image files (searched recursively, sorted by path), or a `datasets` dataset by name
            or local path (e.g. the parquet folder `examples/prepare_fashion_mnist.py` writes).
        resolution (`int`, *optional*): Prepare each image to this square side, as the model's training data was;
            required when the images differ in size.
        preprocessing (`str`): `center_crop` (ADM's) or `pad` (black borders, e.g. Fashion-MNIST's 28 -> 32).
        split (`str`): The dataset's split.
        image_column (`str`): The dataset's image column.
        label_column (`str`, *optional*): The dataset's label column, stored as `arr_1` if present.
        max_images (`int`, *optional*): Keep only the first this many.
        batch_size (`int`): Images read at a time.
    """
    from ..training.data import decode_image, pad_to

    if preprocessing not in ("center_crop", "pad"):
        raise ValueError(f"`preprocessing` must be 'center_crop' or 'pad', got {preprocessing!r}")
    if preprocessing == "pad" and resolution is None:
        raise ValueError("`preprocessing='pad'` needs a `resolution` to pad to")
    labels = None
    if os.path.isdir(source) and any(
        name.lower().endswith(IMAGE_SUFFIXES) for _, _, names in os.walk(source) for name in names
    ):
        files = FolderImages(source, resolution).files  # with no resolution, checks that all have one size
        count = len(files) if max_images is None else min(max_images, len(files))

        def images():
            for file in files[:count]:
                with Image.open(file) as image:
                    yield image.convert("RGB")
    else:
        from datasets import load_dataset

        dataset = load_dataset(source, split=split)
        if image_column not in dataset.column_names:
            raise ValueError(f"`image_column` {image_column!r} is not a column of {source!r}: {dataset.column_names}")
        count = len(dataset) if max_images is None else min(max_images, len(dataset))
        dataset = dataset.select(range(count))
        if label_column in dataset.column_names:
            labels = np.asarray(dataset[label_column], dtype=np.int64)

        def images():
            for row in dataset:
                yield decode_image(row[image_column]).convert("RGB")

    def prepared():
        for image in images():
            if resolution is not None:
                image = pad_to(image, resolution) if preprocessing == "pad" else center_crop_arr(image, resolution)
            yield np.asarray(image)

    stream = prepared()
    first = next(stream)
    shape = (count, *first.shape)
    writer = NpzWriter(path, "arr_0", shape)
    try:
        batch = [first]
        for array in stream:
            if array.shape != first.shape:
                raise ValueError(
                    f"{source!r}: images of {array.shape[1]}x{array.shape[0]} and {first.shape[1]}x{first.shape[0]}: "
                    "give a resolution to prepare them all to one size"
                )
            batch.append(array)
            if len(batch) == batch_size:
                writer.write(np.stack(batch))
                batch = []
        if batch:
            writer.write(np.stack(batch))
    except BaseException:
        writer.abort()
        raise
    writer.close(None if labels is None else {"arr_1": labels})
    return shape
