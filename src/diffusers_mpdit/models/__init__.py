from .attention_mpdit import MPDiTAttention, MPDiTAttnProcessor
from .embeddings import ClassTokenEmbedding, FNOTimestepEmbedding, MLPTimestepEmbedding
from .level_cache import LevelCacheConfig
from .official_layout import ConversionError, UnreadableCheckpointError
from .presets import PRESETS
from .transformer_mpdit import MPDiTTransformer2DModel

__all__ = [
    "PRESETS",
    "ClassTokenEmbedding",
    "ConversionError",
    "FNOTimestepEmbedding",
    "LevelCacheConfig",
    "MLPTimestepEmbedding",
    "MPDiTAttention",
    "MPDiTAttnProcessor",
    "MPDiTTransformer2DModel",
    "UnreadableCheckpointError",
]
