"""BLIP-2 captions of single frames: :func:`load_captioner` -> :class:`Captioner`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from glfa.backbones.hub import (
    check_kind, checked_load, frozen, image_norm, read_json, resolve_dtype, resolve_pretrained, weights_kwargs,
)
from glfa.backbones.image import CLIP_MEAN, CLIP_STD, frames_to_tensor, normalize, resize
from glfa.devices import resolve_device
from glfa.errors import BackboneError


class Captioner:
    """A frozen BLIP-2 (transformers ``Blip2ForConditionalGeneration``) captioning single frames."""

    def __init__(self, *, model, tokenizer, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                 max_new_tokens: int = 30, path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.size = (int(size[0]), int(size[1]))
        self.mean, self.std = tuple(mean), tuple(std)
        self.max_new_tokens = int(max_new_tokens)
        self.path = path

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        return next(self.model.parameters()).device

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[n, h, w, 3]`` frames -> BLIP pixel values ``[n, 3, H, W]`` (bicubic resize, mean/std)."""
        x = resize(frames_to_tensor(frames, self.device), *self.size)
        return normalize(x, self.mean, self.std).to(self.model.dtype)

    @torch.no_grad()
    def caption(self, frames: np.ndarray | torch.Tensor) -> list[str]:
        """``[n, h, w, 3]`` frames -> n captions (greedy decoding, special tokens removed)."""
        if len(frames) == 0:
            return []
        ids = self.model.generate(pixel_values=self.preprocess(frames), max_new_tokens=self.max_new_tokens,
                                  do_sample=False, num_beams=1)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def load_captioner(
    path_or_id: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    max_new_tokens: int = 30,
    allow_pickle: bool = False,
) -> Captioner:
    """Load BLIP-2 (e.g. Salesforce/blip2-opt-2.7b) with its tokenizer from a folder or cached hub id."""
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration

    expected = ("a transformers Blip2ForConditionalGeneration folder (config.json with model_type 'blip-2', "
                "weights, tokenizer files, preprocessor_config.json), e.g. Salesforce/blip2-opt-2.7b")
    folder = resolve_pretrained(path_or_id, expected=expected, required=("config.json",))
    config = check_kind(folder / "config.json", "model_type", ("blip-2",), expected)
    if config.get("image_token_index") is None:
        raise BackboneError("image_token_index is missing: the checkpoint predates transformers' image-token "
                            "BLIP-2 format; download the current revision of the model", path=folder / "config.json")
    model = checked_load("Blip2ForConditionalGeneration", folder, Blip2ForConditionalGeneration.from_pretrained,
                         folder, **weights_kwargs(folder, allow_pickle))
    tokenizer = checked_load("BLIP-2 tokenizer", folder, AutoTokenizer.from_pretrained, folder, local_files_only=True)
    mean, std = image_norm(folder, CLIP_MEAN, CLIP_STD)
    side = int(model.config.vision_config.image_size)
    size = (side, side)
    if (folder / "preprocessor_config.json").is_file():
        sizes = read_json(folder / "preprocessor_config.json").get("size", {})
        if isinstance(sizes, dict) and "height" in sizes and "width" in sizes:
            size = (int(sizes["height"]), int(sizes["width"]))
    model = frozen(model, resolve_device(device), resolve_dtype(dtype))
    return Captioner(model=model, tokenizer=tokenizer, size=size, mean=mean, std=std,
                     max_new_tokens=max_new_tokens, path=folder)
