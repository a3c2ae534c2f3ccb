"""LoRA fine-tuning of a pretrained MPDiT, with new classes: which parameters train, and how they are saved.

A LoRA run trains peft adapters on the attention projections and, when the data brings classes the base model lacks,
the rows of those classes in the class-token table. The table is one parameter, so its other rows are held fixed by
a gradient mask and no weight decay (AdamW's update of a zero-gradient row with zero moments is exactly zero); the
frozen weights therefore stay bit-identical.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ..loaders.lora import NewClasses
from ..pipelines.class_names import ClassNames

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.pt"


def class_label_map(
    base_id2label: dict[int, str] | None, base_num_classes: int, data_id2label: dict[int, str]
) -> tuple[list[int], list[str]]:
    """Maps the data's classes onto a pretrained model's: a class the model knows by name keeps its id, the others
    become new classes with the ids after the model's.

    Args:
        base_id2label (`dict[int, str]`, *optional*): The pretrained pipeline's class names; None to match by id (a
            bare transformer folder has no names), in which case the data's ids must be the model's.
        base_num_classes (`int`): The pretrained model's class count.
        data_id2label (`dict[int, str]`): The data's classes, ids `0..K-1`.

    Returns:
        `(label_map, new_names)`: `label_map[data_id]` is the model id; `new_names` the classes to add, in id order.
    """
    if base_id2label is None:
        if len(data_id2label) != base_num_classes:
            raise ValueError(
                f"the model has {base_num_classes} classes, the data {len(data_id2label)}, and with no names to match "
                "(a transformer folder, or --class_matching id) the data's ids must be the model's: give the "
                "pipeline folder, whose names tell new classes from old ones"
            )
        return list(range(base_num_classes)), []
    known = ClassNames(base_id2label, base_num_classes)
    label_map, new_names = [], []
    for data_id in range(len(data_id2label)):
        name = data_id2label[data_id]
        # A whole id2label entry first ("dog, puppy" is class 1), then one synonym, as pipe(...) resolves names.
        ids = [i for i, label in sorted(base_id2label.items()) if label == name] or known.matches(name)
        if len(ids) > 1:
            options = ", ".join(f"{i} ({base_id2label[i]})" for i in ids)
            raise ValueError(f"the data's class {name!r} names several of the model's classes: {options}; rename it")
        if ids:
            label_map.append(ids[0])
            continue
        if "," in name:
            raise ValueError(
                f"the data's class {name!r} is not one of the model's, and a new class name cannot hold a comma "
                "(commas separate synonyms): rename it"
            )
        label_map.append(base_num_classes + len(new_names))
        new_names.append(name)
    return label_map, new_names


def _mask_rows_hook(trainable: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * trainable.to(grad.dtype).unsqueeze(-1)

    return hook


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    target_modules: Sequence[str] = LORA_TARGET_MODULES,
    new_class_ids: Sequence[int] = (),
) -> list[nn.Parameter]:
    """Freezes `model`, adds a peft LoRA adapter (named `default`), and makes the new classes' rows trainable.

    Args:
        model ([`MPDiTTransformer2DModel`]): The pretrained model, already grown by the new classes.
        rank (`int`): LoRA rank.
        alpha (`float`, *optional*): LoRA alpha (default: the rank, a scale of 1).
        target_modules (`list[str]`): Module names or suffixes the adapter wraps (default: every attention
            projection, `to_q`, `to_k`, `to_v`, `to_out.0`).
        new_class_ids (`list[int]`): Class-token rows that train with the adapter.

    Returns:
        `list[nn.Parameter]`: the trainable parameters, in `named_parameters` order, upcast to float32 (diffusers'
        `cast_training_params`).
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    model.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(target_modules)
    )
    try:
        model.add_adapter(config)
    except ValueError as error:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"--lora_target_modules {','.join(target_modules)}: {error}") from None
    if new_class_ids:
        table = model.class_embed.embedding_table.weight
        table.requires_grad_(True)
        rows = torch.zeros(table.shape[0], dtype=torch.bool, device=table.device)
        rows[list(new_class_ids)] = True
        table.register_hook(_mask_rows_hook(rows))
    cast_training_params(model, dtype=torch.float32)
    return [p for p in model.parameters() if p.requires_grad]


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: the class-token table without weight decay (its masked rows must not shrink), the
    rest with `weight_decay`.

    Args:
        model (`nn.Module`): The model after [`add_lora`].
        weight_decay (`float`): The decay of the adapter weights.
    """
    table = model.class_embed.embedding_table.weight if model.class_embed is not None else None
    rest = [p for p in model.parameters() if p.requires_grad and p is not table]
    groups = [{"params": rest, "weight_decay": weight_decay}]
    if table is not None and table.requires_grad:
        groups.append({"params": [table], "weight_decay": 0.0})
    return groups


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (adapter and class table), for checkpoints.

    Args:
        model (`nn.Module`): The model after [`add_lora`].
    """
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: nn.Module, path: str | os.PathLike) -> None:
    """Loads what [`trainable_state_dict`] saved, refusing a file that does not hold exactly those parameters.

    Args:
        model (`nn.Module`): The model after [`add_lora`], with the same settings.
        path (`str` or `os.PathLike`): A safetensors file.
    """
    import safetensors.torch

    state = safetensors.torch.load_file(os.fspath(path))
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if state.keys() != params.keys():
        missing, extra = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
        raise RuntimeError(
            f"{os.fspath(path)!r} is not this run's LoRA: missing {missing[:3]}, unexpected {extra[:3]} (were "
            "--lora_rank, --lora_target_modules or the classes changed?)"
        )
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != state[name].shape:
                raise RuntimeError(f"{os.fspath(path)!r}: {name} has shape {tuple(state[name].shape)}, not {p.shape}")
            p.copy_(state[name])


def save_lora(
    model: nn.Module,
    save_directory: str | os.PathLike,
    new_class_ids: Sequence[int] = (),
    id2label: dict[int, str] | None = None,
) -> None:
    """Saves the model's adapter, and the new classes' rows and names, as `pytorch_lora_weights.safetensors`, which
    `MPDiTPipeline.load_lora_weights` reads.

    Args:
        model ([`MPDiTTransformer2DModel`]): The model after [`add_lora`] (e.g. a copy holding the EMA weights).
        save_directory (`str` or `os.PathLike`): The folder.
        new_class_ids (`list[int]`): The classes added for the fine-tune: consecutive ids ending before the null class.
        id2label (`dict[int, str]`, *optional*): Names of the new classes (default `class <id>`).
    """
    from peft.utils import get_peft_model_state_dict

    from ..loaders.lora import MPDiTLoraLoaderMixin

    new_classes = None
    if new_class_ids:
        first = min(new_class_ids)
        if list(new_class_ids) != list(range(first, model.config.num_classes)):
            raise ValueError(f"`new_class_ids` must be the last class ids, got {list(new_class_ids)}.")
        new_classes = NewClasses.from_transformer(model, first, id2label)
    config = model.peft_config["default"].to_dict()
    MPDiTLoraLoaderMixin.save_lora_weights(
        save_directory,
        transformer_lora_layers=get_peft_model_state_dict(model, adapter_name="default"),
        transformer_lora_adapter_metadata=config,
        new_classes=new_classes,
    )
