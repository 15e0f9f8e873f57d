"""Projectors from the spatiotemporal tokens to the generator's condition and to CLIP space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from glfa.errors import DataError
from glfa.models.layers import Mlp, init_vit_weights


class TokenProjector(nn.Module):
    """[B, T, D] -> [B, K, C]: token mixing over T (T -> ~T/4 -> K, GELU between), Linear(D -> C), residual MLP."""

    def __init__(self, *, num_input_tokens: int, dim: int, num_tokens: int, token_dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_input_tokens = num_input_tokens
        hidden = max(num_tokens, num_input_tokens // 4)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mix_in = nn.Linear(num_input_tokens, hidden)
        self.mix_out = nn.Linear(hidden, num_tokens)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, token_dim)
        self.mlp = Mlp(dim=token_dim, mlp_ratio=1.0, dropout=dropout)
        self.apply(init_vit_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, K, C]."""
        if x.dim() != 3 or x.shape[1] != self.num_input_tokens:
            raise DataError(f"expected [B, {self.num_input_tokens}, D], got {list(x.shape)}", field="x")
        x = rearrange(self.norm(x), "b t d -> b d t")
        x = self.mix_out(self.drop(F.gelu(self.mix_in(x))))  # [b, d, k]
        x = self.proj(self.drop(rearrange(x, "b d k -> b k d")))  # [b, k, c]
        return x + self.mlp(x)


class ClipHead(nn.Module):
    """[B, T, D] -> [B, clip_dim], L2-normalised: mean over tokens, LayerNorm, Linear."""

    def __init__(self, *, dim: int, clip_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, clip_dim)
        self.apply(init_vit_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, clip_dim] with unit rows."""
        pooled = self.norm(x.mean(dim=1))  # [b, d]
        return F.normalize(self.proj(self.drop(pooled)), dim=-1)
