"""LocallyConnected2d: memory-efficient offset loop vs a plain unfold implementation.

Forward + backward (gradients of the input and of the weights) of the layer at 256 x 256,
k = 13, 30 frames. Each variant runs in its own subprocess so that its peak resident memory
(VmHWM in /proc/self/status, minus the resident size before the first pass) is its own; on
CUDA, torch.cuda.max_memory_allocated is used instead. Prints a Markdown table with ratios.

    python benchmarks/bench_locally_connected.py [--frames 30] [--size 256] [--kernel 13]
        [--repeats 3] [--device cpu|cuda] [--threads N]

Target (issue 4): peak memory of the efficient layer <= 1/5 of unfold's, time <= 1/2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _memory import status_kib


def run_variant(variant: str, frames: int, size: int, kernel: int, repeats: int, device: str, threads: int) -> dict:
    """Time and peak memory of one variant, in this process (called in a fresh subprocess)."""
    import torch
    import torch.nn.functional as F

    from glfa.models.glfa import LocallyConnected2d

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer = LocallyConnected2d(height=size, width=size, kernel_size=kernel).to(device)
    x = torch.randn(frames, 1, size, size, device=device, requires_grad=True)
    grad_out = torch.randn(frames, 1, size, size, device=device)

    def unfold_forward(inp: torch.Tensor) -> torch.Tensor:
        k = kernel
        cols = F.unfold(inp, k, padding=k // 2)  # [n, k*k, h*w]
        weights = layer.normalized_kernel().reshape(k * k, size * size)
        return (cols * weights).sum(1).reshape(frames, 1, size, size)

    forward = layer if variant == "efficient" else unfold_forward

    def step() -> None:
        x.grad = None
        layer.weight.grad = None
        forward(x).backward(grad_out)
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else status_kib("VmHWM") * 1024) - base
    times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "peak_bytes": peak, "seconds": min(times), "times": times}


def main() -> None:
    """Run both variants in subprocesses and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--kernel", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    params = (args.frames, args.size, args.kernel, args.repeats, args.device, args.threads)
    if args.variant:
        print(json.dumps(run_variant(args.variant, *params)))
        return
    results = {}
    for variant in ("efficient", "unfold"):
        cmd = [sys.executable, __file__, "--variant", variant, "--frames", str(args.frames), "--size", str(args.size),
               "--kernel", str(args.kernel), "--repeats", str(args.repeats), "--device", args.device,
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    eff, ref = results["efficient"], results["unfold"]
    print(f"LocallyConnected2d forward+backward, {args.frames} x 1 x {args.size} x {args.size}, k={args.kernel}, "
          f"device={args.device}, best of {args.repeats}\n")
    print("| variant | time (s) | peak memory (MiB) |")
    print("| --- | ---: | ---: |")
    for name, r in (("offset loop (glfa)", eff), ("unfold reference", ref)):
        print(f"| {name} | {r['seconds']:.3f} | {r['peak_bytes'] / 2**20:.1f} |")
    print(f"| ratio glfa / unfold | {eff['seconds'] / ref['seconds']:.3f} | {eff['peak_bytes'] / ref['peak_bytes']:.3f} |")


if __name__ == "__main__":
    main()
