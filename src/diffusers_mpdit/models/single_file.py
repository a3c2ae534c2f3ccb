"""`MPDiTTransformer2DModel.from_single_file`: an official MPDiT checkpoint, local, on the Hub or in memory, in one call.

diffusers' `FromOriginalModelMixin` needs a mapping registered inside diffusers itself, so a third-party model brings
its own loader. It takes the same file references, Hub options, config overrides, `dtype`, `device` and
`quantization_config`, and loads through diffusers' own meta-device loader and quantizers.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch

from .official_layout import (
    ConversionError,
    convert_official_state_dict,
    infer_config,
    load_official_checkpoint,
)
from .presets import PRESETS

# Settings the tensor shapes cannot show, read from the official `args` under any of these names (our config key,
# then the spellings an argparse flag would have; the official release's own flag names are not yet published).
ARGS_SETTINGS = {
    "fno_grid_size": ("fno_grid_size", "fno_grid", "grid_size"),
    "num_attention_heads": ("num_attention_heads", "num_heads"),
}


class FromOfficialCheckpointMixin:
    """Adds `from_single_file` to [`MPDiTTransformer2DModel`]."""

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path_or_dict: str | os.PathLike | Mapping[str, Any],
        weights: str = "ema",
        config: str | os.PathLike | Mapping[str, Any] | None = None,
        subfolder: str | None = None,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        quantization_config: Any = None,
        force_download: bool = False,
        proxies: dict[str, str] | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
        **config_overrides: Any,
    ) -> Any:
        """Loads an official MPDiT/MPDiTv2 checkpoint (GitHub quandao10/MPDiT), converting it on the fly.

        The configuration comes from three places, later ones winning: the tensor shapes (levels, widths, depths,
        classes, class tokens, time embedding); settings the shapes cannot show (`fno_grid_size`, the head count) from
        the checkpoint's `args` when it records them, or the preset `args.model` names when its width matches; then
        `config` and keyword overrides. An override that contradicts the shapes is an error.

        Args:
            pretrained_model_link_or_path_or_dict (`str`, `os.PathLike` or `Mapping`): A local `.pt` (the official
                `{"model", "ema", "opt", "args"}` dict) or `.safetensors` state dict; a Hub file in the form diffusers'
                single-file loaders take, `https://huggingface.co/<repo_id>/blob/main/<file>` (also `hf.co/...`); or
                such a dict already loaded.
            weights (`str`, defaults to `"ema"`): Which entry of a full checkpoint: `"ema"` (for sampling) or
                `"model"`.
            config (`str`, `os.PathLike` or `Mapping`, *optional*): Config values over those read from the
                checkpoint: a dict, or a diffusers model folder, `config.json` or Hub repo id to read them from.
            subfolder (`str`, *optional*): The subfolder of `config` that holds `config.json` (e.g. `"transformer"`).
            dtype (`torch.dtype`, *optional*): The weights' dtype (`torch_dtype` is accepted too); modules in
                `_keep_in_fp32_modules` stay float32.
            device (`str` or `torch.device`, *optional*): Where to put the weights (default CPU).
            quantization_config (*optional*): A diffusers quantization config (`TorchAoConfig`, `QuantoConfig`,
                `BitsAndBytesConfig`, ...), applied while loading.
            force_download, proxies, token, cache_dir, local_files_only, revision: As in `huggingface_hub.hf_hub_download`,
                for Hub files and a Hub `config`.
            **config_overrides: Single config values, e.g. `fno_grid_size=64` or `num_attention_heads=8`.

        Returns:
            The model, in eval mode.

        Raises:
            ConversionError: for a file that is not an official checkpoint, or an override that disagrees with it.
        """
        hub_kwargs = {
            "force_download": force_download,
            "proxies": proxies,
            "token": token,
            "cache_dir": cache_dir,
            "local_files_only": bool(local_files_only),
            "revision": revision,
        }
        source = pretrained_model_link_or_path_or_dict
        if not isinstance(source, Mapping) and not os.path.isfile(source):
            source = _download(str(source), **hub_kwargs)
        state_dict, args = load_official_checkpoint(source, weights)

        overrides = _read_config(cls, config, subfolder, hub_kwargs) if config is not None else {}
        overrides.update(config_overrides)
        model_config = resolve_config(cls, state_dict, args, overrides)
        converted = convert_official_state_dict(state_dict, model_config, cls)
        return _load_into_model(cls, model_config, converted, dtype or torch_dtype, device, quantization_config)


def resolve_config(
    model_cls: type, state_dict: Mapping[str, torch.Tensor], args: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The model config of an official checkpoint: its shapes, then its `args`, then `overrides`.

    Args:
        model_cls (`type`): The model class, whose `__init__` names the config keys.
        state_dict (`Mapping[str, torch.Tensor]`): Official weights, prefixes stripped.
        args (`Mapping[str, Any]`): The checkpoint's training arguments (may be empty).
        overrides (`Mapping[str, Any]`): Config values the caller gives.

    Raises:
        ConversionError: for an unknown key, or an override that contradicts the tensor shapes.
    """
    known = set(inspect.signature(model_cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConversionError(f"Unknown config keys {unknown} for {model_cls.__name__}; it takes {sorted(known)}.")
    width = _width(state_dict)
    hidden = {}
    for key, names in ARGS_SETTINGS.items():
        found = [args[name] for name in names if args.get(name) is not None]
        if found:
            hidden[key] = found[0]
    preset = PRESETS.get(str(args.get("model")))
    if preset and preset["num_attention_heads"] * preset["attention_head_dim"] == width:
        hidden.setdefault("num_attention_heads", preset["num_attention_heads"])
    requested = {**hidden, **overrides}

    # Only the width is in the shapes: a head count (or head size) gives the other.
    heads, head_dim = requested.pop("num_attention_heads", None), requested.pop("attention_head_dim", None)
    if heads is None and head_dim is not None:
        heads = width // head_dim if head_dim > 0 and width % head_dim == 0 else 0
    if heads is not None and (heads < 1 or width % heads or (head_dim is not None and heads * head_dim != width)):
        raise ConversionError(
            f"`num_attention_heads` x `attention_head_dim` must equal the checkpoint's width {width}, got "
            f"{heads} x {head_dim if head_dim is not None else 'width / heads'}."
        )
    config = infer_config(state_dict, heads)
    for key, value in requested.items():
        if key in config and _normalise(value) != _normalise(config[key]):
            raise ConversionError(
                f"`{key}`={value!r} disagrees with the checkpoint, whose tensor shapes give {config[key]!r}."
            )
        config[key] = value
    return config


def _width(state_dict: Mapping[str, torch.Tensor]) -> int:
    if "x_embedder.proj.weight" not in state_dict:
        raise ConversionError("Not an official MPDiT state dict: missing key 'x_embedder.proj.weight'.")
    return state_dict["x_embedder.proj.weight"].shape[0]


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def _read_config(model_cls: type, config: Any, subfolder: str | None, hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    if isinstance(config, Mapping):
        values = dict(config)
    else:
        values = dict(model_cls.load_config(config, subfolder=subfolder, **hub_kwargs))
    # diffusers' bookkeeping (`_class_name`, `_diffusers_version`, ...) and the auto-class map are not settings.
    return {k: v for k, v in values.items() if not k.startswith("_") and k != "auto_map"}


def _load_into_model(model_cls, config, state_dict, dtype, device, quantization_config):
    """A meta-device model filled by diffusers' `load_model_dict_into_meta`, with `_keep_in_fp32_modules` honoured;
    with a `quantization_config`, diffusers' own `from_pretrained` on a temporary folder, since each quantizer's
    loading hooks expect that exact path (Quanto's layers, for one, are left empty by a direct fill)."""
    from accelerate import init_empty_weights
    from diffusers.models.model_loading_utils import load_model_dict_into_meta

    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"`dtype` must be a torch.dtype, got {dtype!r}.")
    device = torch.device(device) if device is not None else torch.device("cpu")
    with init_empty_weights():
        model = model_cls.from_config(config)
    if quantization_config is not None:
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory(prefix="mpdit-single-file-") as folder:
            model.save_config(folder)
            weights = {key: value.contiguous() for key, value in state_dict.items()}
            save_file(weights, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
            del weights
            return model_cls.from_pretrained(
                folder, dtype=dtype, quantization_config=quantization_config, device_map={"": device}
            ).eval()
    keep_in_fp32 = list(model_cls._keep_in_fp32_modules or [])
    load_model_dict_into_meta(
        model, state_dict, dtype=dtype, device_map={"": device}, keep_in_fp32_modules=keep_in_fp32
    )
    return model.eval()


def _download(link: str, force_download, proxies, token, cache_dir, local_files_only, revision) -> str:
    from diffusers.loaders.single_file_utils import _extract_repo_id_and_weights_name, is_valid_url
    from huggingface_hub import hf_hub_download

    if not is_valid_url(link):
        raise ValueError(
            f"`pretrained_model_link_or_path_or_dict` {link!r} is neither a file nor a Hub file URL "
            "(https://huggingface.co/<repo_id>/blob/main/<file>)."
        )
    repo_id, filename = _extract_repo_id_and_weights_name(link)
    if filename is None:
        raise ValueError(
            f"`pretrained_model_link_or_path_or_dict` {link!r} names no file; expected "
            "https://huggingface.co/<repo_id>/blob/main/<file>."
        )
    return hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
        proxies=proxies,
    )
