from .attention_mpdit import MPDiTAttention, MPDiTAttnProcessor
from .embeddings import ClassTokenEmbedding, FNOTimestepEmbedding, MLPTimestepEmbedding
from .official_layout import ConversionError, UnreadableCheckpointError
from .presets import PRESETS
from .transformer_mpdit import MPDiTTransformer2DModel

__all__ = [
    "PRESETS",
    "ClassTokenEmbedding",
    "ConversionError",
    "FNOTimestepEmbedding",
    "MLPTimestepEmbedding",
    "MPDiTAttention",
    "MPDiTAttnProcessor",
    "MPDiTTransformer2DModel",
    "UnreadableCheckpointError",
]
