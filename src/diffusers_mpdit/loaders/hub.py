"""The Hugging Face Hub for [`MPDiTPipeline`]: loading from repo ids, pushing with a model card, rendering the cards.

Pipelines are read through their attributes only (`transformer.config`, `vae`, `id2label`): this module sits below
`pipelines/`, which mixes `HubMixin` in.

Card templates are the Jinja2 Markdown files (with YAML front matter) of the repository's top-level `hub_cards/`,
installed as `diffusers_mpdit.hub_cards`. Rendering is strict: a value a template needs and was not given is an
error, never an empty line on the Hub.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..models.loading import check_local_folder, raise_if_unreadable_weights

if TYPE_CHECKING:  # annotations only: the Hub client is imported when used
    from huggingface_hub import ModelCard

TEMPLATES = ("mpdit-xl-256", "mpdit-xl-512", "mpdit-b-256", "mpdit-demo", "mpdit-trained", "mpdit")
# Cards of adapters rather than pipelines: their usage loads a base pipeline, then the LoRA.
LORA_TEMPLATES = ("mpdit-lora",)
HUB_KEYS = ("revision", "cache_dir", "token", "force_download", "proxies")


def _template_source(name: str) -> str:
    return resources.files("diffusers_mpdit.hub_cards").joinpath(name).read_text(encoding="utf-8")


def render_model_card(template: str, **values: Any) -> ModelCard:
    """Renders `hub_cards/<template>.md` into a `huggingface_hub.ModelCard`.

    Args:
        template (`str`): One of `TEMPLATES` or `LORA_TEMPLATES`.
        **values: The template's variables; every card needs `repo_id`.

    Raises:
        ValueError: for an unknown template or a missing value (named in the message).
    """
    import jinja2
    from huggingface_hub import ModelCard

    if template not in TEMPLATES + LORA_TEMPLATES:
        raise ValueError(
            f"Unknown model-card `template` {template!r}; choose one of {', '.join(TEMPLATES + LORA_TEMPLATES)}."
        )
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    try:
        text = env.get_template(f"{template}.md").render(**values)
    except jinja2.UndefinedError as error:
        raise ValueError(f"Model card {template!r} needs a value that was not given: {error.message}.") from error
    return ModelCard(text)


def card_template_for(pipeline: Any) -> str:
    """The published configuration a pipeline matches, or the generic `"mpdit"` card.

    Args:
        pipeline (`MPDiTPipeline`): The pipeline to describe.
    """
    config = pipeline.transformer.config
    shape = (
        config.num_classes,
        pipeline.vae is not None,
        tuple(config.patch_sizes),
        tuple(config.depths),
        config.num_attention_heads * config.attention_head_dim,
    )
    published = {
        (1000, True, (4, 2), (22, 6), 1152, 32): "mpdit-xl-256",
        (1000, True, (4, 2), (22, 6), 1152, 64): "mpdit-xl-512",
        (1000, True, (4, 2), (6, 6), 768, 32): "mpdit-b-256",
    }
    return published.get((*shape, config.sample_size), "mpdit")


def default_card_values(pipeline: Any, repo_id: str) -> dict[str, Any]:
    """Values every template can draw on, read from the pipeline itself.

    Args:
        pipeline (`MPDiTPipeline`): The pipeline to describe.
        repo_id (`str`): The Hub repo the card is for, used in its usage snippets.
    """
    config = pipeline.transformer.config
    names = [pipeline.id2label[i].split(",")[0].strip() for i in sorted(pipeline.id2label)[:2]]
    side = config.sample_size * pipeline.vae_scale_factor
    return {
        "repo_id": repo_id,
        "title": repo_id.split("/")[-1],
        "license": "apache-2.0",
        "datasets": [],
        "description": "",
        "weights": "EMA weights",
        "patch_sizes": list(config.patch_sizes),
        "depths": list(config.depths),
        "width": config.num_attention_heads * config.attention_head_dim,
        "parameters": f"{pipeline.transformer.num_parameters() / 1e6:.1f}M",
        "num_classes": config.num_classes,
        "resolution": f"{side}x{side}",
        "pixel_space": pipeline.vae is None,
        "example_classes": names or [0, 1],
    }


class HubMixin:
    """`from_pretrained` for Hub repo ids and `push_to_hub` with a rendered model card, for [`MPDiTPipeline`].

    A repo id is downloaded with `huggingface_hub.snapshot_download` first and then loaded as a folder, so that the
    folder's remote-code entries are read as the package's classes (`RemoteCodeMixin`) without running its files.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Loads from a local folder or a Hub repo id.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): A pipeline folder (`~` is expanded) or a repo id
                such as `org/name`.
            **kwargs: `revision`, `cache_dir`, `token`, `local_files_only`, `force_download` and `proxies` are used
                for the download; everything (`dtype`, `variant`, `device_map`, ...) goes on to
                [`DiffusionPipeline.from_pretrained`].

        Raises:
            FileNotFoundError: for a name that can only be a local path (absolute, starting with `.` or `~`, or with
                more than one `/`) and is not an existing folder.
            UnreadableCheckpointError: (an OSError) for a component's weights file that is damaged or truncated,
                naming it.
        """
        path = check_local_folder(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            from huggingface_hub import constants, snapshot_download
            from huggingface_hub.errors import HfHubHTTPError

            hub_kwargs = {k: kwargs[k] for k in HUB_KEYS if k in kwargs}
            try:
                path = snapshot_download(path, local_files_only=kwargs.get("local_files_only", False), **hub_kwargs)
            except HfHubHTTPError as error:
                status = error.response.status_code if error.response is not None else "?"
                raise OSError(
                    f"Could not download {path!r} from {constants.ENDPOINT} (HTTP {status}). Check the repo id, and for "
                    f"a private repo pass a valid `token` (or log in with `hf auth login`). The Hub said: "
                    f"{str(error).splitlines()[0]}"
                ) from error
        try:
            return super().from_pretrained(path, **kwargs)
        except Exception as error:
            # The transformer words its own; this catches the other components' files (the VAE's).
            raise_if_unreadable_weights(error)
            raise

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        card_template: str | None = None,
        card_values: dict[str, Any] | None = None,
        extra_files: dict[str, str] | None = None,
    ) -> Any:
        """Saves the pipeline (safetensors) and uploads it with a model card rendered from `hub_cards/`.

        Args:
            repo_id (`str`): `namespace/name`, or a name in the token owner's namespace.
            commit_message (`str`, *optional*): Defaults to "Upload MPDiTPipeline".
            private (`bool`, *optional*): Create the repo as private (ignored if it exists).
            token (`str`, *optional*): A write token; defaults to the logged-in one.
            create_pr (`bool`, defaults to `False`): Open a pull request instead of committing to main.
            safe_serialization (`bool`, defaults to `True`): Write safetensors.
            variant (`str`, *optional*): Weight file variant, e.g. `"fp16"` (cast the pipeline first).
            card_template (`str`, *optional*): One of `TEMPLATES`; by default the published configuration the
                pipeline matches, else the generic `"mpdit"` card.
            card_values (`dict`, *optional*): Values for the template, over those read from the pipeline.
            extra_files (`dict[str, str]`, *optional*): More files to upload, `{path in repo: local path}` (e.g. a
                sample grid the card shows).

        Returns:
            The `CommitInfo` of the upload.
        """
        from huggingface_hub import create_repo

        template = card_template or card_template_for(self)

        def card_for(name: str):
            return render_model_card(template, **{**default_card_values(self, name), **(card_values or {})})

        # A card that cannot be rendered, or whose metadata the Hub rejects, must fail before the repo is created.
        card_for(repo_id).validate()
        repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        card = card_for(repo_id)
        with tempfile.TemporaryDirectory() as tmpdir:
            self.save_pretrained(tmpdir, safe_serialization=safe_serialization, variant=variant)
            card.save(os.path.join(tmpdir, "README.md"))
            _copy_extra_files(tmpdir, extra_files)
            return self._upload_folder(
                tmpdir, repo_id, token=token, commit_message=commit_message, create_pr=create_pr
            )


def push_lora_to_hub(
    lora_directory: str | os.PathLike,
    repo_id: str,
    card_values: dict[str, Any],
    token: str | None = None,
    private: bool | None = None,
    extra_files: dict[str, str] | None = None,
    commit_message: str | None = None,
) -> Any:
    """Uploads a LoRA (`pytorch_lora_weights.safetensors`) with a model card rendered from `hub_cards/mpdit-lora.md`.

    Args:
        lora_directory (`str` or `os.PathLike`): The folder holding the LoRA file.
        repo_id (`str`): `namespace/name`.
        card_values (`dict`): The card's values (`base_model`, `dataset`, `rank`, ...); `repo_id` is added.
        token (`str`, *optional*): A write token; defaults to the logged-in one.
        private (`bool`, *optional*): Create the repo as private (ignored if it exists).
        extra_files (`dict[str, str]`, *optional*): More files, `{path in repo: local path}` (the sample grid).
        commit_message (`str`, *optional*): Defaults to "Upload LoRA".

    Returns:
        The `CommitInfo` of the upload.
    """
    from huggingface_hub import HfApi

    from .lora import LORA_WEIGHT_NAME

    weights = os.path.join(lora_directory, LORA_WEIGHT_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"No {LORA_WEIGHT_NAME} in {os.fspath(lora_directory)!r}.")
    render_model_card("mpdit-lora", **{**card_values, "repo_id": repo_id}).validate()  # before creating the repo
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmpdir:
        shutil.copyfile(weights, os.path.join(tmpdir, LORA_WEIGHT_NAME))
        render_model_card("mpdit-lora", **{**card_values, "repo_id": repo_id}).save(os.path.join(tmpdir, "README.md"))
        _copy_extra_files(tmpdir, extra_files)
        return api.upload_folder(repo_id=repo_id, folder_path=tmpdir, commit_message=commit_message or "Upload LoRA")


def _copy_extra_files(folder: str, extra_files: dict[str, str] | None) -> None:
    for path_in_repo, local_path in (extra_files or {}).items():
        os.makedirs(os.path.dirname(os.path.join(folder, path_in_repo)), exist_ok=True)
        shutil.copyfile(local_path, os.path.join(folder, path_in_repo))
