"""Loading and saving mixins for [`MPDiTPipeline`]: Hub repo ids and model cards, diffusers' remote-code entries, and LoRA adapters with the classes they add."""

from .hub import TEMPLATES, HubMixin, card_template_for, default_card_values, render_model_card
from .lora import MPDiTLoraLoaderMixin, NewClasses
from .remote_code import RemoteCodeMixin

__all__ = [
    "TEMPLATES",
    "HubMixin",
    "MPDiTLoraLoaderMixin",
    "NewClasses",
    "RemoteCodeMixin",
    "card_template_for",
    "default_card_values",
    "render_model_card",
]
