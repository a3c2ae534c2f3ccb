"""The published MPDiT configurations, by their official names, and a tiny one for tests and demos."""

from __future__ import annotations

from typing import Any

# Each entry holds only what differs from `MPDiTTransformer2DModel`'s defaults (spec section 1).
PRESETS: dict[str, dict[str, Any]] = {
    "MPDiT-B/4x": {"patch_sizes": (4, 2), "depths": (6, 6), "num_attention_heads": 12, "attention_head_dim": 64},
    "MPDiT-L/4x": {"patch_sizes": (4, 2), "depths": (18, 6), "num_attention_heads": 16, "attention_head_dim": 64},
    "MPDiT-XL/4x": {"patch_sizes": (4, 2), "depths": (22, 6), "num_attention_heads": 16, "attention_head_dim": 72},
    "MPDiTv2-B": {"patch_sizes": (8, 4, 2), "depths": (6, 4, 2), "num_attention_heads": 12, "attention_head_dim": 64},
    "MPDiTv2-L": {"patch_sizes": (8, 4, 2), "depths": (14, 6, 4), "num_attention_heads": 16, "attention_head_dim": 64},
    "MPDiTv2-XL": {
        "patch_sizes": (8, 4, 2),
        "depths": (14, 8, 6),
        "num_attention_heads": 16,
        "attention_head_dim": 72,
    },
    # Small enough to build and run in milliseconds on a CPU; same code paths as the full presets.
    "MPDiT-tiny": {
        "sample_size": 16,
        "patch_sizes": (4, 2),
        "depths": (2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "num_classes": 10,
        "num_class_tokens": 4,
        "fno_width": 8,
        "fno_modes": 4,
        "fno_grid_size": 8,
    },
}


def get_preset(name: str) -> dict[str, Any]:
    """Returns a copy of the config overrides of preset `name`.

    Args:
        name (`str`): One of `PRESETS`.

    Raises:
        ValueError: if `name` is not a known preset; the message lists the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown MPDiT preset `name`={name!r}; choose one of {', '.join(PRESETS)}.")
    return dict(PRESETS[name])
