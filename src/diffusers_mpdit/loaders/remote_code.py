"""Saved pipelines that diffusers' own `DiffusionPipeline.from_pretrained(path_or_repo, trust_remote_code=True)` loads.

diffusers resolves a third-party pipeline through the list form of `_class_name` in `model_index.json` (`[file,
class]` with `<file>.py` beside it), and a third-party component through `[file, class]` with `<component>/<file>.py`
(the only form its Hub download accepts). Our folders carry both: each file is a one-line entry point that imports the
class from the installed package (`models.remote_code`).

`MPDiTPipeline.from_pretrained` reads those entries back as the package's own classes, so a folder loads without
running any file in it and without `trust_remote_code`; an entry whose file is not exactly one of ours is left to
diffusers, which then asks for `trust_remote_code` as it should.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from ..models.remote_code import read_entry_point, write_entry_point

INDEX = "model_index.json"


class RemoteCodeMixin:
    """`save_pretrained` that writes diffusers' remote-code entries, and `load_config` that reads them back, for
    [`MPDiTPipeline`]."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """diffusers' `save_pretrained`, then the entry points and their entries in `model_index.json`.

        Args:
            save_directory (`str` or `os.PathLike`): The folder.
            safe_serialization (`bool`, defaults to `True`): Write safetensors.
            variant (`str`, *optional*): Weight file variant, e.g. `"fp16"`.
            max_shard_size (`int` or `str`, *optional*): Shard weight files above this size.
            push_to_hub (`bool`, defaults to `False`): Upload the folder afterwards with `push_to_hub`; `repo_id`
                (default: the folder's name), `token`, `private`, `commit_message` and `create_pr` go to it.
            **kwargs: For `push_to_hub`.
        """
        super().save_pretrained(
            save_directory, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size
        )
        add_entry_points(save_directory, self)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.abspath(save_directory)))
            self.push_to_hub(repo_id, safe_serialization=safe_serialization, variant=variant, **kwargs)

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """diffusers' `load_config`, with our remote-code entries of a local pipeline folder read as the package's
        classes (see the module docstring). Arguments as in `ConfigMixin.load_config`."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        folder = str(pretrained_model_name_or_path)
        if os.path.isfile(folder):
            folder = os.path.dirname(folder)
        if os.path.isfile(os.path.join(folder, INDEX)):
            resolve_entry_points(folder, config)
        return loaded


def add_entry_points(folder: str | os.PathLike, pipeline: Any) -> None:
    """Writes an entry point for the pipeline and each component of this package, and switches their entries in
    `model_index.json` to diffusers' `[file, class]` form; the index is rewritten under a temporary name first.

    Args:
        folder (`str` or `os.PathLike`): A folder `pipeline.save_pretrained` just wrote.
        pipeline: The pipeline.
    """
    index_path = os.path.join(folder, INDEX)
    if not os.path.isfile(index_path):  # not on non-main processes
        return
    with open(index_path, encoding="utf-8") as file:
        index = json.load(file)
    index["_class_name"] = [write_entry_point(folder, type(pipeline)), type(pipeline).__name__]
    for name, component in pipeline.components.items():
        entry = index.get(name)
        if component is None or not isinstance(entry, list) or not _is_ours(type(component)):
            continue
        index[name] = [write_entry_point(os.path.join(folder, name), type(component)), type(component).__name__]
    tmp = f"{index_path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, index_path)


def resolve_entry_points(folder: str | os.PathLike, config: dict[str, Any]) -> None:
    """Replaces, in a loaded `model_index.json`, each `[file, class]` entry whose file is exactly one of our entry
    points by the package's own `_class_name` or `[module, class]`, importing that module of the installed package
    (diffusers looks third-party modules up in `sys.modules` only).

    Args:
        folder (`str` or `os.PathLike`): The pipeline folder.
        config (`dict`): Its loaded `model_index.json`, changed in place.
    """
    class_name = config.get("_class_name")
    if isinstance(class_name, list) and len(class_name) == 2:
        found = read_entry_point(os.path.join(folder, f"{class_name[0]}.py"))
        if found and found[1] == class_name[1]:
            config["_class_name"] = class_name[1]
    for name, entry in list(config.items()):
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str):
            continue
        found = read_entry_point(os.path.join(folder, name, f"{entry[0]}.py"))
        if found and found[1] == entry[1]:
            importlib.import_module(found[0])
            config[name] = [found[0], found[1]]


def _is_ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] == __name__.split(".")[0]
