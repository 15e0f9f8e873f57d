"""GPU check for the published weights: import, one stage-2 step, one generation; time and peak memory of each.

One command for a machine with a CUDA GPU:

    python benchmarks/gpu_check.py [--steps 30] [--frames 12] [--height 320] [--width 576]

1. ``import``: a stage-2 checkpoint in the authors' format at the released shapes (D 1024, 24
   layers, GLFA 13 x 13 at 256 x 256, window 5; random weights, written with DDP's ``module.``
   prefix) goes through ``glfa import-weights``; the imported encoder then encodes one window.
2. ``train_step``: one stage-2 step (L_denoise + L_GLFA, two subjects, one window) on a
   zeroscope_v2_576w-shaped UNet (random weights; :func:`bench_cotrain.zeroscope_parts`) with the
   imported encoder, bf16 autocast, gradient checkpointing on both and the frozen UNet weights in
   bf16, as ``glfa train cotrain`` runs it under ``mixed_precision: bf16``.
3. ``generate``: one clip of ``--frames`` frames at ``--width`` x ``--height`` with ``--steps``
   DPM-Solver steps and guidance 6 against the negative condition, the UNet and VAE in bf16.

``--tiny`` runs the same three parts on the CPU at tiny shapes (a D = 128 encoder at 32 x 32, the
tiny generator of :func:`glfa.backbones.tiny_video_generator`, 2 frames at 16 x 16): the test suite
runs it. Peak memory is ``torch.cuda.max_memory_allocated`` per part on CUDA, the process's peak
resident size (VmHWM) on the CPU. Prints a Markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _memory import reset_peak, status_kib  # noqa: E402
from bench_cotrain import bf16_training, zeroscope_parts  # noqa: E402

from glfa.backbones import VideoGenerator, load_video_generator, tiny_video_generator  # noqa: E402
from glfa.cli import main as glfa_main  # noqa: E402
from glfa.config import ModelConfig  # noqa: E402
from glfa.models.encoder import FmriEncoder  # noqa: E402
from glfa.models.official import to_authors_state  # noqa: E402
from glfa.pipeline import EncoderCondition, FmriToVideoPipeline  # noqa: E402
from glfa.training.cotrain import cotrain_step  # noqa: E402

# The encoder of each size: (model config, image side, window n).
SHAPES = {
    "full": ({"preset": "full"}, 256, 5),
    "tiny": ({"preset": "full", "pte": {"embed_dim": 128, "depth": 2, "num_heads": 2},
              "temporal": {"num_heads": 2}, "heads": {"token_dim": 128, "clip_dim": 128}}, 32, 2),
}


class Meter:
    """Wall time and peak memory of one part (CUDA: allocated by torch; CPU: the process's resident peak)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> Meter:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.peak_gib = (torch.cuda.max_memory_allocated() if self.cuda else status_kib("VmHWM") * 1024) / 2**30


def import_part(size: str, root: Path, device: torch.device) -> tuple[FmriEncoder, dict]:
    """Write a random stage-2 checkpoint in the authors' format, import it with the CLI, encode one window."""
    config, image, window = SHAPES[size]
    torch.manual_seed(0)
    source = FmriEncoder(ModelConfig.model_validate(config), image, window)
    with torch.no_grad():  # move GLFA off the identity, so the check runs a real alignment
        source.glfa.local.weight.normal_(0.0, 0.01)
        source.glfa.global_map.weight.normal_(0.0, 0.01)
    checkpoint = root / "fmri-encoder-checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in to_authors_state(source, "stage2").items()},
                "cur_epoch": 0, "accum_iter": 0}, checkpoint)
    del source
    with Meter(torch.device("cpu")) as imported:
        if glfa_main(["import-weights", str(checkpoint), str(root / "encoder")]) != 0:
            raise SystemExit("glfa import-weights failed")
    encoder = FmriEncoder.from_pretrained(root / "encoder", map_location=device).eval()
    fmri = torch.randn(1, window, image, image, device=device)
    with Meter(device) as encoded, torch.no_grad():
        tokens = encoder(fmri, heads=("tokens",))["tokens"]
    return encoder, {"import_s": round(imported.seconds, 2), "import_peak_rss_gib": round(imported.peak_gib, 2),
                     "encode_s": round(encoded.seconds, 3), "encode_peak_gib": round(encoded.peak_gib, 2),
                     "tokens": list(tokens.shape), "encoder_parameters": sum(p.numel() for p in encoder.parameters())}


