"""The flow-matching objective MPDiT is trained with: time sampling, label dropout, the velocity loss."""

from __future__ import annotations

import hashlib

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling

WEIGHTING_SCHEMES = ("logit_normal", "uniform", "mode")


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator determined by `seed` and `keys` (e.g. step and micro-step) alone.

    Drawing each step's noise, times and dropout from it makes a run independent of how many processes share the
    batch and of where it was interrupted and resumed.

    Args:
        seed (`int`): The run's seed.
        *keys (`int`): Anything else the stream should depend on.
    """
    digest = hashlib.sha256(",".join(map(str, (seed, *keys))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_flow_times(
    batch_size: int,
    weighting_scheme: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Flow times t in (0, 1), 1 being noise: `sigmoid(N(logit_mean, logit_std))` (the official recipe), uniform, or
    SD3's mode sampling. Drawn on the CPU with `generator`.

    Args:
        batch_size (`int`): Number of times.
        weighting_scheme (`str`, defaults to `"logit_normal"`): `"logit_normal"`, `"uniform"` or `"mode"`.
        logit_mean (`float`, defaults to 0.0): Mean of the normal before the sigmoid.
        logit_std (`float`, defaults to 1.0): Its standard deviation.
        mode_scale (`float`, defaults to 1.29): Scale of the `"mode"` scheme.
        generator (`torch.Generator`, *optional*): CPU generator.
    """
    if weighting_scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"`weighting_scheme` must be one of {WEIGHTING_SCHEMES}, got {weighting_scheme!r}.")
    return compute_density_for_timestep_sampling(
        weighting_scheme, batch_size, logit_mean, logit_std, mode_scale, device="cpu", generator=generator
    )


def drop_class_labels(
    class_labels: torch.Tensor,
    null_class_id: int,
    drop_prob: float,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replaces each label by the null class with probability `drop_prob`, for classifier-free guidance.

    Args:
        class_labels (`torch.Tensor`): Class ids, shape `(batch,)`.
        null_class_id (`int`): The model's null class (`transformer.config.num_classes`).
        drop_prob (`float`): Probability of dropping a label (0.1 in the official recipe).
        generator (`torch.Generator`, *optional*): CPU generator for the draws.
        uniform (`torch.Tensor`, *optional*): Precomputed U(0, 1) draws, one per label (e.g. this process's slice of
            draws made for the global batch); replaces `generator`.
    """
    if uniform is None:
        uniform = torch.rand(class_labels.shape, generator=generator)
    drop = uniform.to(class_labels.device) < drop_prob
    return torch.where(drop, torch.full_like(class_labels, null_class_id), class_labels)


def flow_matching_loss(
    model: torch.nn.Module,
    data: torch.Tensor,
    noise: torch.Tensor,
    flow_times: torch.Tensor,
    class_labels: torch.Tensor | None,
) -> torch.Tensor:
    """Mean squared error of the predicted velocity `noise - data` at `x_t = (1 - t) data + t noise`.

    Args:
        model (`torch.nn.Module`): An `MPDiTTransformer2DModel` (possibly wrapped by DDP or compiled).
        data (`torch.Tensor`): Clean (normalised) latents or pixels, `(batch, C, H, W)`.
        noise (`torch.Tensor`): Standard normal noise of the same shape.
        flow_times (`torch.Tensor`): t per sample, shape `(batch,)`.
        class_labels (`torch.Tensor`, *optional*): Class ids after dropout.

    Returns:
        The loss averaged over samples and elements, in float32.
    """
    t = flow_times.to(data.dtype).view(-1, *([1] * (data.ndim - 1)))
    noisy = (1 - t) * data + t * noise
    prediction = model(noisy, flow_times, class_labels, return_dict=False)[0][:, : data.shape[1]]
    return torch.mean((prediction.float() - (noise - data).float()) ** 2)
