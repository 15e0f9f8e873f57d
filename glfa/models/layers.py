"""Transformer building blocks shared by fMRI-PTE and the spatiotemporal block.

Plain torch: multi-head self-attention through ``scaled_dot_product_attention``, a GELU MLP,
a pre-LN block, and the fixed 2-D sin-cos position embedding of MAE.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from glfa.errors import ConfigError


class Attention(nn.Module):
    """Multi-head self-attention (qkv with bias) over the second-to-last axis."""

    def __init__(self, *, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} must be divisible by num_heads {num_heads}", field="num_heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[b, t, d] -> [b, t, d]."""
        q, k, v = rearrange(self.qkv(x), "b t (three h e) -> three b h t e", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(out, "b h t e -> b t (h e)"))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, hidden width ``dim * mlp_ratio``."""

    def __init__(self, *, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., d]."""
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-LN ViT block (timm's ``Block``, LayerNorm eps 1e-5): x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, mlp_ratio=mlp_ratio, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[b, t, d] -> [b, t, d]."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, *, checkpointing: bool) -> torch.Tensor:
    """Apply ``blocks`` in order, with activation checkpointing when asked and gradients flow."""
    use_ckpt = checkpointing and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x)
    return x


def sincos_pos_embed_2d(dim: int, grid_size: int, *, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE): [grid*grid (+1), dim], row-major, CLS row zero."""
    if dim % 4:
        raise ConfigError(f"embed_dim {dim} must be divisible by 4 for the 2-D sin-cos embedding", field="embed_dim")
    coords = np.arange(grid_size, dtype=np.float64)
    col, row = np.meshgrid(coords, coords)  # each [grid, grid]; col varies along a row

    def one_axis(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
        angles = np.outer(pos.reshape(-1), omega)  # [grid*grid, dim/4]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    emb = np.concatenate([one_axis(col), one_axis(row)], axis=1)  # [grid*grid, dim]
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


def normal_parameter(*shape: int, std: float) -> nn.Parameter:
    """A parameter drawn from N(0, std^2); left uninitialised on the meta device (shape only, no cost)."""
    tensor = torch.empty(*shape)
    if tensor.device.type != "meta":
        tensor.normal_(0.0, std)
    return nn.Parameter(tensor)


def init_vit_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
