"""`MPDiTTransformer2DModel.from_single_file`: an official MPDiT checkpoint, local or on the Hub, in one call.

diffusers' `FromOriginalModelMixin` needs a mapping registered inside diffusers itself, so a third-party model brings
its own loader; it accepts the same file references and Hub options.
"""

from __future__ import annotations

import os
from typing import Any

import torch


class FromOfficialCheckpointMixin:
    """Adds `from_single_file` to [`MPDiTTransformer2DModel`]."""

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path: str | os.PathLike,
        weights: str = "ema",
        num_attention_heads: int | None = None,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
        force_download: bool = False,
        proxies: dict[str, str] | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
    ) -> Any:
        """Loads an official MPDiT/MPDiTv2 checkpoint (GitHub quandao10/MPDiT), converting it on the fly.

        The configuration (levels, widths, depths, classes, class tokens, time embedding) is read from the tensor
        shapes, and the layout is checked key by key, as `mpdit convert` does.

        Args:
            pretrained_model_link_or_path (`str` or `os.PathLike`): A local `.pt` (the official `{"model", "ema",
                "opt", "args"}` dict) or `.safetensors` state dict, or a Hub file in the form diffusers' single-file
                loaders take: `https://huggingface.co/<repo_id>/blob/main/<file>` (also `hf.co/...`).
            weights (`str`, defaults to `"ema"`): Which entry of a `.pt` checkpoint: `"ema"` (for sampling) or
                `"model"`.
            num_attention_heads (`int`, *optional*): Heads; by default the official presets' (12 at width 768, 16
                otherwise).
            dtype (`torch.dtype`, *optional*): Cast the weights (`torch_dtype` is accepted too).
            force_download, proxies, token, cache_dir, local_files_only, revision: As in `huggingface_hub.hf_hub_download`,
                for Hub files.

        Returns:
            The model, in eval mode.
        """
        from ..convert import load_official_state_dict, official_to_diffusers

        path = str(pretrained_model_link_or_path)
        if not os.path.isfile(path):
            path = _download(path, force_download, proxies, token, cache_dir, local_files_only, revision)
        config, state_dict = official_to_diffusers(load_official_state_dict(path, weights), num_attention_heads)
        with torch.device("meta"):
            model = cls(**config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        if dtype is not None or torch_dtype is not None:
            model.to(dtype or torch_dtype)
        return model.eval()


def _download(link: str, force_download, proxies, token, cache_dir, local_files_only, revision) -> str:
    from diffusers.loaders.single_file_utils import _extract_repo_id_and_weights_name, is_valid_url
    from huggingface_hub import hf_hub_download

    if not is_valid_url(link):
        raise ValueError(
            f"`pretrained_model_link_or_path` {link!r} is neither a file nor a Hub file URL "
            "(https://huggingface.co/<repo_id>/blob/main/<file>)."
        )
    repo_id, filename = _extract_repo_id_and_weights_name(link)
    if filename is None:
        raise ValueError(
            f"`pretrained_model_link_or_path` {link!r} names no file; expected "
            "https://huggingface.co/<repo_id>/blob/main/<file>."
        )
    return hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=bool(local_files_only),
        force_download=force_download,
        proxies=proxies,
    )
