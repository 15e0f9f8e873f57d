"""Full-size fMRI-PTE encoder (D 1024, 24 layers, 16 heads): forward on one 5-frame window.

Input [5, 1, 256, 256] -> tokens [5, 257, 1024], no gradients. Reports the parameter count,
the forward time (first call and best of the repeats) and the peak memory of the forward
beyond the weights: on CPU the resident-set peak (VmHWM, reset through /proc/self/clear_refs
before the forward) minus the resident size before it; on CUDA torch.cuda.max_memory_allocated
minus the memory allocated before it. Prints a Markdown table.

    python benchmarks/bench_pte.py [--frames 5] [--repeats 3] [--device cpu|cuda]
        [--dtype float32|bfloat16] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
from _memory import reset_peak, status_kib

from glfa.config import ModelConfig
from glfa.models.pte import FmriPTE, PteEncoder


def main() -> None:
    """Build the full encoder, time its forward, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    cfg = ModelConfig(preset="full")
    with torch.device("meta"):
        full = FmriPTE.from_config(cfg, args.image_size)
    total_params = sum(p.numel() for p in full.parameters())
    torch.manual_seed(0)
    pte = cfg.pte
    encoder = PteEncoder(image_size=args.image_size, patch_size=pte.patch_size, embed_dim=pte.embed_dim,
                         depth=pte.depth, num_heads=pte.num_heads, mlp_ratio=pte.mlp_ratio)
    encoder = encoder.to(device=args.device, dtype=dtype).eval()
    enc_params = sum(p.numel() for p in encoder.parameters())
    x = torch.randn(args.frames, 1, args.image_size, args.image_size, device=args.device, dtype=dtype)

    def forward() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            tokens = encoder(x)
        if args.device == "cuda":
            torch.cuda.synchronize()
        assert tokens.shape == (args.frames, encoder.num_patches + 1, pte.embed_dim)
        return time.perf_counter() - t0

    if args.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak()
        base = status_kib("VmRSS") * 1024
    times = [forward() for _ in range(args.repeats)]
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda" else status_kib("VmHWM") * 1024) - base
    weights_mib = sum(p.numel() * p.element_size() for p in encoder.parameters()) / 2**20
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"fMRI-PTE encoder (full preset) forward on {args.frames} x 1 x {args.image_size} x {args.image_size}, "
          f"{args.dtype}, {name}\n")
    print("| quantity | value |")
    print("| --- | ---: |")
    print(f"| parameters, encoder | {enc_params:,} |")
    print(f"| parameters, encoder + decoder | {total_params:,} |")
    print(f"| weights in memory (MiB) | {weights_mib:.0f} |")
    print(f"| forward, first call (s) | {times[0]:.3f} |")
    print(f"| forward, best of {args.repeats} (s) | {min(times):.3f} |")
    print(f"| peak memory of the forward beyond the weights (MiB) | {peak / 2**20:.0f} |")


if __name__ == "__main__":
    main()
