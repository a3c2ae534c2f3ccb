"""The official MPDiT release's weight layout (GitHub quandao10/MPDiT): key mapping in both directions, the model
config read from tensor shapes, and reading `.pt` / `.safetensors` files.

The official `.pt` holds a dict with `"model"`, `"ema"`, `"opt"` and `"args"`; sampling uses `"ema"`. Heads follow the
official presets (12 at width 768, 16 otherwise) unless the caller or the checkpoint's `args` say otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .embeddings import get_2d_sincos_pos_embed_grid

WEIGHTS_CHOICES = ("ema", "model")

# Official names of the per-level modules, coarse to fine, by number of levels (spec section 5).
_LEVEL_NAMES = {
    2: {
        "blocks": ["downsample_blocks", "upsample_blocks"],
        "upsamplers": ["upsampler"],
        "skip_embeds": ["x_embedder_skip"],
        "skip_projs": ["linear_skip"],
        "pos_embeds": ["pos_embed_downsampled", "pos_embed"],
    },
    3: {
        "blocks": ["downsample_blocks", "upsample_blocks_lvl1", "upsample_blocks_lvl2"],
        "upsamplers": ["upsampler_lvl1", "upsampler_lvl2"],
        "skip_embeds": ["x_embedder_lvl1", "x_embedder_lvl2"],
        "skip_projs": ["linear_skip_lvl1", "linear_skip_lvl2"],
        "pos_embeds": ["pos_embed", "pos_embed_lvl1", "pos_embed_lvl2"],
    },
}

# Inside a block: official module -> ours. `attn.qkv` is split into to_q / to_k / to_v separately.
_BLOCK_MODULES = {"attn.proj": "attn.to_out.0", "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2"}

_PREFIXES_TO_STRIP = ("_orig_mod.", "module.")

# A Git LFS pointer left where the weights should be: a repository cloned without git-lfs.
_LFS_POINTER = b"version https://git-lfs"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_MAX_DETAIL = 200
_WEIGHTS_ONLY = "Weights only load failed"
_UNPICKLER_ERROR = "WeightsUnpickler error:"
_TORCH_ADVICE = ("(1)", "(2)", "Check the documentation", "Please file an issue")


class ConversionError(ValueError):
    """A checkpoint that does not have the official MPDiT layout."""


class UnreadableCheckpointError(ConversionError, OSError):
    """A weights file that cannot be read: damaged, truncated, or not a checkpoint at all.

    Both a [`ConversionError`] (a ValueError, what `from_single_file` and `convert_checkpoint` raise for a file that
    is not an official checkpoint) and an OSError (what diffusers' `from_pretrained` raises for a file it cannot
    read), so handlers written for either keep working. The message is one line naming the file.
    """


def unreadable_checkpoint(
    path: str | os.PathLike, detail: str = "", hint: str = "", reason: str | None = None
) -> UnreadableCheckpointError:
    """The error for a weights file that cannot be read, as every loader of the package words it.

    Args:
        path (`str` or `os.PathLike`): The file.
        detail (`str`, *optional*): What the reader said, on one line.
        hint (`str`, *optional*): What to do about it, appended to the message.
        reason (`str`, *optional*): Why the file cannot be read; by default that it is damaged, truncated or not a
            safetensors (or PyTorch) file, by its extension.
    """
    path = os.fspath(path)
    kind = "safetensors" if path.endswith(".safetensors") else "PyTorch"
    try:
        with open(path, "rb") as file:
            if file.read(len(_LFS_POINTER)) == _LFS_POINTER:
                reason, detail = "it is a Git LFS pointer, not the weights", ""
                hint = "install git-lfs and run `git lfs pull`"
    except OSError:
        pass
    reason = reason or f"the file is damaged, truncated or not a {kind} file"
    message = f"{path!r} is not a readable checkpoint: {reason}" + (f" ({detail})" if detail else "")
    return UnreadableCheckpointError(f"{message}; {hint}." if hint else f"{message}.")


def describe_read_error(error: BaseException) -> str:
    """A reader's exception in one short line: its type, and the part of its message that says what went wrong.

    Args:
        error (`BaseException`): What `safetensors` or `torch.load` raised.
    """
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    if text.startswith(_WEIGHTS_ONLY):
        # torch puts the reason after paragraphs of advice: after "WeightsUnpickler error:", or on a line of its own.
        rest = text.split(_UNPICKLER_ERROR, 1)[1] if _UNPICKLER_ERROR in text else text.partition("\n")[2]
        lines = [line.strip() for line in rest.splitlines()]
        lines = [line for line in lines if line and not line.startswith(_TORCH_ADVICE)]
        reason = f"{_WEIGHTS_ONLY}: {lines[0].split('. ')[0].rstrip('.')}" if lines else _WEIGHTS_ONLY
    else:
        reason = text.splitlines()[0].rstrip(".") if text else ""
    text = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _module_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(official module prefix, our module prefix) pairs for everything but the fused qkv and the position tables."""
    if config.get("modulation", "shared") != "shared":
        raise ConversionError("The official layout has one shared modulation; a per_block model has no official form.")
    levels = len(config["patch_sizes"])
    if levels not in _LEVEL_NAMES:
        raise ConversionError(f"The official layout has 2 or 3 levels; this config has {levels} (`patch_sizes`).")
    names = _LEVEL_NAMES[levels]
    pairs = [
        ("x_embedder.proj", "patch_embed.proj"),
        ("y_embedder.embedding_table", "class_embed.embedding_table"),
        ("time_modulation.1", "shared_modulation.1"),
        ("final_layer.linear", "final_layer.linear"),
    ]
    if config["time_embedding_type"] == "fno":
        pairs += [("t_embedder.fc0", "time_embed.lift"), ("t_embedder.fc1", "time_embed.proj")]
        for i in range(3):
            pairs += [
                (f"t_embedder.conv{i}.weights_real", f"time_embed.spectral_convs.{i}.weight_real"),
                (f"t_embedder.conv{i}.weights_imag", f"time_embed.spectral_convs.{i}.weight_imag"),
                (f"t_embedder.w{i}", f"time_embed.pointwise_convs.{i}"),
            ]
    else:
        pairs += [
            ("t_embedder.mlp.0", "time_embed.timestep_embedder.linear_1"),
            ("t_embedder.mlp.2", "time_embed.timestep_embedder.linear_2"),
        ]
    start = 0
    for level, depth in enumerate(config["depths"]):
        for i in range(depth):
            for official, ours in _BLOCK_MODULES.items():
                pairs.append((f"{names['blocks'][level]}.{i}.{official}", f"transformer_blocks.{start + i}.{ours}"))
        start += depth
        if level > 0:
            pairs.append((names["upsamplers"][level - 1] + ".proj", f"upsamplers.{level - 1}.proj"))
            pairs.append((names["upsamplers"][level - 1] + ".refine", f"upsamplers.{level - 1}.refine"))
            if config["skip_connections"]:
                pairs.append((names["skip_embeds"][level - 1] + ".proj", f"skip_embeds.{level - 1}.patch_embed.proj"))
                pairs.append((names["skip_projs"][level - 1], f"skip_embeds.{level - 1}.proj"))
    return pairs


