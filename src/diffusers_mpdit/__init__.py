"""diffusers-mpdit: MPDiT (Dao and Metaxas, CVPR 2026) for Hugging Face diffusers."""

__version__ = "0.1.0"

import os

from .models import PRESETS, MPDiTTransformer2DModel
from .pipelines import MPDiTPipeline, default_scheduler, official_euler_sigmas
from .sampling import SamplingConfig
from .schedulers import FlowMatchEulerMaruyamaScheduler
from .training import denormalize_latents, normalize_latents

# Path for `DiffusionPipeline.from_pretrained(path, custom_pipeline=CUSTOM_PIPELINE, trust_remote_code=True)`.
CUSTOM_PIPELINE = os.path.join(os.path.dirname(__file__), "custom_pipeline.py")
# The demo model that ships with the package: Fashion-MNIST, pixel space, 32x32 grey (see its README.md).
BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "bundled", "mpdit-fashion-mnist")

__all__ = [
    "BUNDLED_MODEL",
    "CUSTOM_PIPELINE",
    "FlowMatchEulerMaruyamaScheduler",
    "PRESETS",
    "SamplingConfig",
    "MPDiTPipeline",
    "MPDiTTransformer2DModel",
    "__version__",
    "default_scheduler",
    "denormalize_latents",
    "normalize_latents",
    "official_euler_sigmas",
]
