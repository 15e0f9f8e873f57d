"""FmriToVideoPipeline: fMRI window -> video with DPM-Solver and negative mean-fMRI guidance.

One ``__call__`` runs inference (paper section 3.6): latents are drawn from seeded noise, denoised
by the UNet conditioned on the decoder's tokens for the fMRI (in place of text tokens), and decoded
by the VAE. Classifier-free guidance pushes away from the *negative* condition, the decoder's
tokens for the mean training fMRI window (saved beside the model as ``negative.safetensors``)::

    eps = eps_neg + s * (eps_fmri - eps_neg)

:meth:`FmriToVideoPipeline.from_model_dir` loads a decoder model folder (``model.json`` +
``negative.safetensors`` + ``encoder/`` + ``unet_trainable.safetensors`` for co-trained models, plus
``subject_map.safetensors`` for one adapted to a new subject by ``glfa adapt --method linear``;
``ridge.safetensors`` for the LEA baseline) on top of its base diffusers text-to-video model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from glfa.backbones import VideoGenerator, load_video_generator
from glfa.errors import CheckpointError, DataError
from glfa.models.serialization import read_json_object

MODEL_INFO = "model.json"
NEGATIVE = "negative.safetensors"
UNET_TRAINABLE = "unet_trainable.safetensors"
ENCODER_DIR = "encoder"
KINDS = ("cotrain", "lea", "blurry")
# Keys every model.json must hold, with the type expected.
_INFO_KEYS = {"kind": str, "method": str, "generator": str, "store": str, "train_subjects": list,
              "held_out": list, "config": dict, "num_frames": int, "image_size": int}


def guided_noise(eps_neg: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Negative-condition guidance: ``eps_neg + scale * (eps_cond - eps_neg)`` (any matching shapes)."""
    return eps_neg + scale * (eps_cond - eps_neg)


def read_model_info(model_dir: str | Path) -> dict[str, Any]:
    """The checked ``model.json`` of a decoder model folder; CheckpointError naming what is missing."""
    model_dir = Path(model_dir)
    path = model_dir / MODEL_INFO
    if not path.is_file():
        raise CheckpointError(
            f"no decoder model here (missing {MODEL_INFO}); expected a folder written by `glfa train cotrain` "
            f"(RUN/cotrain-<method>/model) or the LEA baseline (RUN/lea/model), holding {MODEL_INFO}, "
            f"{NEGATIVE} and {ENCODER_DIR}/", path=model_dir)
    info = read_json_object(path)
    for key, kind in _INFO_KEYS.items():
        if not isinstance(info.get(key), kind) or (kind is int and isinstance(info.get(key), bool)):
            raise CheckpointError(f"expected {kind.__name__} {key!r}, got {info.get(key)!r}", path=path, field=key)
    if info["kind"] not in KINDS:
        raise CheckpointError(f"kind is {info['kind']!r}, expected one of {list(KINDS)}", path=path, field="kind")
    return info


def read_negative_tokens(model_dir: str | Path) -> torch.Tensor:
    """The negative condition ``[K, C]`` float32 from ``negative.safetensors``."""
    path = Path(model_dir) / NEGATIVE
    tensors = _read_safetensors(path, "the negative condition (mean_fmri [n, H, W] and tokens [K, C])")
    tokens = tensors.get("tokens")
    if tokens is None or tokens.ndim != 2:
        raise CheckpointError(f"expected a 2-D tensor 'tokens' [K, C], got "
                              f"{None if tokens is None else list(tokens.shape)}", path=path, field="tokens")
    return tokens.float()