def _qkv_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(official `...attn.qkv`, our `...attn`) prefixes, one per block."""
    names = _LEVEL_NAMES[len(config["patch_sizes"])]["blocks"]
    pairs, start = [], 0
    for level, depth in enumerate(config["depths"]):
        pairs += [(f"{names[level]}.{i}.attn.qkv", f"transformer_blocks.{start + i}.attn") for i in range(depth)]
        start += depth
    return pairs


def _official_pos_tables(config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    names = _LEVEL_NAMES[len(config["patch_sizes"])]["pos_embeds"]
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    tables = {}
    for name, patch in zip(names, config["patch_sizes"]):
        grid = config["sample_size"] // patch
        tables[name] = get_2d_sincos_pos_embed_grid(dim, grid, grid).float().unsqueeze(0)
    return tables


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removes the `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes from every key.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): A state dict.
    """
    pattern = re.compile("|".join(re.escape(p) for p in _PREFIXES_TO_STRIP))
    return {pattern.sub("", key): value for key, value in state_dict.items()}


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"Not an official MPDiT state dict: missing key {key!r}.")
    return state_dict[key]


def infer_config(state_dict: Mapping[str, torch.Tensor], num_attention_heads: int | None = None) -> dict[str, Any]:
    """Reads an `MPDiTTransformer2DModel` config from the tensor shapes of an official state dict.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): Official weights, prefixes already stripped.
        num_attention_heads (`int`, *optional*): Heads; by default 12 at width 768 and 16 otherwise (official presets).

    Returns:
        `dict`: keyword arguments for `MPDiTTransformer2DModel`.
    """
    x_embed = _require(state_dict, "x_embedder.proj.weight")
    dim, in_channels, patch = x_embed.shape[0], x_embed.shape[1], x_embed.shape[2]
    if "upsampler_lvl1.proj.weight" in state_dict:
        levels = 3
    elif "upsampler.proj.weight" in state_dict:
        levels = 2
    else:
        raise ConversionError(
            "Not an official MPDiT state dict: found neither `upsampler.proj.weight` (MPDiT) nor "
            "`upsampler_lvl1.proj.weight` (MPDiTv2)."
        )
    names = _LEVEL_NAMES[levels]
    patch_sizes = [patch]
    for upsampler in names["upsamplers"]:
        factor = math.isqrt(_require(state_dict, f"{upsampler}.proj.weight").shape[0] // dim)
        patch_sizes.append(patch_sizes[-1] // factor)
    depths = []
    for blocks in names["blocks"]:
        indices = {
            int(m.group(1)) for k in state_dict if (m := re.fullmatch(rf"{blocks}\.(\d+)\.attn\.qkv\.weight", k))
        }
        if not indices:
            raise ConversionError(f"Not an official MPDiT state dict: no blocks under `{blocks}`.")
        depths.append(max(indices) + 1)

    heads = num_attention_heads or (12 if dim == 768 else 16)
    if dim % heads:
        raise ConversionError(f"`num_heads`={heads} does not divide the width {dim}; pass --num-heads.")
    table = _require(state_dict, "y_embedder.embedding_table.weight")
    if "t_embedder.fc0.weight" in state_dict:
        time_embedding = {
            "time_embedding_type": "fno",
            "fno_width": state_dict["t_embedder.fc0.weight"].shape[0],
            "fno_modes": _require(state_dict, "t_embedder.conv0.weights_real").shape[2],
        }
    elif "t_embedder.mlp.0.weight" in state_dict:
        time_embedding = {"time_embedding_type": "mlp"}
    else:
        raise ConversionError("Not an official MPDiT state dict: no `t_embedder.fc0` (FNO) or `t_embedder.mlp` (MLP).")
    finest_pos = _require(state_dict, names["pos_embeds"][-1])
    final = _require(state_dict, "final_layer.linear.weight")
    return {
        "sample_size": patch_sizes[-1] * math.isqrt(finest_pos.shape[-2]),
        "in_channels": in_channels,
        "out_channels": final.shape[0] // patch_sizes[-1] ** 2,
        "patch_sizes": patch_sizes,
        "depths": depths,
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "mlp_ratio": _require(state_dict, "downsample_blocks.0.mlp.fc1.weight").shape[0] / dim,
        "num_classes": table.shape[0] - 1,
        "num_class_tokens": table.shape[1] // dim,
        "skip_connections": f"{names['skip_projs'][0]}.weight" in state_dict,
        **time_embedding,
    }


def _official_keys(config: Mapping[str, Any], model_cls: type) -> set[str]:
    with torch.device("meta"):
        model = model_cls(**config)
    return set(diffusers_to_official(model.state_dict(), config, with_pos_embeds=False)) | set(
        _LEVEL_NAMES[len(config["patch_sizes"])]["pos_embeds"]
    )


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], model_cls: type
) -> dict[str, torch.Tensor]:
    """Converts official weights (prefixes stripped) to the state dict of `model_cls(**config)`.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): Official weights (`"ema"` or `"model"` entry of the checkpoint).
        config (`Mapping[str, Any]`): The model config, as `infer_config` reads it (plus any settings it cannot read).
        model_cls (`type`): [`MPDiTTransformer2DModel`] or a subclass; built on the meta device to list its keys.

    Raises:
        ConversionError: naming every missing and unexpected key, or a position table that differs from the standard
            sin-cos table.
    """
    expected = _official_keys(config, model_cls)
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise ConversionError(
            "The checkpoint does not match the official MPDiT layout inferred from its shapes "
            f"({len(config['patch_sizes'])} levels, depths {list(config['depths'])}).\n"
            f"  missing keys ({len(missing)}): {missing}\n  unexpected keys ({len(unexpected)}): {unexpected}"
        )
    for name, table in _official_pos_tables(config).items():
        stored = state_dict[name].float().reshape(table.shape)
        if not torch.allclose(stored, table, atol=1e-5):
            raise ConversionError(
                f"`{name}` is not the standard 2-D sin-cos table for a {config['sample_size']}-pixel input; "
                "MPDiT computes its position tables and cannot carry custom ones."
            )

    converted = {}
    for official, ours in _module_map(config):
        for key in [k for k in state_dict if k == official or k.startswith(official + ".")]:
            converted[ours + key[len(official) :]] = state_dict[key]
    for official, ours in _qkv_map(config):
        for suffix in ("weight", "bias"):
            for name, chunk in zip(("to_q", "to_k", "to_v"), state_dict[f"{official}.{suffix}"].chunk(3, dim=0)):
                converted[f"{ours}.{name}.{suffix}"] = chunk.clone()
    return converted


