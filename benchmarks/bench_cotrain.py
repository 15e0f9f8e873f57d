"""Stage-2 step with cached VAE latents against one that encodes the window's frames every step.

Default (tiny, CPU): a tiny store (:func:`tests.fixtures.write_decoding_store`), the tiny
zeroscope-layout generator (:func:`glfa.backbones.tiny_video_generator`) and a random stage-1
encoder (tiny preset). Both variants are the same :class:`~glfa.training.cotrain.CotrainStage`
step (fMRI encoder with GLFA + UNet, L_denoise + L_GLFA, backward, AdamW update) on the same
windows with the same random draws: the cached one takes the latents from the store's cache
(:func:`glfa.data.features.vae_latents`), the other reads the windows' frames from the store and
encodes them with the frozen VAE inside the step, as training would without the cache. The steps
alternate (one of each per round) so that machine load hits both alike; the median per step is
reported. Prints a Markdown table and a JSON line.

    python benchmarks/bench_cotrain.py [--rounds 20] [--batch 6] [--video-size 32] [--threads 1]

``--full``: a zeroscope_v2_576w-shaped step (UNet3DConditionModel with block_out_channels
(320, 640, 1280, 1280), cross_attention_dim 1024, attention heads of 64; the Stable Diffusion VAE;
the full fMRI encoder with GLFA at 256 x 256) with random weights, bf16 autocast and gradient
checkpointing on both models; latents ``4 x frames x height/8 x width/8`` (12 x 320 x 576 by
default: 4 x 12 x 40 x 72). Reports the time of a step with cached latents, the time to encode
the batch's frames with the VAE, and torch.cuda.max_memory_allocated, per sample. Without CUDA it
builds the models on the meta device, prints their sizes and stops, unless ``--device cpu``.

    python benchmarks/bench_cotrain.py --full [--subjects 2] [--windows 1] [--frames 12] [--height 320]
        [--width 576] [--fmri-frames 5] [--repeats 3] [--device cuda|cpu] [--unet-channels 320,640,1280,1280]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures import write_decoding_store  # noqa: E402

from glfa.backbones import VideoGenerator, tiny_video_generator  # noqa: E402
from glfa.config import ModelConfig, validate_config  # noqa: E402
from glfa.data.store import StudyStore  # noqa: E402
from glfa.models.encoder import FmriEncoder  # noqa: E402
from glfa.optim import adamw  # noqa: E402
from glfa.training.cotrain import CotrainStage, TrainableUNet, cotrain_step, trainable_unet_parameters  # noqa: E402

PATTERNS = ["attn1", "attn2", "temp_conv"]


# ----------------------------------------------------------------------------- tiny: cached vs encoded


def tiny(args: argparse.Namespace) -> dict:
    """Alternate cached-latent and VAE-encoding steps of the tiny stage; the medians and their ratio."""
    root = Path(tempfile.mkdtemp(prefix="bench-cotrain-"))
    store = StudyStore.open(write_decoding_store(root / "store", video_size=args.video_size,
                                                 video_frames=args.video_frames, frames=max(6, args.video_frames)))
    generator = tiny_video_generator(root / "generator", cross_attention_dim=32, sample_size=args.video_size)
    config = validate_config({"model": {"preset": "tiny"}, "device": "cpu",
                              "cotrain": {"batch_size": args.batch, "generator": str(generator), "num_workers": 0}})
    stage1 = config.model.model_copy(update={"glfa": config.model.glfa.model_copy(update={"enabled": False})})
    FmriEncoder(stage1, store.image_size, store.fmri_frames).save_pretrained(root / "run" / "contrastive" / "encoder")
    stage = CotrainStage(config, store, run_dir=root / "run", progress=False)
    dataset = stage.dataset()  # builds the latents cache (not timed)
    torch.manual_seed(0)
    cached = stage.build_models()
    encoded = copy.deepcopy(cached)
    optimizers = {id(m): adamw(stage.param_groups(m), lr=1e-4, weight_decay=0.0) for m in (cached, encoded)}
    for models in (cached, encoded):
        for model in models.values():
            model.train()
    windows = stage.settings.batch_size

    def run(models, i: int, encode: bool) -> tuple[float, float]:
        indices = [(i * windows + k) % len(dataset) for k in range(windows)]
        torch.manual_seed(i)  # the same noise and timesteps for both variants
        t0 = time.perf_counter()
        batch = stage.collate([dataset[j] for j in indices])
        if encode:
            frames = np.stack([store.frames(dataset.windows[j]) for j in indices])  # [b, m, h, w, 3]
            batch["latents"] = stage.generator.encode_videos(frames)  # [b, c, m, h', w']
        out = stage.step(models, batch)
        out.loss.backward()
        optimizers[id(models)].step()
        optimizers[id(models)].zero_grad(set_to_none=True)
        return time.perf_counter() - t0, out.loss.item()

    times = {"cached": [], "encoded": []}
    gaps = []
    for i in range(args.rounds + 2):
        t_cached, loss_cached = run(cached, i, False)
        t_encoded, loss_encoded = run(encoded, i, True)
        if i >= 2:  # warm-up rounds
            times["cached"].append(t_cached)
            times["encoded"].append(t_encoded)
        gaps.append(abs(loss_cached - loss_encoded) / abs(loss_encoded))
    cached_s, encoded_s = statistics.median(times["cached"]), statistics.median(times["encoded"])
    return {"benchmark": "cotrain_step_cached_latents", "device": "cpu", "threads": torch.get_num_threads(),
            "windows_per_step": windows, "samples_per_step": windows * len(stage.train_subjects),
            "video": f"{args.video_frames}x{args.video_size}x{args.video_size}", "rounds": args.rounds,
            "cached_step_s": round(cached_s, 4), "encoding_step_s": round(encoded_s, 4),
            "ratio": round(encoded_s / cached_s, 3), "max_relative_loss_gap": float(f"{max(gaps):.2e}")}


# ----------------------------------------------------------------------------- full size


def zeroscope_parts(channels: tuple[int, ...], device: str | torch.device):
    """A zeroscope_v2_576w-shaped UNet3DConditionModel, the SD VAE and zeroscope's DDPM scheduler (random weights)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel

    with torch.device(device):
        unet = UNet3DConditionModel(block_out_channels=channels, cross_attention_dim=1024, attention_head_dim=64,
                                    layers_per_block=2, norm_num_groups=32)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                            layers_per_block=2, latent_channels=4, sample_size=512)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, prediction_type="epsilon")
    return unet, vae, scheduler


