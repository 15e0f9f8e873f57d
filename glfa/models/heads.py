"""Projectors from the spatiotemporal tokens to the generator's condition and to CLIP space.

These are the authors' modules (GLFA code, ``models/utils.py``): ``fmri2text`` as
:class:`TokenProjector`, and the two CLIP heads of ``fmri2clip_cfg``: ``linear`` (one linear map
of the n frames' [CLS] tokens) and ``fmri2clip`` (1x1 convolutions over the 77 condition tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from glfa.errors import ConfigError, DataError
from glfa.models.layers import init_vit_weights

CLIP_HEADS = ("fmri2clip", "linear")


class TokenProjector(nn.Module):
    """[B, T, D] -> [B, K, C]: two bias-free token mixers (T -> T//4 -> K), then ``p + fc(gelu(p))``, p = projection.

    Nothing sits between the two token mixers (the authors' ``channel_mapper``); ``projection``
    and ``fc`` have no bias; dropout follows ``fc``.
    """

    def __init__(self, *, num_input_tokens: int, dim: int, num_tokens: int, token_dim: int, dropout: float = 0.0):
        super().__init__()
        if num_input_tokens < 4:
            raise ConfigError(f"the token projector needs at least 4 input tokens, got {num_input_tokens}",
                              field="num_input_tokens")
        self.num_input_tokens = num_input_tokens
        self.channel_mapper = nn.Sequential(nn.Linear(num_input_tokens, num_input_tokens // 4, bias=False),
                                            nn.Linear(num_input_tokens // 4, num_tokens, bias=False))
        self.projection = nn.Linear(dim, token_dim, bias=False)
        self.fc = nn.Linear(token_dim, token_dim, bias=False)
        self.drop = nn.Dropout(dropout)
        self.apply(init_vit_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, K, C]."""
        if x.dim() != 3 or x.shape[1] != self.num_input_tokens:
            raise DataError(f"expected [B, {self.num_input_tokens}, D], got {list(x.shape)}", field="x")
        # contiguous: on a transposed view two modules with equal weights were seen to round differently
        x = rearrange(self.channel_mapper(rearrange(x, "b t d -> b d t").contiguous()), "b d k -> b k d")  # [b, k, d]
        projected = self.projection(x)  # [b, k, c]
        return projected + self.drop(self.fc(F.gelu(projected)))


class ClipHead(nn.Module):
    """The CLIP-space embedding [B, clip_dim], L2-normalised, in one of the authors' two variants.

    ``kind="fmri2clip"`` reads the condition tokens [B, K, C]: bias-free 1x1 convolutions over the
    token axis K -> K//4 -> K//16 -> 1 (77 -> 19 -> 4 -> 1; at least 1 at tiny sizes), dropout
    between them, then Linear(C -> clip_dim). ``kind="linear"`` reads the n frames' [CLS] tokens
    of the fMRI-PTE output (before the spatiotemporal block) [B, n, D]: dropout, then
    Linear(n * D -> clip_dim) on their concatenation.
    """

    def __init__(self, *, kind: str, dim: int, num_frames: int, num_tokens: int, token_dim: int, clip_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        if kind not in CLIP_HEADS:
            raise ConfigError(f"expected one of {list(CLIP_HEADS)}, got {kind!r}", field="clip_head")
        self.kind = kind
        if kind == "fmri2clip":
            k4, k16 = max(1, num_tokens // 4), max(1, num_tokens // 16)
            self.channel_mapper = nn.Sequential(nn.Conv1d(num_tokens, k4, 1, bias=False), nn.Dropout(dropout),
                                                nn.Conv1d(k4, k16, 1, bias=False), nn.Dropout(dropout),
                                                nn.Conv1d(k16, 1, 1, bias=False))
            self.dim_mapper = nn.Linear(token_dim, clip_dim)
        else:
            self.drop = nn.Dropout(dropout)
            self.proj = nn.Linear(num_frames * dim, clip_dim)
        self.apply(init_vit_weights)
        for conv in self.modules():
            if isinstance(conv, nn.Conv1d):
                nn.init.normal_(conv.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, K, C] condition tokens (fmri2clip) or [B, n, D] [CLS] tokens (linear) -> [B, clip_dim], unit rows."""
        if x.dim() != 3:
            raise DataError(f"expected a [B, tokens, width] tensor, got {list(x.shape)}", field="x")
        if self.kind == "fmri2clip":
            out = self.dim_mapper(self.channel_mapper(x)[:, 0])  # [b, k, c] -> [b, 1, c] -> [b, clip_dim]
        else:
            out = self.proj(self.drop(rearrange(x, "b n d -> b (n d)")))
        return F.normalize(out, dim=-1)
