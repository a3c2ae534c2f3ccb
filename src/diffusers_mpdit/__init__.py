"""diffusers-mpdit: MPDiT (Dao and Metaxas, CVPR 2026) for Hugging Face diffusers.

Names are imported on first use: `import diffusers_mpdit` alone loads neither torch nor diffusers.
"""

import os

from ._lazy import lazy_exports
from .data import BUNDLED_MODEL

__version__ = "0.1.0"

# Path for `DiffusionPipeline.from_pretrained(path, custom_pipeline=CUSTOM_PIPELINE, trust_remote_code=True)`.
CUSTOM_PIPELINE = os.path.join(os.path.dirname(__file__), "custom_pipeline.py")

_EXPORTS = {
    "FlowMatchEulerMaruyamaScheduler": "schedulers.scheduling_flow_match_euler_maruyama",
    "LevelCacheConfig": "models.level_cache",
    "MPDiTPipeline": "pipelines.pipeline_mpdit",
    "MPDiTTransformer2DModel": "models.transformer_mpdit",
    "PRESETS": "models.presets",
    "SamplingConfig": "sampling",
    "UnreadableCheckpointError": "models.official_layout",
    "default_scheduler": "pipelines.timesteps",
    "denormalize_latents": "pipelines.latents",
    "normalize_latents": "pipelines.latents",
    "official_euler_sigmas": "pipelines.timesteps",
}
__all__ = ["BUNDLED_MODEL", "CUSTOM_PIPELINE", "__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