def full_encoder(fmri_frames: int, device: str | torch.device) -> FmriEncoder:
    """The full-preset FmriEncoder with GLFA at 256 x 256."""
    if device == "meta":
        with torch.device("meta"):
            return FmriEncoder(ModelConfig(preset="full"), 256, fmri_frames)
    return FmriEncoder(ModelConfig(preset="full"), 256, fmri_frames).to(device)


def disc_mask(device: str | torch.device) -> torch.Tensor:
    """A disc-shaped cortex mask [256, 256] (bool): the frames are zero outside it, as real ones."""
    yy, xx = np.mgrid[:256, :256]
    return torch.from_numpy((yy - 127.5) ** 2 + (xx - 127.5) ** 2 < 120**2).to(device)


def sizes(unet, vae, encoder) -> dict:
    """Parameter counts (total and trained) of the full-size models."""
    names = set(trainable_unet_parameters(unet, PATTERNS))
    return {"unet_parameters": sum(p.numel() for p in unet.parameters()),
            "unet_trained_parameters": sum(p.numel() for n, p in unet.named_parameters() if n in names),
            "vae_parameters": sum(p.numel() for p in vae.parameters()),
            "encoder_parameters": sum(p.numel() for p in encoder.parameters())}


def bf16_training(encoder: FmriEncoder, unet) -> tuple[TrainableUNet, torch.optim.Optimizer]:
    """Stage 2 under bf16 mixed precision: the UNet's trained parameters (frozen weights kept in bf16),
    gradient checkpointing on both models, the CLIP head frozen; (wrapped UNet, AdamW)."""
    wrapped = TrainableUNet(unet, trainable_unet_parameters(unet, PATTERNS))
    wrapped.store_frozen_weights_in(torch.bfloat16)  # as stage 2 does under bf16 mixed precision
    encoder.clip_head.requires_grad_(False)
    for model in (encoder, wrapped):
        model.train()
        model.enable_gradient_checkpointing()
    params = [p for m in (encoder, wrapped) for p in m.parameters() if p.requires_grad]
    return wrapped, adamw(params, lr=1e-4, weight_decay=0.01)