def _read_safetensors(path: Path, expected: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (on the CPU); CheckpointError naming the file if it cannot."""
    if not path.is_file():
        raise CheckpointError(f"missing file; expected {expected}", path=path)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt safetensors ({exc.__class__.__name__}: {exc})", path=path) from None


def overlay_unet(unet: torch.nn.Module, path: str | Path) -> list[str]:
    """Copy the parameters saved in ``path`` (by ``unet.named_parameters()`` name) into ``unet``.

    Every saved name must be a UNet parameter of the same shape; otherwise a CheckpointError names
    the file and the offending parameters, and ``unet`` is left unchanged. Returns the names copied.
    """
    path = Path(path)
    saved = _read_safetensors(path, "the trained UNet parameters by their unet.named_parameters() names")
    params = dict(unet.named_parameters())
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise CheckpointError(f"{len(unknown)} saved parameter(s) are not in the base UNet, e.g. {unknown[:3]}; "
                              "was the model trained on another generator?", path=path)
    wrong = [f"{name} {list(value.shape)} (UNet {list(params[name].shape)})"
             for name, value in saved.items() if value.shape != params[name].shape]
    if wrong:
        raise CheckpointError(f"{len(wrong)} parameter shape(s) differ from the base UNet, e.g. {wrong[:3]}",
                              path=path)
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    return sorted(saved)


class EncoderCondition:
    """An :class:`~glfa.models.encoder.FmriEncoder` as a condition: fMRI ``[B, n, H, W]`` -> tokens ``[B, K, C]``.

    ``input_map`` (a module ``[B, n, H, W]`` -> same, e.g. an adapted subject's
    :class:`~glfa.adapt.ParcelLinearMap`) is applied to the fMRI before the encoder.
    """

    def __init__(self, encoder: torch.nn.Module, input_map: torch.nn.Module | None = None):
        self.encoder = encoder.eval().requires_grad_(False)
        self.input_map = input_map

    @torch.no_grad()
    def __call__(self, fmri: torch.Tensor) -> torch.Tensor:
        """The encoder's ``tokens`` for ``fmri`` (moved to the encoder's device)."""
        device = next(self.encoder.parameters()).device
        fmri = fmri.to(device)
        if self.input_map is not None:
            fmri = self.input_map(fmri)
        return self.encoder(fmri, heads=("tokens",))["tokens"]


class FmriToVideoPipeline:
    """fMRI windows -> videos: DPM-Solver multistep with guidance away from the mean-fMRI condition.

    Parameters
    ----------
    condition
        Callable fMRI ``[B, n, H, W]`` float -> tokens ``[B, K, C]`` (the UNet's ``encoder_hidden_states``).
    generator
        The video generator (VAE, inference scheduler; its UNet unless ``unet`` is given).
    negative_tokens
        ``[K, C]``: the condition for the mean training fMRI window.
    unet
        The denoiser, called as ``unet(latents, t, encoder_hidden_states=tokens).sample``;
        ``generator.unet`` when None.
    fmri_shape
        ``(n, H, W)`` the condition expects, checked on every call; None = only the rank is checked.
    model_info
        The model folder's ``model.json`` (set by :meth:`from_model_dir`), else None.
    """

    def __init__(self, *, condition: Callable[[torch.Tensor], torch.Tensor], generator: VideoGenerator,
                 negative_tokens: torch.Tensor, unet: Callable | None = None,
                 fmri_shape: tuple[int, int, int] | None = None, model_info: dict[str, Any] | None = None):
        self.condition = condition
        self.generator = generator
        self.unet = generator.unet if unet is None else unet
        negative_tokens = torch.as_tensor(negative_tokens, dtype=torch.float32)
        width = generator.cross_attention_dim
        if negative_tokens.ndim != 2 or negative_tokens.shape[1] != width:
            raise DataError(f"expected negative tokens [K, {width}] (the UNet's cross-attention width), "
                            f"got {list(negative_tokens.shape)}", field="negative_tokens")
        self.negative_tokens = negative_tokens
        self.fmri_shape = tuple(fmri_shape) if fmri_shape is not None else None
        self.model_info = model_info

    @property
    def device(self) -> torch.device:
        """Where the UNet and the latents live."""
        return self.generator.device

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, device: str | torch.device | None = None,
                       dtype: str | torch.dtype | None = None) -> FmriToVideoPipeline:
        """Load a decoder model folder (``RUN/cotrain-<method>/model`` or ``RUN/lea/model``).

        The base generator comes from ``model.json``'s ``generator`` (``dtype`` applies to it; the
        fMRI encoder stays float32). ``kind: cotrain`` conditions on the saved encoder's tokens and
        overlays ``unet_trainable.safetensors`` on the UNet; ``kind: lea`` conditions on
        :class:`glfa.baselines.lea.LeaDecoder`'s ridge-predicted tokens.
        """
        model_dir = Path(model_dir)
        info = read_model_info(model_dir)
        if info["kind"] == "blurry":
            raise CheckpointError("a blurry decoder predicts VAE latents and conditions no diffusion: decode them "
                                  "with glfa.baselines.blurry.load_blurry_decoder (glfa generate --method blurry), or "
                                  "start a diffusion method from them (generation.init: blurry)",
                                  path=model_dir / MODEL_INFO, field="kind")
        negative = read_negative_tokens(model_dir)
        generator = load_video_generator(info["generator"], device=device, dtype=dtype, with_text_encoder=False)
        if info["kind"] == "cotrain":
            from glfa.models.encoder import FmriEncoder

            encoder = FmriEncoder.from_pretrained(model_dir / ENCODER_DIR, map_location=generator.device)
            overlay_unet(generator.unet, model_dir / UNET_TRAINABLE)
            input_map = None
            if info.get("adaptation", {}).get("method") == "linear":  # glfa adapt --method linear
                from glfa.adapt import SUBJECT_MAP, load_subject_map

                input_map = load_subject_map(model_dir / SUBJECT_MAP, generator.device)
            condition: Callable = EncoderCondition(encoder, input_map)
        else:
            from glfa.baselines.lea import LeaDecoder

            condition = LeaDecoder.load(model_dir, generator.device).tokens
        generator.unet.eval().requires_grad_(False)
        return cls(condition=condition, generator=generator, negative_tokens=negative,
                   fmri_shape=(info["num_frames"], info["image_size"], info["image_size"]), model_info=info)

    # ------------------------------------------------------------------ inference

    def _check(self, fmri: torch.Tensor, num_frames: int, height: int, width: int, num_inference_steps: int) -> None:
        factor = self.generator.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % factor:
                raise DataError(f"must be a positive multiple of the VAE factor {factor}, got {value}", field=name)
        for name, value in (("num_frames", num_frames), ("num_inference_steps", num_inference_steps)):
            if value <= 0:
                raise DataError(f"must be positive, got {value}", field=name)
        expected = "[B, n, H, W]" if self.fmri_shape is None else f"[B, {', '.join(map(str, self.fmri_shape))}]"
        if fmri.ndim != 4 or fmri.shape[0] == 0 or (self.fmri_shape and tuple(fmri.shape[1:]) != self.fmri_shape):
            raise DataError(f"expected fmri of shape {expected} with B >= 1, got {list(fmri.shape)}", field="fmri")

    def initial_noise(self, seeds: Sequence[int], num_frames: int, height: int, width: int) -> torch.Tensor:
        """Standard normal latents ``[b, c, f, h/s, w/s]`` float32 on the CPU: sample ``i`` from ``seeds[i]``."""
        factor = self.generator.vae_scale_factor
        shape = (self.generator.latent_channels, num_frames, height // factor, width // factor)
        return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)))
                            for s in seeds])  # [b, c, f, h', w']

    @torch.no_grad()
    def __call__(self, fmri: np.ndarray | torch.Tensor, *, num_inference_steps: int, guidance_scale: float,
                 num_frames: int, height: int, width: int, seed: int | Sequence[int] = 0,
                 batch_size: int | None = None, output_type: str = "video", init_latents: torch.Tensor | None = None,
                 init_strength: float = 1.0, progress: bool = False) -> torch.Tensor:
        """Decode fMRI windows ``[B, n, H, W]`` into uint8 videos ``[B, num_frames, height, width, 3]`` (CPU).

        Each sample's initial noise is drawn on the CPU from its own generator, seeded with
        ``seed + i`` for sample ``i`` (or ``seed[i]`` when ``seed`` is a sequence of ``B`` ints),
        so a clip does not depend on the device, on the other samples or on ``batch_size``
        (samples per UNet batch; all at once when None). ``guidance_scale`` 1 runs the
        conditional branch alone. ``output_type="latent"`` returns the final scaled latents
        ``[B, c, f, h/s, w/s]`` (float32, CPU) instead of decoding them.

        ``init_latents`` (scaled latents ``[B, c, f, h/s, w/s]``, e.g. the blurry decoder's) start
        the solver part-way, as image-to-image diffusion does: the first ``round(steps * (1 -
        init_strength))`` of the ``num_inference_steps`` timesteps are skipped and the latents are
        noised to the first timestep run with the sample's own seeded noise. ``init_strength`` 0
        returns ``init_latents`` as they are; 1 is the pure-noise start (``init_latents`` unused).
        """
        if output_type not in ("video", "latent"):
            raise DataError(f"expected 'video' or 'latent', got {output_type!r}", field="output_type")
        fmri = torch.as_tensor(fmri, dtype=torch.float32)
        self._check(fmri, num_frames, height, width, num_inference_steps)
        b = fmri.shape[0]
        seeds = [seed + i for i in range(b)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
        if len(seeds) != b:
            raise DataError(f"expected one seed per sample ({b}), got {len(seeds)}", field="seed")
        if not 0.0 <= init_strength <= 1.0:
            raise DataError(f"expected a strength in [0, 1], got {init_strength}", field="init_strength")
        if init_latents is not None:
            init_latents = torch.as_tensor(init_latents, dtype=torch.float32)
            factor = self.generator.vae_scale_factor
            expected = (b, self.generator.latent_channels, num_frames, height // factor, width // factor)
            if tuple(init_latents.shape) != expected:
                raise DataError(f"expected init latents of shape {list(expected)} (one per fMRI window, at the "
                                f"generation size), got {list(init_latents.shape)}", field="init_latents")
        size = b if batch_size is None else batch_size
        if size <= 0:
            raise DataError(f"must be positive, got {size}", field="batch_size")
        parts = range(0, b, size)
        bar = tqdm(total=len(parts) * num_inference_steps, desc="denoise", unit="step",
                   disable=not progress, dynamic_ncols=True)
        out = []
        with bar:
            for start in parts:
                noise = self.initial_noise(seeds[start:start + size], num_frames, height, width)
                init = None if init_latents is None or init_strength == 1.0 else init_latents[start:start + size]
                latents = self._denoise(fmri[start:start + size], noise, num_inference_steps, guidance_scale, bar,
                                        init, init_strength)
                out.append(latents.cpu() if output_type == "latent" else self.generator.decode_latents(latents))
        return torch.cat(out)

    def _denoise(self, fmri: torch.Tensor, noise: torch.Tensor, steps: int, scale: float, bar,
                 init: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
        """Run the scheduler's loop from ``noise`` [b, c, f, h', w'] (or ``init`` noised to ``strength``); float32."""
        device, dtype = self.device, self.generator.dtype
        tokens = self.condition(fmri.to(device)).to(device, dtype)  # [b, k, c]
        if tokens.ndim != 3 or tokens.shape[1:] != self.negative_tokens.shape:
            raise DataError(f"the condition gave tokens {list(tokens.shape)}, expected [b, "
                            f"{', '.join(map(str, self.negative_tokens.shape))}] like the negative tokens",
                            field="condition")
        guided = scale != 1
        if guided:
            negative = self.negative_tokens.to(device, dtype).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([negative, tokens])  # [(2 b), k, c]: [neg; cond]
        template = self.generator.inference_scheduler
        scheduler = type(template).from_config(template.config)  # fresh multistep state per batch
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        if init is None:
            latents = noise.to(device) * scheduler.init_noise_sigma  # [b, c, f, h', w'] float32
        else:
            skip = steps - int(round(steps * strength))
            timesteps = timesteps[skip:]
            bar.update(skip)
            if not len(timesteps):
                return init.to(device)
            scheduler.set_begin_index(skip)
            latents = scheduler.add_noise(init.to(device), noise.to(device), timesteps[:1])
        for t in timesteps:
            x = scheduler.scale_model_input(latents, t)
            x = torch.cat([x, x]) if guided else x
            eps = self.unet(x.to(dtype), t, encoder_hidden_states=tokens).sample.float()
            if guided:
                eps_neg, eps_cond = eps.chunk(2)
                eps = guided_noise(eps_neg, eps_cond, scale)
            latents = scheduler.step(eps, t, latents).prev_sample
            bar.update(1)
        return latents
