"""A diffusers text-to-video model (``UNet3DConditionModel``, ``AutoencoderKL``, ``DDPMScheduler`` /
``DPMSolverMultistepScheduler``, text encoder and tokenizer; e.g. cerspense/zeroscope_v2_576w,
damo-vilab/text-to-video-ms-1.7b): :func:`load_video_generator` -> :class:`VideoGenerator`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glfa.backbones.hub import (
    check_kind, checked_load, frozen, read_json, resolve_dtype, resolve_pretrained, weights_kwargs,
)
from glfa.backbones.image import frames_to_tensor, in_batches
from glfa.devices import resolve_device
from glfa.errors import BackboneError, DataError

_GENERATOR_EXPECTED = (
    "a diffusers text-to-video folder with model_index.json, unet/ (UNet3DConditionModel), vae/ "
    "(AutoencoderKL), scheduler/ and optionally text_encoder/ + tokenizer/, as "
    "cerspense/zeroscope_v2_576w or damo-vilab/text-to-video-ms-1.7b"
)


@dataclass
class VideoGenerator:
    """The parts of a diffusers text-to-video model that training and generation use.

    ``scheduler`` (DDPM) adds noise in training; ``inference_scheduler`` (DPM-Solver multistep,
    built from the same scheduler config) denoises at generation. The VAE and text encoder are
    frozen; the UNet is returned as loaded (the trainer picks what trains).
    """

    unet: Any
    vae: Any
    scheduler: Any
    inference_scheduler: Any
    text_encoder: Any | None = None
    tokenizer: Any | None = None
    path: Path | None = None

    @property
    def device(self) -> torch.device:
        """Where the UNet lives."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's parameter dtype."""
        return next(self.unet.parameters()).dtype

    @property
    def cross_attention_dim(self) -> int:
        """C: the width of the conditioning tokens the UNet expects."""
        return int(self.unet.config.cross_attention_dim)

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latents (4 for zeroscope / ModelScope)."""
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel along each side (8 for zeroscope / ModelScope)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """Latents are multiplied by this after encoding (0.18215 for zeroscope / ModelScope)."""
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_videos(self, videos: np.ndarray | torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """``[b, f, h, w, 3]`` uint8 videos -> scaled latents ``[b, c, f, h/s, w/s]`` (the posterior mean)."""
        v = torch.as_tensor(videos)
        if v.ndim != 5:
            raise DataError(f"expected videos [b, f, h, w, 3], got shape {tuple(v.shape)}", field="videos")
        b, f = v.shape[:2]
        frames = v.reshape(b * f, *v.shape[2:])  # [(b f), h, w, 3]
        def encode(part):
            x = frames_to_tensor(part, self.vae.device).to(self.vae.dtype) * 2 - 1  # [n, 3, h, w]
            return self.vae.encode(x).latent_dist.mean * self.scaling_factor

        lat = in_batches(encode, frames, batch_size)  # [(b f), c, h', w']
        return lat.reshape(b, f, *lat.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Scaled latents ``[b, c, f, h', w']`` -> uint8 videos ``[b, f, h, w, 3]`` (on the CPU)."""
        b, _, f = latents.shape[:3]
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, *latents.shape[1:2], *latents.shape[3:])
        def decode(part):
            z = part.to(self.vae.device, self.vae.dtype) / self.scaling_factor
            x = (self.vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)  # [n, 3, h, w]
            return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

        frames = in_batches(decode, flat, batch_size)  # [(b f), h, w, 3]
        return frames.reshape(b, f, *frames.shape[1:])

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> the text encoder's token states ``[n, k, c]`` (k = the tokenizer's max length)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise BackboneError("this video generator has no text encoder: its folder lacks text_encoder/ and "
                                "tokenizer/, or it was loaded with with_text_encoder=False", path=self.path)
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        ids = tokens["input_ids"].to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state


def load_video_generator(
    path_or_id: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    allow_pickle: bool = False,
    with_text_encoder: bool = True,
) -> VideoGenerator:
    """Load a diffusers text-to-video model's UNet3D, VAE, schedulers and (if present) text encoder.

    ``with_text_encoder=False`` leaves the text encoder and tokenizer out (``None``): co-training
    and fMRI-conditioned generation never read text, and zeroscope's text encoder is 1.4 GB.
    """
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet3DConditionModel

    folder = resolve_pretrained(
        path_or_id, expected=_GENERATOR_EXPECTED,
        required=("model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"),
    )
    index = read_json(folder / "model_index.json")
    check_kind(folder / "unet" / "config.json", "_class_name", ("UNet3DConditionModel",), _GENERATOR_EXPECTED)
    check_kind(folder / "vae" / "config.json", "_class_name", ("AutoencoderKL",), _GENERATOR_EXPECTED)
    device, dtype = resolve_device(device), resolve_dtype(dtype)

    unet = checked_load("UNet3DConditionModel", folder / "unet", UNet3DConditionModel.from_pretrained, folder,
                        subfolder="unet", torch_dtype=dtype, **weights_kwargs(folder / "unet", allow_pickle))
    vae = checked_load("AutoencoderKL", folder / "vae", AutoencoderKL.from_pretrained, folder,
                       subfolder="vae", torch_dtype=dtype, **weights_kwargs(folder / "vae", allow_pickle))
    scheduler_config = folder / "scheduler"
    scheduler = checked_load("scheduler", scheduler_config, DDPMScheduler.from_pretrained, folder,
                             subfolder="scheduler", local_files_only=True)
    inference_scheduler = checked_load("scheduler", scheduler_config, DPMSolverMultistepScheduler.from_config,
                                       scheduler.config)

    text_encoder = tokenizer = None
    if with_text_encoder and (folder / "text_encoder" / "config.json").is_file() and (folder / "tokenizer").is_dir():
        _, class_name = index.get("text_encoder", ["transformers", "CLIPTextModel"])
        encoder_class = getattr(transformers, str(class_name), transformers.CLIPTextModel)
        text_encoder = checked_load("text encoder", folder / "text_encoder", encoder_class.from_pretrained, folder,
                                    subfolder="text_encoder", **weights_kwargs(folder / "text_encoder", allow_pickle))
        text_encoder = frozen(text_encoder, device, dtype)
        tokenizer = checked_load("tokenizer", folder / "tokenizer", transformers.AutoTokenizer.from_pretrained,
                                 folder / "tokenizer", local_files_only=True)
    return VideoGenerator(
        unet=unet.to(device), vae=frozen(vae, device), scheduler=scheduler,
        inference_scheduler=inference_scheduler, text_encoder=text_encoder, tokenizer=tokenizer, path=folder,
    )
