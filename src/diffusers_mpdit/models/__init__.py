from .attention_mpdit import MPDiTAttention, MPDiTAttnProcessor
from .embeddings import ClassTokenEmbedding, FNOTimestepEmbedding, MLPTimestepEmbedding
from .presets import PRESETS
from .transformer_mpdit import MPDiTTransformer2DModel

__all__ = [
    "PRESETS",
    "ClassTokenEmbedding",
    "FNOTimestepEmbedding",
    "MLPTimestepEmbedding",
    "MPDiTAttention",
    "MPDiTAttnProcessor",
    "MPDiTTransformer2DModel",
]
