"""Loading and saving mixins for [`MPDiTPipeline`]: Hub repo ids and model cards, and diffusers' remote-code entries."""

from .hub import TEMPLATES, HubMixin, card_template_for, default_card_values, render_model_card
from .remote_code import RemoteCodeMixin

__all__ = ["TEMPLATES", "HubMixin", "RemoteCodeMixin", "card_template_for", "default_card_values", "render_model_card"]
