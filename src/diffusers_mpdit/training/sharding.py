"""Sharded training (FSDP2): the per-block wrapping, the EMA of sharded parameters, and the full weights to save.

Under FSDP2 each process holds a `DTensor` shard of every parameter. diffusers' `EMAModel` works on those shards as
they are (its update is elementwise, so each process averages its own shard and the EMA costs 1/N of the model per
process). Only whole-model operations need the shards gathered: saving the EMA, copying it into a model to sample,
and loading a saved EMA back into shards. The functions here do those, and are no-ops on a model that is not sharded,
so one code path serves data parallel, DeepSpeed ZeRO-1/2 (whole parameters on every process) and FSDP.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch
from torch import nn


def _dtensor_class():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(parameters: nn.Module | Iterable[torch.Tensor]) -> bool:
    """Whether any of the parameters (or any parameter of the module) is an FSDP2 shard (`DTensor`).

    Args:
        parameters (`nn.Module` or iterable of `torch.Tensor`): A model, or its parameters.
    """
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    dtensor = _dtensor_class()
    return any(isinstance(p, dtensor) for p in parameters)


def shard_transformer(model: nn.Module, **fully_shard_kwargs) -> nn.Module:
    """Shards `model` with PyTorch's FSDP2: each block class in `model._no_split_modules` (for MPDiT, `MPDiTBlock`)
    is its own unit, then the root takes the rest (embeddings, upsamplers, the shared modulation, the output). This is
    the wrapping that `examples/accelerate_fsdp.yaml` asks Accelerate for. Call it in every process of an initialised
    process group, after the model is complete (new classes, LoRA) and before the optimizer is built.

    Args:
        model (`nn.Module`): The model, sharded in place.
        fully_shard_kwargs: Passed to `torch.distributed.fsdp.fully_shard` (`mesh`, `mp_policy`, ...).

    Returns:
        The same module, now an `FSDPModule`.
    """
    from torch.distributed.fsdp import fully_shard

    names = set(getattr(model, "_no_split_modules", None) or ())
    if not names:
        raise ValueError(f"{type(model).__name__} names no `_no_split_modules` to shard by.")
    # Innermost first, as Accelerate wraps, should a block class ever nest another.
    blocks = [m for m in model.modules() if type(m).__name__ in names][::-1]
    for block in blocks:
        fully_shard(block, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on the CPU. On a sharded model this is a collective (call it in every process);
    the main process (rank 0) gets the tensors and the others an empty dict. On a model that is not sharded, every
    process gets them.

    Args:
        model (`nn.Module`): The (possibly sharded) model.
    """
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def parameter_names(model: nn.Module, parameters: Iterable[torch.Tensor]) -> list[str]:
    """The names in `model` of `parameters`, in their order: the way to find them again after `accelerator.prepare`,
    which under FSDP replaces every parameter with a new (sharded) one.

    Args:
        model (`nn.Module`): The model the parameters belong to.
        parameters (iterable of `torch.Tensor`): Some of its parameters.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    found = []
    for p in parameters:
        if id(p) not in names:
            raise ValueError(
                f"`parameters` holds a tensor of shape {tuple(p.shape)} that is not a parameter of model."
            )
        found.append(names[id(p)])
    return found


def parameters_by_name(model: nn.Module, names: Iterable[str]) -> list[nn.Parameter]:
    """The parameters of `model` called `names`, in that order (see `parameter_names`).

    Args:
        model (`nn.Module`): The (possibly sharded or prepared) model.
        names (iterable of `str`): Parameter names.
    """
    params = dict(model.named_parameters())
    return [params[name] for name in names]


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor().cpu() if isinstance(tensor, _dtensor_class()) else tensor


@contextlib.contextmanager
def gathered_ema(ema) -> Iterator:
    """Within this context, the EMA's `shadow_params` are whole CPU tensors, so that `ema.copy_to(model.parameters())`
    and `ema.save_pretrained(...)` work on a model that is not sharded; its shards come back on exit. A collective when
    the EMA is sharded: enter it in every process. Nothing changes for an EMA of whole parameters.

    Args:
        ema (`diffusers.training_utils.EMAModel`): The EMA, of sharded parameters or not.
    """
    sharded = ema.shadow_params
    if not is_sharded(sharded):
        yield ema
        return
    ema.shadow_params = [_full(p) for p in sharded]
    try:
        yield ema
    finally:
        ema.shadow_params = sharded


def save_ema(ema, directory: str | os.PathLike, is_main_process: bool) -> None:
    """Writes the EMA as `EMAModel.save_pretrained` does (a model folder whose config carries the EMA's state),
    gathering it first when sharded. Call it in every process; the main process writes.

    Args:
        ema (`diffusers.training_utils.EMAModel`): An EMA built with `model_cls` and `model_config`.
        directory (`str` or `os.PathLike`): The folder to write.
        is_main_process (`bool`): Whether this process writes.
    """
    with gathered_ema(ema):
        if is_main_process:
            ema.save_pretrained(os.fspath(directory))


def load_ema_state(ema, state_dict: dict, parameters: Iterable[torch.Tensor]) -> None:
    """Loads a saved EMA's state (`EMAModel.state_dict()`, whole tensors, on every process) into `ema`, each shadow
    tensor placed like its parameter in `parameters`: sharded the same way where the parameter is a `DTensor`, and on
    its device. The saved dtype is kept (an EMA stays float32 beside half-precision weights).

    Args:
        ema (`diffusers.training_utils.EMAModel`): The run's EMA.
        state_dict (`dict`): The saved EMA's state, e.g. `load_ema(folder, model_cls).state_dict()`.
        parameters (iterable of `torch.Tensor`): The parameters the EMA averages, in its order.
    """
    from torch.distributed.tensor import distribute_tensor

    parameters = list(parameters)
    saved = state_dict.get("shadow_params")
    if saved is not None:
        if len(saved) != len(parameters):
            raise ValueError(f"The saved EMA holds {len(saved)} tensors; the model has {len(parameters)} to average.")
        for i, (s, p) in enumerate(zip(saved, parameters)):
            if s.shape != p.shape:
                raise ValueError(
                    f"The saved EMA's tensor {i} has shape {tuple(s.shape)}; its parameter has {tuple(p.shape)}."
                )
    ema.load_state_dict(state_dict)
    dtensor = _dtensor_class()
    # Every process holds the whole saved tensor, so each keeps its own shard (src_data_rank=None): no scatter.
    ema.shadow_params = [
        distribute_tensor(s.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
        if isinstance(p, dtensor)
        else s.to(p.device)
        for s, p in zip(ema.shadow_params, parameters)
    ]
