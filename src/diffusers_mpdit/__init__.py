"""diffusers-mpdit: MPDiT (Dao and Metaxas, CVPR 2026) for Hugging Face diffusers."""

__version__ = "0.1.0"

from .models import PRESETS, MPDiTTransformer2DModel
from .pipelines import MPDiTPipeline, default_scheduler, official_euler_sigmas
from .training import denormalize_latents, normalize_latents

__all__ = [
    "PRESETS",
    "MPDiTPipeline",
    "MPDiTTransformer2DModel",
    "__version__",
    "default_scheduler",
    "denormalize_latents",
    "normalize_latents",
    "official_euler_sigmas",
]
