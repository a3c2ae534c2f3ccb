"""Model-card templates for the Hub, installed as `diffusers_mpdit.hub_cards`; `diffusers_mpdit.loaders.hub` renders them."""
