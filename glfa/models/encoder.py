"""FmriEncoder: optional GLFA -> fMRI-PTE encoder per frame -> spatiotemporal block -> heads.

With ``config.glfa.enabled`` False this is fMRI-PTE-V; with it True, the paper's GLFA model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from glfa.config import ModelConfig
from glfa.errors import CheckpointError, ConfigError, DataError
from glfa.models.glfa import GLFA
from glfa.models.heads import ClipHead, TokenProjector
from glfa.models.pte import FmriPTE, PteEncoder
from glfa.models.serialization import PretrainedMixin, load_state, load_weights, read_config
from glfa.models.temporal import SpatioTemporalBlock

# PTE constructor arguments that must match for its encoder weights to fit an FmriEncoder.
_PTE_ENCODER_KEYS = ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
# The encoder's outputs besides "aligned": the generator's condition tokens, the CLIP-space
# embedding, and the fMRI-PTE's [CLS] token of every frame (the PTE latent, which LEA reads).
HEADS = ("tokens", "clip", "cls")


class FmriEncoder(PretrainedMixin, nn.Module):
    """fMRI window [B, n, H, W] -> {"tokens": [B, K, C], "clip": [B, clip_dim], "cls": [B, n, D],
    "aligned": [B, n, H, W]}.

    Parameters
    ----------
    config : ModelConfig (or a dict of one).
    image_size : side of the square flat cortical images.
    num_frames : n, fMRI frames per window.
    geometry : the flat images' geometry (``data.geometry`` of the store); saved, None = unknown.
        Weights of another geometry are refused by :meth:`load_pte` and :meth:`load_encoder_weights`.
    """

    def __init__(self, config: ModelConfig | dict, image_size: int, num_frames: int, geometry: str | None = None):
        super().__init__()
        self.geometry = geometry
        if isinstance(config, dict):
            config = ModelConfig.model_validate(config)
        if num_frames <= 0:
            raise ConfigError(f"num_frames must be positive, got {num_frames}", field="num_frames")
        self.config, self.image_size, self.num_frames = config, image_size, num_frames
        pte, heads = config.pte, config.heads
        self.glfa = GLFA.from_config(config.glfa, height=image_size, width=image_size) if config.glfa.enabled else None
        self.pte = PteEncoder(image_size=image_size, patch_size=pte.patch_size, embed_dim=pte.embed_dim,
                              depth=pte.depth, num_heads=pte.num_heads, mlp_ratio=pte.mlp_ratio)
        self.temporal = SpatioTemporalBlock.from_config(config.temporal, dim=pte.embed_dim, num_frames=num_frames)
        num_input_tokens = num_frames * (self.pte.num_patches + 1)
        self.token_head = TokenProjector(num_input_tokens=num_input_tokens, dim=pte.embed_dim,
                                         num_tokens=heads.num_tokens, token_dim=heads.token_dim,
                                         dropout=heads.dropout)
        self.clip_head = ClipHead(kind=heads.clip_head, dim=pte.embed_dim, num_frames=num_frames,
                                  num_tokens=heads.num_tokens, token_dim=heads.token_dim, clip_dim=heads.clip_dim,
                                  dropout=heads.dropout)

    def align(self, fmri: torch.Tensor) -> torch.Tensor:
        """GLFA on every frame: [B, n, H, W] -> [B, n, H, W] (the input itself when GLFA is off)."""
        if self.glfa is None:
            return fmri
        b = fmri.shape[0]
        frames = self.glfa(rearrange(fmri, "b n h w -> (b n) h w"))  # [(b n), h, w]
        return rearrange(frames, "(b n) h w -> b n h w", b=b)

    def forward(self, fmri: torch.Tensor, *, heads: tuple[str, ...] = ("tokens", "clip")) -> dict[str, torch.Tensor]:
        """[B, n, H, W] -> {"tokens": [B, K, C], "clip": [B, clip_dim], "cls": [B, n, D], "aligned": [B, n, H, W]}.

        ``heads`` names the outputs to compute besides "aligned": each stage's loss needs one
        ("clip" in stage 1, "tokens" in stage 2 and generation), and the rest is skipped.
        """
        expected = (self.num_frames, self.image_size, self.image_size)
        if fmri.dim() != 4 or tuple(fmri.shape[1:]) != expected:
            raise DataError(f"expected fmri of shape [B, {', '.join(map(str, expected))}], got {list(fmri.shape)}",
                            field="fmri")
        unknown = sorted(set(heads) - set(HEADS))
        if unknown:
            raise ConfigError(f"unknown encoder head(s) {unknown}; expected some of {list(HEADS)}", field="heads")
        b = fmri.shape[0]
        aligned = self.align(fmri)
        frames = self.pte(rearrange(aligned, "b n h w -> (b n) 1 h w"))  # [(b n), p+1, d]
        frames = rearrange(frames, "(b n) t d -> b n t d", b=b)
        out = {"aligned": aligned}
        if "cls" in heads:
            out["cls"] = frames[:, :, 0]
        # The fmri2clip CLIP head reads the condition tokens; the linear one the PTE's [CLS] tokens.
        tokens = None
        if "tokens" in heads or (self.clip_head.kind == "fmri2clip" and "clip" in heads):
            tokens = self.token_head(rearrange(self.temporal(frames), "b n t d -> b (n t) d"))  # [b, k, c]
        if "tokens" in heads:
            out["tokens"] = tokens
        if "clip" in heads:
            out["clip"] = self.clip_head(tokens if self.clip_head.kind == "fmri2clip" else frames[:, :, 0])
        return out

    def load_pte(self, source: str | Path | FmriPTE) -> None:
        """Copy the encoder weights of a pretrained FmriPTE (a saved folder or a model) into ``self.pte``."""
        if isinstance(source, FmriPTE):
            saved, state, where = {**source.config, "geometry": source.geometry}, source.encoder.state_dict(), "<FmriPTE>"
        else:
            meta = read_config(source, "FmriPTE")
            saved, where = meta["config"], str(source)
            weights = load_weights(source, meta)
            state = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
        self._check_geometry(saved.get("geometry"), where)
        mine = {"image_size": self.image_size, **{k: getattr(self.config.pte, k) for k in _PTE_ENCODER_KEYS[1:]}}
        for key in _PTE_ENCODER_KEYS:
            if float(saved.get(key, -1)) != float(mine[key]):
                raise CheckpointError(f"the pretrained PTE has {key}={saved.get(key)}, this encoder needs {mine[key]}",
                                      path=where, field=key)
        load_state(self.pte, state, where)

    def load_encoder_weights(self, directory: str | Path) -> list[str]:
        """Copy the weights of a saved FmriEncoder into this one, whether or not either has GLFA.

        The saved encoder must match this one everywhere but GLFA (image size, frames, ``pte``,
        ``temporal`` and ``heads`` except dropout) and every weight outside ``glfa.*`` must fit.
        ``glfa.*`` weights are copied when both have GLFA; when only this encoder has it (a stage-1
        encoder going into co-training), GLFA keeps its identity initialisation; when only the saved
        one has it, they are left out. Returns the names of the weights that kept their initial values.
        """
        meta = read_config(directory, type(self).__name__)
        saved, mine = meta["config"], self.config.model_dump(mode="json")
        self._check_geometry(saved.get("geometry"), Path(directory) / "config.json")
        pairs = {"image_size": (saved.get("image_size"), self.image_size),
                 "num_frames": (saved.get("num_frames"), self.num_frames)}
        for part in ("pte", "temporal", "heads"):
            for key, value in mine[part].items():
                if key != "dropout":
                    pairs[f"model.{part}.{key}"] = (saved.get("model", {}).get(part, {}).get(key), value)
        differ = [k for k, (got, needed) in pairs.items() if got != needed]
        if differ:
            detail = ", ".join(f"{k}: saved {pairs[k][0]!r}, needed {pairs[k][1]!r}" for k in differ)
            raise CheckpointError(f"the saved encoder does not match this one ({detail})",
                                  path=Path(directory) / "config.json", field=differ[0])
        state = {k: v for k, v in load_weights(directory, meta).items()
                 if self.glfa is not None or not k.startswith("glfa.")}
        own = self.state_dict()
        fresh = sorted(k for k in own if k not in state)
        if any(not k.startswith("glfa.") for k in fresh):
            raise CheckpointError(f"the saved encoder lacks {[k for k in fresh if not k.startswith('glfa.')]}",
                                  path=directory)
        load_state(self, {**{k: own[k] for k in fresh}, **state}, directory)
        return fresh

    def _check_geometry(self, saved: str | None, where: str | Path) -> None:
        """CheckpointError when saved weights were trained on images of another geometry (unknown passes)."""
        if saved is not None and self.geometry is not None and saved != self.geometry:
            raise CheckpointError(f"the weights were trained on '{saved}' flat images, this encoder reads "
                                  f"'{self.geometry}' images (its store's data.geometry)", path=where, field="geometry")

    def saved_config(self) -> dict[str, Any]:
        """The model config, image size, frames and geometry."""
        return {"model": self.config.model_dump(mode="json"), "image_size": self.image_size,
                "num_frames": self.num_frames, "geometry": self.geometry}

    @classmethod
    def from_saved_config(cls, config: dict[str, Any]) -> FmriEncoder:
        """An untrained FmriEncoder of a :meth:`saved_config`."""
        return cls(ModelConfig.model_validate(config["model"]), config["image_size"], config["num_frames"],
                   geometry=config.get("geometry"))
