"""fMRI-PTE: the ViT autoencoder that compresses a flat cortical image into a [CLS] token.

The authors' ``fMRI_Autoencoder`` (NeuroPictor / GLFA code). Encoder: Conv2d(1 -> D, kernel =
stride = patch) patch tokens + a [CLS] token, a fixed 2-D sin-cos position embedding (stored),
``depth`` pre-LN transformer blocks (qkv bias, MLP ratio 4), final LayerNorm -> [N, p + 1, D].
Decoder (pretraining only): [CLS] -> Linear(D -> bottleneck) -> Linear(bottleneck -> D), followed
by p mask tokens, plus the stored decoder position embedding -> decoder blocks -> LayerNorm ->
Linear(D -> patch * patch pixels) -> unpatchify. Loss: MSE on the mask's pixels.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from glfa.errors import ConfigError, DataError
from glfa.losses import masked_mse
from glfa.models.layers import TransformerBlock, init_vit_weights, normal_parameter, run_blocks, sincos_pos_embed_2d
from glfa.models.serialization import PretrainedMixin


def _check_grid(image_size: int, patch_size: int) -> int:
    """Patches per side; ConfigError when the patch does not tile the image."""
    if patch_size <= 0 or image_size % patch_size:
        raise ConfigError(f"image_size {image_size} must be a multiple of patch_size {patch_size}", field="patch_size")
    return image_size // patch_size


class PteEncoder(nn.Module):
    """The fMRI-PTE encoder: [N, 1, H, W] -> tokens [N, p + 1, D] (token 0 is [CLS])."""

    def __init__(self, *, image_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        grid = _check_grid(image_size, patch_size)
        self.image_size, self.patch_size, self.embed_dim = image_size, patch_size, embed_dim
        self.num_patches = grid * grid
        self.gradient_checkpointing = False
        self.patch_embed = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = normal_parameter(1, 1, embed_dim, std=0.02)
        # Stored with the weights (the authors' checkpoints carry it); fixed, never trained.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid)[None])
        self.blocks = nn.ModuleList(TransformerBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(init_vit_weights)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(embed_dim, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] (or [N, H, W]) -> [N, p + 1, D]."""
        if x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4 or x.shape[1:] != (1, self.image_size, self.image_size):
            raise DataError(f"expected [N, 1, {self.image_size}, {self.image_size}], got {list(x.shape)}", field="x")
        tokens = rearrange(self.patch_embed(x), "n d gh gw -> n (gh gw) d")  # [n, p, d]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # [n, 1, d]
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed.to(tokens.dtype)  # [n, p+1, d]
        return self.norm(run_blocks(self.blocks, tokens, checkpointing=self.gradient_checkpointing))


class PteDecoder(nn.Module):
    """The fMRI-PTE decoder: [CLS] [N, D] -> bottleneck -> p mask tokens -> image [N, 1, H, W]."""

    def __init__(self, *, image_size: int, patch_size: int, embed_dim: int, decoder_depth: int,
                 decoder_num_heads: int, bottleneck_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        grid = _check_grid(image_size, patch_size)
        self.image_size, self.patch_size, self.grid = image_size, patch_size, grid
        self.num_patches = grid * grid
        self.gradient_checkpointing = False
        self.to_bottleneck = nn.Linear(embed_dim, bottleneck_dim)
        self.from_bottleneck = nn.Linear(bottleneck_dim, embed_dim)
        self.mask_token = normal_parameter(1, 1, embed_dim, std=0.02)
        # Stored with the weights: sin-cos at initialisation, but imported checkpoints carry their own
        # (the GLFA code never initialises its decoder's), and those values are the ones used.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid)[None])
        self.blocks = nn.ModuleList(TransformerBlock(dim=embed_dim, num_heads=decoder_num_heads, mlp_ratio=mlp_ratio)
                                    for _ in range(decoder_depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.pred = nn.Linear(embed_dim, patch_size * patch_size)
        self.apply(init_vit_weights)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N, 1, H, W]."""
        latent = self.from_bottleneck(self.to_bottleneck(cls))[:, None]  # [n, 1, d]
        masks = self.mask_token.expand(cls.shape[0], self.num_patches, -1)  # [n, p, d]
        tokens = torch.cat([latent, masks], dim=1) + self.pos_embed.to(latent.dtype)  # [n, p+1, d]
        tokens = self.norm(run_blocks(self.blocks, tokens, checkpointing=self.gradient_checkpointing))
        pixels = self.pred(tokens[:, 1:])  # [n, p, s*s]
        s = self.patch_size
        return rearrange(pixels, "n (gh gw) (p1 p2) -> n 1 (gh p1) (gw p2)", gh=self.grid, p1=s, p2=s)


class FmriPTE(PretrainedMixin, nn.Module):
    """fMRI Pretrained Transformer Encoder: encoder + [CLS]-bottleneck decoder (reconstruction pretraining)."""

    def __init__(self, *, image_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, decoder_depth: int, decoder_num_heads: int, bottleneck_dim: int,
                 geometry: str | None = None):
        super().__init__()
        self.geometry = geometry  # the flat images' geometry (data.geometry); saved with the weights, None = unknown
        self.config = {"image_size": image_size, "patch_size": patch_size, "embed_dim": embed_dim, "depth": depth,
                       "num_heads": num_heads, "mlp_ratio": float(mlp_ratio), "decoder_depth": decoder_depth,
                       "decoder_num_heads": decoder_num_heads, "bottleneck_dim": bottleneck_dim}
        self.encoder = PteEncoder(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                  num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.decoder = PteDecoder(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim,
                                  decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads,
                                  bottleneck_dim=bottleneck_dim, mlp_ratio=mlp_ratio)

    @classmethod
    def from_config(cls, config, image_size: int) -> FmriPTE:
        """Build from a :class:`~glfa.config.ModelConfig` (its ``pte`` section) or a PteConfig."""
        pte = getattr(config, "pte", config)
        return cls(image_size=image_size, patch_size=pte.patch_size, embed_dim=pte.embed_dim, depth=pte.depth,
                   num_heads=pte.num_heads, mlp_ratio=pte.mlp_ratio, decoder_depth=pte.decoder_depth,
                   decoder_num_heads=pte.decoder_num_heads, bottleneck_dim=pte.bottleneck_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] -> tokens [N, p + 1, D]."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] -> reconstruction [N, 1, H, W] (through the [CLS] bottleneck only)."""
        return self.decoder(self.encoder(x)[:, 0])

    def reconstruction_loss(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """MSE between ``forward(x)`` and ``x`` on the mask's pixels."""
        if x.dim() == 3:
            x = x[:, None]
        return masked_mse(self(x), x, mask)

    def saved_config(self) -> dict[str, Any]:
        """The constructor arguments and the images' geometry."""
        return {**self.config, "geometry": self.geometry}

    @classmethod
    def from_saved_config(cls, config: dict[str, Any]) -> FmriPTE:
        """An untrained FmriPTE of a :meth:`saved_config`."""
        return cls(**config)
