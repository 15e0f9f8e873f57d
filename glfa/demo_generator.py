"""The demo's text-to-video model: a tiny diffusers UNet3D and VAE trained on the synthetic study's clips.

Real studies decode through zeroscope or ModelScope, whose UNet already knows natural video. The
built-in synthetic study needs a model that knows *its* stimuli, so :func:`train_demo_generator`
trains one on the store's training windows and their captions. Stage 2 then puts fMRI tokens in
place of the text tokens exactly as with zeroscope: the result is an ordinary diffusers
text-to-video folder that :func:`glfa.backbones.load_video_generator` loads::

    model_index.json  unet/ (UNet3DConditionModel)  vae/ (AutoencoderKL)  scheduler/ (DDPMScheduler)
    text_encoder/ (CLIPTextModel)  tokenizer/ (CLIPTokenizer)  metrics.json

The folder starts as :func:`glfa.backbones.tiny_video_generator` writes it (scheduler, tokenizer,
frozen text encoder of width ``cross_attention_dim``); its VAE and UNet are replaced by
:data:`VAE_ARCH` and :data:`UNET_ARCH` sizes, which make 8 x 8 latents of 64 x 64 frames (the
VAE downsamples by 8, as zeroscope's) so that training fits in minutes on two CPU cores.

The VAE bounds what any decoder can show: the frame classifier of the N-way metrics needs detail
that a small, briefly trained VAE loses. On the former 12-photograph demo study, real frames of the right
category kept a frame 2-way brain signal of +0.153 as they were and +0.041 after a round trip through
this VAE trained for 300 steps (17.2 dB on test frames). A VAE that downsamples by 4, trained for 1,000
steps, kept +0.119 (20.4 dB), but a UNet on its 16 x 16 latents, trained for 400 steps, no longer
followed its captions (+0.026 with the true captions), and a step costs it twice as much: the demo keeps
8 x 8 latents and trains the VAE longer instead (1,000 steps in configs/demo.yaml: +0.121, 19.3 dB). On
the demo's 8-photograph study, real frames of the right photograph keep +0.155 through the VAE and
the UNet given the true captions reaches +0.022
(``benchmarks/generator_ceiling.py`` measures these ceilings): the demo's clips get their photograph
from the retrieval decoder's start (glfa.baselines.blurry), not from this UNet.

Training, all on the store's *training* windows (test windows are only read for the metrics):

1. VAE: every distinct frame of the training windows, reconstruction MSE in [-1, 1] plus
   :data:`KL_WEIGHT` times the posterior's KL divergence, ``batch_size`` frames a step,
   ``vae_steps`` steps. Its ``scaling_factor`` is then set to one over the standard deviation
   of the training latents, so that diffusion sees unit-variance latents (zeroscope's 0.18215
   plays the same part for its VAE).
2. UNet: stage 2's denoising loss (:func:`glfa.losses.denoising_loss`) on the scaled latents of the training windows (posterior means,
   computed once), conditioned on the frozen text encoder's token states of the caption of each
   window's middle frame (computed once per caption; the synthetic study captions every frame
   of a clip alike, and in a real study the middle frame's caption describes a window best).
   ``batch_size`` windows a step, ``unet_steps`` steps. No classifier-free condition dropout:
   generation guides away from the mean *fMRI* condition, not from an empty prompt.

The schedule has zero terminal SNR and the UNet predicts v (:data:`SCHEDULER_CHANGES`): with
zeroscope's epsilon schedule a model this small and this briefly trained ignores its condition.
The text encoder keeps its seeded random initialisation: its token states differ per caption,
which is all the UNet needs. AdamW, cosine-decayed from ``learning_rate``, gradients clipped at 1.
Everything is seeded by ``demo_generator.seed``: a CPU run is deterministic.

The model is trained once per machine: the folder is
``CACHE/demo-generator-<key>`` (``CACHE``: the ``cache_dir`` argument, else
``demo_generator.cache_dir``, else ``$GLFA_CACHE``, else ``~/.cache/glfa``), where the key is
the sha256 of the ``simulation``, ``data`` and ``demo_generator`` config sections (less
``cache_dir``), a digest of the training frames and captions, and :data:`FORMAT`. Neither the
store's path nor its creation time enters the key, so a fresh demo output folder reuses the
model. It is built in a temporary sibling folder and swapped in whole (:func:`glfa.io.install_dir`,
which also removes the temporaries of killed builds and keeps those of running ones); a folder that is
present but incomplete is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from glfa.config import GlfaConfig
from glfa.data.features import cache_key
from glfa.errors import StoreError
from glfa.io import install_dir, write_json_atomic
from glfa.optim import adamw

__all__ = ["FORMAT", "KL_WEIGHT", "VAE_ARCH", "UNET_ARCH", "SCHEDULER_CHANGES", "REQUIRED_FILES", "build_demo_generator",
           "demo_generator_dir", "is_complete", "train_demo_generator"]

log = logging.getLogger(__name__)

#: Version of what this module trains and writes; part of the cache key.
FORMAT = 1
#: Weight of the VAE posterior's KL divergence (summed over latent elements, averaged over frames).
KL_WEIGHT = 1e-6
#: The VAE: four levels (downsampling by 8), 4 latent channels.
VAE_ARCH: dict[str, Any] = dict(block_out_channels=(8, 16, 32, 64), layers_per_block=1, latent_channels=4,
                                norm_num_groups=8)
#: The UNet: two levels; spatial, temporal and cross-attention at the lower one and in the middle block.
UNET_ARCH: dict[str, Any] = dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8,
                                 norm_num_groups=8, down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"),
                                 up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"))
#: Changes to the tiny generator's DDPM schedule (scaled-linear betas, 1000 steps): zero terminal SNR
#: with v-prediction, and inference from the last timestep (Lin et al. 2024, "Common diffusion noise
#: schedules and sample steps are flawed"). With zeroscope's schedule the last timestep still holds
#: 7% of the signal, so a sample's colours come from its initial noise; a model of a few hundred
#: steps then ignores its condition (samples of test captions at chance, 8%, in the 12-category demo)
#: where this one follows it (27%).
SCHEDULER_CHANGES: dict[str, Any] = dict(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                         timestep_spacing="trailing")
#: Files a finished model folder holds (``metrics.json`` is written last).
REQUIRED_FILES = (
    "model_index.json", "scheduler/scheduler_config.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
    "metrics.json",
)  # fmt: skip
_PREFIX = "demo-generator-"
_SIDE_MULTIPLE = 16  # the VAE's 8 times the UNet's one downsampling


# ----------------------------------------------------------------------------- the folder


def build_demo_generator(folder: str | Path, *, cross_attention_dim: int, height: int, width: int,
                         seed: int = 0) -> Path:
    """Write an untrained demo generator (random VAE and UNet of the demo sizes) in ``folder``.

    The tokenizer and text encoder are :func:`glfa.backbones.tiny_video_generator`'s; its
    scheduler gets :data:`SCHEDULER_CHANGES`; the VAE and UNet are :data:`VAE_ARCH` /
    :data:`UNET_ARCH` for ``height x width`` frames.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel

    from glfa.backbones import tiny_video_generator

    folder = Path(folder)
    tiny_video_generator(folder, cross_attention_dim=cross_attention_dim, sample_size=max(height, width), seed=seed)
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    DDPMScheduler.from_config(scheduler.config, **SCHEDULER_CHANGES).save_pretrained(folder / "scheduler")
    levels = len(VAE_ARCH["block_out_channels"])
    factor = 2 ** (levels - 1)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, sample_size=max(height, width), **VAE_ARCH)
    unet = UNet3DConditionModel(sample_size=(height // factor, width // factor),
                                in_channels=VAE_ARCH["latent_channels"], out_channels=VAE_ARCH["latent_channels"],
                                cross_attention_dim=cross_attention_dim, **UNET_ARCH)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return folder


def is_complete(folder: str | Path) -> bool:
    """Whether ``folder`` holds every file of a finished demo generator (:data:`REQUIRED_FILES`)."""
    folder = Path(folder)
    return all((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in REQUIRED_FILES)


def _cache_root(config: GlfaConfig, cache_dir: str | Path | None) -> Path:
    """The machine's glfa cache: ``cache_dir``, ``demo_generator.cache_dir``, ``$GLFA_CACHE`` or ``~/.cache/glfa``."""
    root = cache_dir or config.demo_generator.cache_dir or os.environ.get("GLFA_CACHE") or "~/.cache/glfa"
    return Path(root).expanduser()


class WindowData:
    """The store's windows of one split in memory: frames ``[N, m, h, w, 3]`` and the middle frame's caption."""

    def __init__(self, store, split: str):
        windows = store.windows(split)
        shape = (0, store.video_frames, store.manifest["video_height"], store.manifest["video_width"], 3)
        self.videos = np.stack([store.frames(w) for w in windows]) if windows else np.zeros(shape, np.uint8)
        # [N, m, h, w, 3]
        self.captions = [store.captions(w)[store.video_frames // 2] for w in windows]
        _, first = np.unique(store.frame_rows(windows).ravel(), return_index=True)
        self.frames = self.videos.reshape(-1, *self.videos.shape[2:])[np.sort(first)]  # [distinct, h, w, 3]

    def digest(self) -> str:
        """sha256 of the frames and captions."""
        sha = hashlib.sha256(np.ascontiguousarray(self.videos).tobytes())
        sha.update("\n".join(self.captions).encode())
        return sha.hexdigest()


def _check(store, config: GlfaConfig, videos: np.ndarray) -> None:
    """ConfigError / StoreError when the generator cannot serve this config or store."""
    settings = config.demo_generator
    if settings.cross_attention_dim != config.model.heads.token_dim:
        raise config.error("demo_generator.cross_attention_dim",
                           f"is {settings.cross_attention_dim} but model.heads.token_dim is "
                           f"{config.model.heads.token_dim}; the fMRI tokens replace the generator's text tokens, "
                           "so the two must be equal")
    h, w = videos.shape[2:4]
    if h % _SIDE_MULTIPLE or w % _SIDE_MULTIPLE:
        raise StoreError(f"video frames are {h} x {w}; the demo generator needs sides that are multiples of "
                         f"{_SIDE_MULTIPLE} (set data.windows.video_height/video_width and prepare again)",
                         path=store.path)


def demo_generator_dir(store, config: GlfaConfig, *, cache_dir: str | Path | None = None,
                       data: WindowData | None = None) -> Path:
    """The cache folder of the demo generator for ``store`` and ``config`` (it may not exist yet)."""
    data = data if data is not None else WindowData(store, "train")
    settings = config.demo_generator.model_dump(mode="json")
    settings.pop("cache_dir")
    key = cache_key({"format": FORMAT, "simulation": config.simulation.model_dump(mode="json"),
                     "data": config.data.model_dump(mode="json"), "demo_generator": settings,
                     "training_data": data.digest()})
    return _cache_root(config, cache_dir) / f"{_PREFIX}{key[:16]}"


def train_demo_generator(store, config: GlfaConfig, *, cache_dir: str | Path | None = None, progress: bool = True,
                         device: str | torch.device | None = None) -> Path:
    """The demo's text-to-video folder for ``store``: reused from the machine's cache, or trained and cached.

    Parameters
    ----------
    store
        An open :class:`~glfa.data.store.StudyStore` (the synthetic study's).
    config
        The experiment config: ``demo_generator`` (steps, batch size, learning rate, width, seed,
        cache folder), ``simulation`` and ``data`` (in the cache key), ``model.heads.token_dim``
        (must equal ``demo_generator.cross_attention_dim``).
    cache_dir
        The cache root, overriding ``demo_generator.cache_dir`` and ``$GLFA_CACHE``.
    progress
        Show progress bars and say whether the model was reused.
    device
        Where to train (default ``config.device``).

    Returns
    -------
    Path
        ``CACHE/demo-generator-<key>``, a diffusers text-to-video folder with ``metrics.json``.
    """
    data = WindowData(store, "train")
    if not len(data.videos):
        raise StoreError("the store has no training windows; the demo generator trains on them", path=store.path)
    _check(store, config, data.videos)
    target = demo_generator_dir(store, config, cache_dir=cache_dir, data=data)
    if is_complete(target):
        _say(f"demo generator: reusing {target}", progress)
        return target
    _say(f"demo generator: {'rebuilding incomplete' if target.exists() else 'training'} {target}", progress)
    with install_dir(target) as tmp:
        metrics = _train(tmp, data, WindowData(store, "test"), config, progress=progress, device=device)
        write_json_atomic(tmp / "metrics.json", metrics)
    return target


def _say(message: str, progress: bool) -> None:
    log.info(message)
    if progress:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- training


def _train(folder: Path, train: WindowData, test: WindowData, config: GlfaConfig, *, progress: bool,
           device: str | torch.device | None) -> dict[str, Any]:
    """Build, train and save the generator in ``folder``; the metrics for ``metrics.json``."""
    from glfa.backbones import load_video_generator
    from glfa.devices import resolve_device

    settings = config.demo_generator
    clock = _Clock()
    height, width = train.videos.shape[2:4]
    build_demo_generator(folder, cross_attention_dim=settings.cross_attention_dim, height=height, width=width,
                         seed=settings.seed)
    device = resolve_device(device if device is not None else config.device)
    generator = load_video_generator(folder, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        vae_losses = train_vae(generator.vae, train.frames, steps=settings.vae_steps, batch_size=settings.batch_size,
                               learning_rate=settings.learning_rate, progress=progress)
        vae_time = clock.lap()
        latents = generator.encode_videos(train.videos) / generator.scaling_factor  # [N, c, m, h', w'] unscaled
        scaling = float(1.0 / latents.float().std())
        generator.vae.register_to_config(scaling_factor=scaling)
        latents = latents * scaling
        captions = sorted(set(train.captions))
        states = generator.encode_text(captions)  # [k, 77, C]
        condition = states[torch.tensor([captions.index(c) for c in train.captions])]  # [N, 77, C]
        encode_time = clock.lap()
        unet_losses = train_unet(generator.unet, generator.scheduler, latents, condition, steps=settings.unet_steps,
                                 batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                                 progress=progress)
        unet_time = clock.lap()
    generator.vae.save_pretrained(folder / "vae", safe_serialization=True)
    generator.unet.save_pretrained(folder / "unet", safe_serialization=True)
    return {
        "format": FORMAT,
        "vae": {**_loss_summary(vae_losses), **vae_time, "scaling_factor": scaling,
                "psnr_train": reconstruction_psnr(generator, train.videos),
                "psnr_test": reconstruction_psnr(generator, test.videos) if len(test.videos) else None},
        "unet": {**_loss_summary(unet_losses), **unet_time},
        "encode": encode_time,
        "train_windows": len(train.videos), "test_windows": len(test.videos), "train_frames": len(train.frames),
        "captions": len(captions), "frame_size": [int(height), int(width)], "num_frames": int(train.videos.shape[1]),
        "device": str(device), "threads": torch.get_num_threads(), **clock.total(),
    }  # fmt: skip


class _Clock:
    """Wall and CPU (process) seconds, per lap and in total."""

    def __init__(self):
        self.start = self.last = (time.perf_counter(), time.process_time())

    def _since(self, mark: tuple[float, float]) -> dict[str, float]:
        return {"seconds": round(time.perf_counter() - mark[0], 2), "cpu_seconds": round(time.process_time() - mark[1], 2)}

    def lap(self) -> dict[str, float]:
        """Seconds since the last lap (or the start)."""
        out, self.last = self._since(self.last), (time.perf_counter(), time.process_time())
        return out

    def total(self) -> dict[str, float]:
        """Seconds since the start."""
        return self._since(self.start)


def _loss_summary(losses: list[float]) -> dict[str, float]:
    """Steps, the first loss and the mean of the last tenth of the steps."""
    tail = max(1, len(losses) // 10)
    return {"steps": len(losses), "first_loss": losses[0], "final_loss": float(np.mean(losses[-tail:]))}


def _shuffled_batches(n: int, batch_size: int, generator: torch.Generator):
    """Index batches forever: each epoch a fresh permutation of ``range(n)`` cut into ``batch_size`` pieces."""
    while True:
        order = torch.randperm(n, generator=generator)
        for a in range(0, n - min(batch_size, n) + 1, min(batch_size, n)):
            yield order[a:a + min(batch_size, n)]


def _optimizer(module: torch.nn.Module, learning_rate: float, steps: int):
    """AdamW and a cosine decay of its learning rate to a tenth over ``steps``."""
    optimizer = adamw(module.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return optimizer, schedule


def _fit(module: torch.nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], n: int, *, steps: int,
         batch_size: int, learning_rate: float, desc: str, progress: bool) -> list[float]:
    """Train ``module`` for ``steps`` steps; ``loss_of(index)`` is the loss of a batch of sample indices; the losses.

    Batches are :func:`_shuffled_batches` of ``range(n)`` drawn from the global torch RNG; AdamW with
    :func:`_optimizer`'s cosine decay, gradients clipped at norm 1. Leaves the module in eval mode.
    """
    module.train()
    module.requires_grad_(True)
    optimizer, schedule = _optimizer(module, learning_rate, steps)
    batches = _shuffled_batches(n, batch_size, torch.default_generator)
    losses = []
    for _ in tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False):
        loss = loss_of(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    module.eval()
    return losses


def train_vae(vae, frames: np.ndarray, *, steps: int, batch_size: int, learning_rate: float,
              progress: bool = True) -> list[float]:
    """Train an ``AutoencoderKL`` on uint8 frames ``[n, h, w, 3]``: MSE in [-1, 1] + KL_WEIGHT * KL; the losses.

    Draws from the global torch RNG (seed it first); leaves the VAE in eval mode with gradients off.
    """
    from glfa.backbones import frames_to_tensor

    device = next(vae.parameters()).device
    pixels = frames_to_tensor(frames) * 2 - 1  # [n, 3, h, w]

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        x = pixels[index].to(device)  # [b, 3, h, w]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        return F.mse_loss(reconstruction, x) + KL_WEIGHT * posterior.kl().mean()

    losses = _fit(vae, loss_of, len(pixels), steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                  desc="demo generator: VAE", progress=progress)
    vae.requires_grad_(False)
    return losses


def train_unet(unet, scheduler, latents: torch.Tensor, condition: torch.Tensor, *, steps: int, batch_size: int,
               learning_rate: float, progress: bool = True) -> list[float]:
    """Train a ``UNet3DConditionModel`` with :func:`glfa.losses.denoising_loss` (stage 2's); the losses.

    ``latents`` ``[N, c, m, h', w']`` (scaled) and ``condition`` ``[N, k, C]`` (each window's
    token states) are indexed together. Draws from the global torch RNG (seed it first); leaves
    the UNet in eval mode.
    """
    from glfa.losses import denoising_loss

    device = next(unet.parameters()).device

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        return denoising_loss(unet, scheduler, latents[index].to(device), condition[index].to(device))

    return _fit(unet, loss_of, len(latents), steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                desc="demo generator: UNet", progress=progress)


@torch.no_grad()
def reconstruction_psnr(generator, videos: np.ndarray) -> float:
    """PSNR (dB, peak 255) of ``decode(encode(videos))`` against uint8 ``videos`` ``[b, f, h, w, 3]``."""
    decoded = generator.decode_latents(generator.encode_videos(videos)).numpy().astype(np.float64)
    mse = float(np.mean((decoded - videos.astype(np.float64)) ** 2))
    return round(10 * math.log10(255.0**2 / max(mse, 1e-10)), 3)
