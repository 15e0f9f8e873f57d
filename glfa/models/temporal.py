"""Spatiotemporal attention appended to the fMRI-PTE encoder (paper section 3.4).

Each layer attends over the p + 1 tokens of every frame (spatial), then over the n frames of
every token (temporal, the inflation trick: swap the first two axes), then applies an MLP;
pre-LN with residuals. This is the authors' ``BlockTemp`` exactly: no frame position embedding
(their temporal attention sees the frames as a set; an added frame embedding is not kept because
nothing measured that it helps).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from glfa.errors import DataError
from glfa.models.layers import Attention, Mlp, init_vit_weights, run_blocks


class SpatioTemporalLayer(nn.Module):
    """x + spatial_attn(LN(x)); x + temporal_attn(LN(x)); x + mlp(LN(x)) on [B, n, t, D]."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.norm_spatial = nn.LayerNorm(dim)
        self.spatial = Attention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.norm_temporal = nn.LayerNorm(dim)
        self.temporal = Attention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, mlp_ratio=mlp_ratio, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n, t, D] -> [B, n, t, D]."""
        b, n = x.shape[:2]
        frames = rearrange(self.norm_spatial(x), "b n t d -> (b n) t d")
        x = x + rearrange(self.spatial(frames), "(b n) t d -> b n t d", b=b)
        tracks = rearrange(self.norm_temporal(x), "b n t d -> (b t) n d")
        x = x + rearrange(self.temporal(tracks), "(b t) n d -> b n t d", b=b)
        return x + self.mlp(self.norm_mlp(x))


class SpatioTemporalBlock(nn.Module):
    """``depth`` spatiotemporal layers over [B, n, t, D] (n frames of t = p + 1 tokens); depth 0 = identity."""

    def __init__(self, *, dim: int, num_frames: int, depth: int = 1, num_heads: int = 16, mlp_ratio: float = 1.0,
                 dropout: float = 0.0):
        super().__init__()
        self.num_frames = num_frames
        self.gradient_checkpointing = False
        self.layers = nn.ModuleList(SpatioTemporalLayer(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                                        dropout=dropout) for _ in range(depth))
        self.apply(init_vit_weights)

    @classmethod
    def from_config(cls, config, *, dim: int, num_frames: int) -> SpatioTemporalBlock:
        """Build from a :class:`~glfa.config.TemporalConfig`."""
        return cls(dim=dim, num_frames=num_frames, depth=config.depth, num_heads=config.num_heads,
                   mlp_ratio=config.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n, t, D] -> [B, n, t, D]."""
        if x.dim() != 4 or x.shape[1] != self.num_frames:
            raise DataError(f"expected [B, {self.num_frames}, tokens, D], got {list(x.shape)}", field="x")
        return run_blocks(self.layers, x, checkpointing=self.gradient_checkpointing)
