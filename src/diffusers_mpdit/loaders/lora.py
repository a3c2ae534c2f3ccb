"""LoRA for [`MPDiTPipeline`]: diffusers' transformer-only loader (as `SanaLoraLoaderMixin`), plus new classes.

MPDiT differs from a text-conditioned model in one way: a fine-tune may teach it classes it never had, and those
live in rows of the class-token table, which a LoRA cannot express. A LoRA file saved here may therefore carry the
new classes' rows under `transformer.class_embed.new_class_rows`, with their names and the class count of the model
they extend in the safetensors header (`mpdit_new_classes`). `load_lora_weights` adds those classes (ids after the
existing ones, names into `id2label`); `delete_adapters` and `unload_lora_weights` take them out again, so the base
model comes back exactly, except for adapters that were fused, whose classes stay with their fused weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import safetensors.torch
import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LoraBaseMixin, _fetch_state_dict
from diffusers.utils import logging
from diffusers.utils.peft_utils import get_adapter_name
from huggingface_hub.utils import validate_hf_hub_args
from torch import nn

from ..atomic import atomic_path
from ..paths import looks_like_local_path

logger = logging.get_logger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
NEW_CLASS_ROWS_KEY = "transformer.class_embed.new_class_rows"
NEW_CLASSES_METADATA_KEY = "mpdit_new_classes"


@dataclass
class NewClasses:
    """Classes a fine-tune added to a model, as a LoRA file stores them.

    Args:
        rows (`torch.Tensor`): Their class-token rows, `(N, num_class_tokens * hidden_size)`.
        names (`list[str]`): Their names, one per row.
        base_num_classes (`int`): The class count of the model they were added to; their ids there were
            `base_num_classes` to `base_num_classes + N - 1`.
    """

    rows: torch.Tensor
    names: list[str]
    base_num_classes: int

    def __post_init__(self):
        if self.rows.ndim != 2 or len(self.names) != self.rows.shape[0]:
            raise ValueError(
                f"`rows` must be (classes, width) with one name per row, got shape {tuple(self.rows.shape)} and "
                f"{len(self.names)} names."
            )

    @classmethod
    def from_transformer(cls, transformer, first_new_id: int, id2label: dict[int, str] | None = None) -> NewClasses:
        """The classes of `transformer` from id `first_new_id` on, with their current rows.

        Args:
            transformer ([`MPDiTTransformer2DModel`]): A grown model (e.g. by `add_classes`).
            first_new_id (`int`): The base model's class count: classes from this id on are the new ones.
            id2label (`dict[int, str]`, *optional*): Their names (default `class <id>`).
        """
        num_classes = transformer.config.num_classes
        if not 0 < first_new_id < num_classes:
            raise ValueError(f"`first_new_id` must be in [1, {num_classes - 1}], got {first_new_id}.")
        rows = transformer.class_embed.embedding_table.weight.detach()[first_new_id:num_classes]
        names = [(id2label or {}).get(i, f"class {i}") for i in range(first_new_id, num_classes)]
        return cls(rows.float().cpu().clone(), names, first_new_id)

    @classmethod
    def from_pipeline(cls, pipeline, first_new_id: int) -> NewClasses:
        """The classes of `pipeline` from id `first_new_id` on, with their current rows and names.

        Args:
            pipeline ([`MPDiTPipeline`]): A pipeline whose transformer was grown (e.g. by `pipeline.add_classes`).
            first_new_id (`int`): The base model's class count: classes from this id on are the new ones.
        """
        return cls.from_transformer(pipeline.transformer, first_new_id, pipeline.id2label)


def _check_lora_fits(transformer: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuses, in one line, a LoRA whose layers are not this transformer's (another model, another size)."""
    what = (
        f"this MPDiT (hidden size {transformer.hidden_size}, depths {tuple(transformer.config.depths)}, "
        f"{len(transformer.transformer_blocks)} blocks)"
    )
    for key, value in state_dict.items():
        name, sep, rest = key.removeprefix("transformer.").partition(".lora_")
        if not sep:
            continue
        try:
            layer = transformer.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"This LoRA does not fit {what}: it has a layer {name!r}, which the model lacks."
            ) from None
        layer = getattr(layer, "base_layer", layer)  # already wrapped by another adapter
        if not isinstance(layer, nn.Linear) or value.ndim != 2:
            raise ValueError(f"This LoRA does not fit {what}: {name!r} is not a Linear layer here.")
        expected = layer.in_features if rest.startswith("A.") else layer.out_features
        got = value.shape[1] if rest.startswith("A.") else value.shape[0]
        if got != expected:
            side = "inputs" if rest.startswith("A.") else "outputs"
            raise ValueError(
                f"This LoRA does not fit {what}: its {key!r} is for a layer of {got} {side}, {name!r} has {expected}."
            )


