"""Image preparation with PIL and numpy (torchvision cannot be imported beside torch 2.13 here)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


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
