"""Model-card templates for the Hub, one per published configuration, and their renderer.

Templates are Jinja2 Markdown files with YAML front matter beside this file. Rendering is strict: a value a template
needs and was not given is an error, never an empty line on the Hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import ModelCard

TEMPLATE_DIR = Path(__file__).parent
TEMPLATES = ("mpdit-xl-256", "mpdit-xl-512", "mpdit-b-256", "mpdit-demo", "mpdit-trained", "mpdit")


def render_model_card(template: str, **values: Any) -> ModelCard:
    """Renders `hub_cards/<template>.md`.

    Args:
        template (`str`): One of `TEMPLATES`.
        **values: The template's variables; every card needs `repo_id`.

    Raises:
        ValueError: for an unknown template or a missing value (named in the message).
    """
    if template not in TEMPLATES:
        raise ValueError(f"Unknown model-card `template` {template!r}; choose one of {', '.join(TEMPLATES)}.")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    try:
        text = env.get_template(f"{template}.md").render(**values)
    except jinja2.UndefinedError as error:
        raise ValueError(f"Model card {template!r} needs a value that was not given: {error.message}.") from error
    return ModelCard(text)


def card_template_for(pipeline) -> str:
    """The published configuration a pipeline matches, or the generic `"mpdit"` card."""
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


def default_card_values(pipeline, repo_id: str) -> dict[str, Any]:
    """Values every template can draw on, read from the pipeline itself."""
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