def diffusers_to_official(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], with_pos_embeds: bool = True
) -> dict[str, torch.Tensor]:
    """Converts an `MPDiTTransformer2DModel` state dict back to the official layout (for the official sampler).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): Our weights.
        config (`Mapping[str, Any]`): The model config; needs 2 or 3 levels.
        with_pos_embeds (`bool`, defaults to `True`): Add the fixed position tables the official code stores.
    """
    official = {}
    for theirs, ours in _module_map(config):
        for key in [k for k in state_dict if k == ours or k.startswith(ours + ".")]:
            official[theirs + key[len(ours) :]] = state_dict[key]
    for theirs, ours in _qkv_map(config):
        for suffix in ("weight", "bias"):
            official[f"{theirs}.{suffix}"] = torch.cat(
                [state_dict[f"{ours}.{n}.{suffix}"] for n in ("to_q", "to_k", "to_v")]
            )
    if with_pos_embeds:
        official.update(_official_pos_tables(config))
    return official


def load_official_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, Any], weights: str = "ema"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads one set of weights, and the training arguments, from an official checkpoint, safely (`weights_only=True`).

    A bare state dict (a `.pt` holding only tensors, a `.safetensors` file, or a dict of tensors) is accepted too and
    returned as it is: it holds one set of weights, so `weights` has nothing to choose from, and no arguments.

    Args:
        checkpoint (`str`, `os.PathLike` or `Mapping`): Path of the `.pt` or `.safetensors` file, or the loaded dict
            (`{"model", "ema", "opt", "args"}` or a state dict).
        weights (`str`, defaults to `"ema"`): `"ema"` (for sampling) or `"model"` (the raw training weights) of a full
            official checkpoint.

    Returns:
        `(state_dict, args)`: the weights with `_orig_mod.` / `module.` prefixes stripped, and the checkpoint's
        `args` (the official `argparse.Namespace`) as a dict, empty when there are none.
    """
    if weights not in WEIGHTS_CHOICES:
        raise ValueError(f"`weights` must be one of {WEIGHTS_CHOICES}, got {weights!r}.")
    if isinstance(checkpoint, Mapping):
        obj, name = checkpoint, "the checkpoint dict"
    else:
        name = str(checkpoint)
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"`checkpoint` {name!r} is not a file.")
        obj = _read_file(name)
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return strip_prefixes(obj), {}
    if weights not in obj:
        raise ConversionError(f"{name} has no {weights!r} entry; it has {sorted(map(str, obj))}.")
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, Mapping) else {}
    return strip_prefixes(obj[weights]), args


def _read_file(path: str) -> Mapping[str, Any]:
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as error:
            raise unreadable_checkpoint(path, describe_read_error(error)) from None
    # The official "args" entry is an argparse.Namespace: allow that one class, and nothing else, to be unpickled.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a file that is not a checkpoint
        reason = None
        if isinstance(error, pickle.UnpicklingError):
            # weights_only refuses damaged bytes and objects it may not build alike: say both.
            reason = (
                "the file is damaged or truncated, not a PyTorch file, or holds objects other than tensors and the "
                "official `args`"
            )
        raise unreadable_checkpoint(path, describe_read_error(error), reason=reason) from None
    if not isinstance(obj, Mapping):
        raise unreadable_checkpoint(path, reason=f"it holds a {type(obj).__name__}, not a checkpoint dict")
    return obj
