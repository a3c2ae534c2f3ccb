"""diffusers-mpdit: MPDiT (Dao and Metaxas, CVPR 2026) for Hugging Face diffusers."""

__version__ = "0.1.0"

from .models import PRESETS, MPDiTTransformer2DModel

__all__ = ["PRESETS", "MPDiTTransformer2DModel", "__version__"]