class MPDiTLoraLoaderMixin(LoraBaseMixin):
    """Loads and saves LoRA adapters of the pipeline's transformer, and the classes a fine-tune added.

    diffusers' pipeline LoRA API: `load_lora_weights`, `save_lora_weights`, `fuse_lora`, `unfuse_lora`,
    `unload_lora_weights`, `set_adapters`, `delete_adapters`, `disable_lora` / `enable_lora`, `get_active_adapters`.
    Needs `peft`.
    """

    _lora_loadable_modules = ["transformer"]
    transformer_name = "transformer"

    @classmethod
    @validate_hf_hub_args
    def lora_state_dict(
        cls, pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor], **kwargs
    ) -> dict[str, torch.Tensor] | tuple:
        """Reads a LoRA: a local folder or file, a Hub repo id, or a state dict.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`): Where the LoRA is.
            **kwargs: `weight_name`, `subfolder`, `revision`, `token`, `cache_dir`, `local_files_only`,
                `force_download`, `proxies`, `use_safetensors`, as in diffusers; `return_lora_metadata=True` returns
                `(state_dict, lora_metadata, new_classes_metadata)`.
        """
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        use_safetensors = kwargs.pop("use_safetensors", None)
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        weight_name = kwargs.pop("weight_name", None)
        if isinstance(source, str):
            given, source = source, os.path.expanduser(source)
            if os.path.isfile(source):
                # A file path: diffusers takes a folder or repo id plus `weight_name`.
                source, weight_name = os.path.split(source)
                source = source or "."
            elif looks_like_local_path(given) and not os.path.isdir(source):
                raise FileNotFoundError(f"No LoRA folder or file at {given!r}.")
        state_dict, metadata, file_metadata = _fetch_state_dict(
            pretrained_model_name_or_path_or_dict=source,
            weight_name=weight_name,
            use_safetensors=True if use_safetensors is None else use_safetensors,
            local_files_only=kwargs.pop("local_files_only", None),
            cache_dir=kwargs.pop("cache_dir", None),
            force_download=kwargs.pop("force_download", False),
            proxies=kwargs.pop("proxies", None),
            token=kwargs.pop("token", None),
            revision=kwargs.pop("revision", None),
            subfolder=kwargs.pop("subfolder", None),
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            allow_pickle=use_safetensors is None,
            return_file_metadata=True,
        )
        if kwargs:
            raise TypeError(f"lora_state_dict() got unexpected keyword arguments {sorted(kwargs)}.")
        classes = None
        if file_metadata and NEW_CLASSES_METADATA_KEY in file_metadata:
            classes = json.loads(file_metadata[NEW_CLASSES_METADATA_KEY])
        return (state_dict, metadata, classes) if return_lora_metadata else state_dict

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        **kwargs,
    ) -> None:
        """Loads a LoRA into the transformer under `adapter_name`, and adds the classes it carries.

        New classes take the ids after the pipeline's current ones and their names join `id2label`, so
        `pipe("their name")` draws them; the old classes keep their ids.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`): A folder holding
                `pytorch_lora_weights.safetensors`, a file, a Hub repo id, or a state dict.
            adapter_name (`str`, *optional*): The adapter's name (default `default_<n>`); must not be in use.
            hotswap (`bool`, defaults to `False`): Replace the weights of the loaded adapter `adapter_name` in place
                (diffusers' hotswapping; not for LoRAs that add classes).
            **kwargs: `class_names` (`list[str]`) names a state dict's new classes (a file records its own); the rest
                as in [`~MPDiTLoraLoaderMixin.lora_state_dict`], and `low_cpu_mem_usage`.
        """
        class_names = kwargs.pop("class_names", None)
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = dict(pretrained_model_name_or_path_or_dict)
        state_dict, metadata, classes = self.lora_state_dict(
            pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs
        )
        state_dict = dict(state_dict)
        rows = state_dict.pop(NEW_CLASS_ROWS_KEY, None)
        if not state_dict or not all("lora" in key for key in state_dict):
            raise ValueError("Invalid LoRA checkpoint: every parameter name must contain 'lora'.")
        transformer = self.transformer
        _check_lora_fits(transformer, state_dict)
        new = None
        if rows is not None:
            new = self._new_classes(transformer, rows, classes, class_names)
            if hotswap:
                raise ValueError("`hotswap=True` cannot load a LoRA that adds classes; load it as a new adapter.")
            self.check_new_class_names(new.names)  # before the adapter goes in, so a refusal changes nothing
        adapter_name = adapter_name or get_adapter_name(transformer)
        transformer.load_lora_adapter(
            state_dict,
            network_alphas=None,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )
        if new is not None:  # only once the adapter loaded: a refused LoRA leaves the pipeline as it was
            ids = self.add_classes(new.names, rows=new.rows)
            self._lora_classes = {**getattr(self, "_lora_classes", {}), adapter_name: ids}
            logger.info(f"Adapter {adapter_name!r} added classes {dict(zip(ids, new.names))}.")

    @staticmethod
    def _new_classes(transformer, rows: torch.Tensor, classes: dict | None, class_names: list[str] | None):
        num_classes = transformer.config.num_classes
        if transformer.class_embed is None:
            raise ValueError("This LoRA adds classes, but the transformer is unconditional (num_classes=0).")
        names = class_names or (classes or {}).get("names")
        base = (classes or {}).get("base_num_classes", num_classes)
        if names is None:
            names = [f"class {num_classes + i}" for i in range(rows.shape[0])]
        if base > num_classes:
            raise ValueError(
                f"This LoRA adds classes to a model of {base} classes; the transformer has {num_classes}: it was "
                "trained for another model."
            )
        width = transformer.class_embed.embedding_table.weight.shape[1]
        if rows.ndim != 2 or rows.shape[1] != width or len(names) != rows.shape[0]:
            raise ValueError(
                f"This LoRA's new classes do not fit this MPDiT: rows of shape {tuple(rows.shape)} with "
                f"{len(names)} names, the class tokens take {width} values per class."
            )
        return NewClasses(rows, list(names), base)

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        transformer_lora_layers: dict[str, torch.Tensor | nn.Module] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata: dict | None = None,
        new_classes: NewClasses | None = None,
    ) -> None:
        """Saves a LoRA of the transformer, and the classes it added, as one safetensors file (written under a
        temporary name, then renamed).

        Args:
            save_directory (`str` or `os.PathLike`): The folder (created if missing).
            transformer_lora_layers (`dict`): The adapter's state dict, e.g. peft's
                `get_peft_model_state_dict(pipe.transformer)`.
            is_main_process (`bool`, defaults to `True`): Only the main process writes.
            weight_name (`str`, *optional*): The file name (default `pytorch_lora_weights.safetensors`).
            save_function (`Callable`, *optional*): Writes `(state_dict, path)` instead of safetensors (then
                `new_classes` cannot be saved: its names live in the safetensors header).
            safe_serialization (`bool`, defaults to `True`): safetensors, or a pickle with `torch.save`.
            transformer_lora_adapter_metadata (`dict`, *optional*): The adapter's `LoraConfig` as a dict, so that a
                load rebuilds it exactly (rank, alpha, target modules).
            new_classes ([`NewClasses`], *optional*): Classes the fine-tune added (`NewClasses.from_pipeline`).
        """
        if not transformer_lora_layers:
            raise ValueError("`transformer_lora_layers` is required: the adapter's state dict.")
        if not is_main_process:
            return
        state_dict = cls.pack_weights(transformer_lora_layers, cls.transformer_name)
        header = {"format": "pt"}
        if transformer_lora_adapter_metadata:
            packed = {f"{cls.transformer_name}.{k}": v for k, v in transformer_lora_adapter_metadata.items()}
            packed = {k: list(v) if isinstance(v, set) else v for k, v in packed.items()}
            header[LORA_ADAPTER_METADATA_KEY] = json.dumps(packed, indent=2, sort_keys=True)
        if new_classes is not None:
            if save_function is not None or not safe_serialization:
                raise ValueError("`new_classes` needs safetensors: their names are saved in its header.")
            state_dict[NEW_CLASS_ROWS_KEY] = new_classes.rows.detach().cpu().contiguous()
            header[NEW_CLASSES_METADATA_KEY] = json.dumps(
                {"names": new_classes.names, "base_num_classes": new_classes.base_num_classes}
            )
        weight_name = weight_name or (LORA_WEIGHT_NAME if safe_serialization else "pytorch_lora_weights.bin")
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` {os.fspath(save_directory)!r} is a file, not a folder.")
        os.makedirs(save_directory, exist_ok=True)
        with atomic_path(os.path.join(save_directory, weight_name)) as tmp:
            if save_function is not None:
                save_function(state_dict, tmp)
            elif safe_serialization:
                safetensors.torch.save_file(state_dict, tmp, metadata=header)
            else:
                torch.save(state_dict, tmp)
        logger.info(f"LoRA weights saved in {os.path.join(save_directory, weight_name)}")

    def fuse_lora(
        self,
        components: list[str] = ["transformer"],  # noqa: B006 (diffusers' signature)
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs,
    ) -> None:
        """Merges the adapters into the transformer's weights (diffusers' `fuse_lora`); the adapters' classes then
        stay when the LoRA is unloaded.

        Args:
            components (`list[str]`, defaults to `["transformer"]`): The components to fuse.
            lora_scale (`float`, defaults to 1.0): How much of the adapters to merge.
            safe_fusing (`bool`, defaults to `False`): Refuse to fuse weights that would hold NaNs.
            adapter_names (`list[str]`, *optional*): The adapters to fuse (default: the active ones).
        """
        super().fuse_lora(
            components=components,
            lora_scale=lora_scale,
            safe_fusing=safe_fusing,
            adapter_names=adapter_names,
            **kwargs,
        )

    def unfuse_lora(self, components: list[str] = ["transformer"], **kwargs) -> None:  # noqa: B006
        """Undoes `fuse_lora`.

        Args:
            components (`list[str]`, defaults to `["transformer"]`): The components to unfuse.
        """
        super().unfuse_lora(components=components, **kwargs)

    def _fused_adapters(self) -> set[str]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        fused = set()
        for module in self.transformer.modules():
            if isinstance(module, BaseTunerLayer):
                fused.update(module.merged_adapters)
        return fused

    def _remove_adapter_classes(self, adapter_names: set[str]) -> None:
        added = dict(getattr(self, "_lora_classes", {}))
        removed = [i for name in adapter_names for i in added.pop(name, [])]
        if removed:
            new_ids = self.remove_classes(removed)
            added = {name: [new_ids[i] for i in ids] for name, ids in added.items()}
        self._lora_classes = added

    def delete_adapters(self, adapter_names: list[str] | str) -> None:
        """Deletes adapters, and the classes they added (those of a fused adapter stay, as its weights do).

        Args:
            adapter_names (`str` or `list[str]`): The adapters to delete.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        fused = self._fused_adapters()
        super().delete_adapters(names)
        self._remove_adapter_classes(set(names) - fused)

    def unload_lora_weights(self) -> None:
        """Removes every adapter, and the classes of those not fused: after loading and unloading without fusing,
        the pipeline is the base pipeline exactly. Fused adapters' weights and classes stay."""
        fused = self._fused_adapters()
        loaded = set(getattr(self, "_lora_classes", {}))
        super().unload_lora_weights()
        self._remove_adapter_classes(loaded - fused)
        self._lora_classes = {}