def generator_for(size: str, root: Path, device: torch.device, token_dim: int) -> VideoGenerator:
    """The zeroscope-shaped generator (random weights) or the tiny one."""
    if size == "tiny":
        return load_video_generator(tiny_video_generator(root / "generator", cross_attention_dim=token_dim,
                                                         sample_size=16), device=device, with_text_encoder=False)
    from diffusers import DPMSolverMultistepScheduler

    unet, vae, scheduler = zeroscope_parts((320, 640, 1280, 1280), device)
    return VideoGenerator(unet=unet, vae=vae.eval().requires_grad_(False), scheduler=scheduler,
                          inference_scheduler=DPMSolverMultistepScheduler.from_config(scheduler.config))


def train_part(encoder: FmriEncoder, generator: VideoGenerator, args, device: torch.device) -> dict:
    """One stage-2 step with two subjects on one window: bf16 autocast, checkpointing, frozen UNet weights in bf16."""
    unet, optimizer = bf16_training(encoder, generator.unet)
    n, image = encoder.num_frames, encoder.image_size
    fmri = torch.randn(1, 2, n, image, image, device=device)  # [B, S, n, H, W]
    latents = torch.randn(1, generator.latent_channels, args.frames, args.height // generator.vae_scale_factor,
                          args.width // generator.vae_scale_factor, device=device)
    with Meter(device) as step:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = cotrain_step(encoder, unet, generator.scheduler, fmri, latents, align=True)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    encoder.eval().requires_grad_(False)
    generator.unet.eval().requires_grad_(False)
    return {"train_step_s": round(step.seconds, 2), "train_peak_gib": round(step.peak_gib, 2),
            "train_loss": round(out.loss.item(), 4), "latents": list(latents.shape)}


def generate_part(encoder: FmriEncoder, generator: VideoGenerator, args, device: torch.device) -> dict:
    """One guided clip: ``args.steps`` DPM-Solver steps, the UNet and VAE in bf16 (float32 on the CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator.unet.to(dtype)
    generator.vae.to(dtype)
    n, image = encoder.num_frames, encoder.image_size
    mean = torch.randn(1, n, image, image, device=device)
    with torch.no_grad():
        negative = encoder(mean, heads=("tokens",))["tokens"][0].float().cpu()  # [K, C]
    pipe = FmriToVideoPipeline(condition=EncoderCondition(encoder), generator=generator, negative_tokens=negative)
    with Meter(device) as run:
        video = pipe(torch.randn(1, n, image, image), num_inference_steps=args.steps, guidance_scale=6.0,
                     num_frames=args.frames, height=args.height, width=args.width, seed=0)
    return {"generate_s": round(run.seconds, 2), "generate_peak_gib": round(run.peak_gib, 2),
            "steps": args.steps, "video": list(video.shape)}


def run_check(args: argparse.Namespace) -> dict:
    """The three parts in order; the result row."""
    size = "tiny" if args.tiny else "full"
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the full-size check needs a CUDA GPU (torch sees none); --tiny runs it on the CPU")
    root = Path(tempfile.mkdtemp(prefix="glfa-gpu-check-"))
    encoder, result = import_part(size, root, device)
    generator = generator_for(size, root, device, encoder.config.heads.token_dim)
    result.update(train_part(encoder, generator, args, device))
    result.update(generate_part(encoder, generator, args, device))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return {"check": "gpu_check", "size": size, "device": name, **result}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; ``--tiny`` sets the tiny clip (2 frames at 16 x 16) unless given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (what the tests run)")
    parser.add_argument("--steps", type=int, default=30, help="DPM-Solver steps of the generation (default 30)")
    parser.add_argument("--frames", type=int, default=None, help="video frames (default 12; tiny 2)")
    parser.add_argument("--height", type=int, default=None, help="video height (default 320; tiny 16)")
    parser.add_argument("--width", type=int, default=None, help="video width (default 576; tiny 16)")
    args = parser.parse_args(argv)
    for key, full, tiny in (("frames", 12, 2), ("height", 320, 16), ("width", 576, 16)):
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the check and print its table and JSON line; returns the result."""
    result = run_check(parse_args(argv))
    print("| quantity | value |\n| --- | ---: |")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