def full(args: argparse.Namespace) -> dict:
    """Time and memory of one zeroscope-shaped stage-2 step (bf16 autocast, gradient checkpointing)."""
    channels = tuple(int(c) for c in args.unet_channels.split(","))
    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        result = {"benchmark": "cotrain_full_step", "device": "meta (no CUDA)",
                  **sizes(*zeroscope_parts(channels, "meta")[:2], full_encoder(args.fmri_frames, "meta"))}
        print(json.dumps(result))
        sys.exit("the full-size stage-2 step needs a CUDA GPU (the models were only built on the meta device, sizes "
                 "above); pass --device cpu to run it on the CPU anyway (about 20 GB of memory, minutes per step)")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    torch.manual_seed(0)
    unet, vae, scheduler = zeroscope_parts(channels, device)
    encoder = full_encoder(args.fmri_frames, device)
    generator = VideoGenerator(unet=unet, vae=vae.eval().requires_grad_(False), scheduler=scheduler,
                               inference_scheduler=None)
    info = sizes(unet, vae, encoder)
    wrapped, optimizer = bf16_training(encoder, unet)
    s, b = args.subjects, args.windows
    mask = disc_mask(device)
    fmri = torch.randn(b, s, args.fmri_frames, 256, 256, device=device) * mask  # [B, S, n, H, W]
    latents = torch.randn(b, 4, args.frames, args.height // 8, args.width // 8, device=device)
    frames = torch.randint(0, 256, (b, args.frames, args.height, args.width, 3), dtype=torch.uint8)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def step() -> float:
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            out = cotrain_step(encoder, wrapped, scheduler, fmri, latents, mask=mask, align=s >= 2)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    def encode() -> float:
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            generator.encode_videos(frames, batch_size=args.frames)
        sync()
        return time.perf_counter() - t0

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = step()  # creates the optimizer state
    resident = torch.cuda.memory_allocated() if device == "cuda" else None
    steps = [step() for _ in range(args.repeats)]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    encodes = [encode() for _ in range(args.repeats)]
    samples = s * b
    best = min(steps)
    result = {"benchmark": "cotrain_full_step", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              **info, "samples": samples, "subjects": s, "windows": b,
              "latents": [4, args.frames, args.height // 8, args.width // 8], "fmri": [args.fmri_frames, 256, 256],
              "first_step_s": round(first, 3), "step_s": round(best, 3), "step_per_sample_s": round(best / samples, 3),
              "vae_encode_s": round(min(encodes), 3), "ratio_with_encoding": round((best + min(encodes)) / best, 3)}
    if peak is not None:
        result.update({"peak_gib": round(peak / 2**30, 2), "weights_and_optimizer_gib": round(resident / 2**30, 2),
                       "activations_per_sample_gib": round((peak - resident) / samples / 2**30, 3),
                       "peak_per_sample_gib": round(peak / samples / 2**30, 2)})
    return result


def main() -> None:
    """Parse the options, run the chosen benchmark, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="zeroscope-shaped models (CUDA, or --device cpu)")
    parser.add_argument("--rounds", type=int, default=20, help="tiny: timed rounds (one step of each variant)")
    parser.add_argument("--batch", type=int, default=6, help="tiny: cotrain.batch_size (samples = subjects x windows)")
    parser.add_argument("--video-size", type=int, default=32, help="tiny: video side in pixels (multiple of 8)")
    parser.add_argument("--video-frames", type=int, default=4, help="tiny: video frames per window")
    parser.add_argument("--subjects", type=int, default=2, help="full: subjects per window")
    parser.add_argument("--windows", type=int, default=1, help="full: windows per step")
    parser.add_argument("--frames", type=int, default=12, help="full: video frames per window")
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--fmri-frames", type=int, default=5, help="full: fMRI frames per window (Fudan: 5 TRs)")
    parser.add_argument("--repeats", type=int, default=3, help="full: timed steps after the first")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="full: default CUDA when present")
    parser.add_argument("--unet-channels", default="320,640,1280,1280", help="full: the UNet's block_out_channels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = full(args) if args.full else tiny(args)
    print("| quantity | value |\n| --- | ---: |")
    for key, value in result.items():
        print(f"| {key} | {value:,} |" if isinstance(value, int) else f"| {key} | {value} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
