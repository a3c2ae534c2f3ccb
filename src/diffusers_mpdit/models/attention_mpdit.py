"""MPDiT self-attention: plain multi-head attention over class and image tokens, dispatched through diffusers."""

from __future__ import annotations

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn


class MPDiTAttnProcessor:
    """Default processor: q/k/v projections (fused or not), `dispatch_attention_fn`, output projection.

    Going through `dispatch_attention_fn` is what makes `set_attention_backend` (SDPA, math, flash, xformers, sage,
    ...) and context parallelism work without MPDiT-specific code.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: MPDiTAttention,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)

        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


class MPDiTAttention(nn.Module, AttentionModuleMixin):
    """Multi-head self-attention with biased q/k/v and output projections, scale 1/sqrt(head_dim), no q/k norm.

    Args:
        dim (`int`): Token width.
        heads (`int`): Number of heads; must divide `dim`.
        bias (`bool`, defaults to `True`): Biases on the q/k/v projections.
        out_bias (`bool`, defaults to `True`): Bias on the output projection.
        processor (*optional*): Attention processor; defaults to [`MPDiTAttnProcessor`].
    """

    _default_processor_cls = MPDiTAttnProcessor
    _available_processors = [MPDiTAttnProcessor]

    def __init__(self, dim: int, heads: int, bias: bool = True, out_bias: bool = True, processor=None):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"`num_attention_heads` ({heads}) must divide the hidden size ({dim}).")
        self.heads = heads
        self.head_dim = dim // heads
        self.inner_dim = dim
        self.use_bias = bias
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(dim, dim, bias=bias)
        self.to_v = nn.Linear(dim, dim, bias=bias)
        # A ModuleList with a no-op dropout keeps diffusers' `to_out.0` naming, so LoRA target lists carry over.
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=out_bias), nn.Dropout(0.0)])
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.processor(self, hidden_states, attention_mask)
