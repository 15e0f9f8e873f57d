"""Few-shot adaptation of the full-size GLFA layer to one new subject: time and peak memory.

Issue 14's target: adapting the 256 x 256, k = 13 GLFA layer (parcels of 16) to one subject with
one hour of data at Fudan's TR (4,500 frames of 0.8 s) takes at most 5 minutes on 2 CPU cores,
and peak memory stays under 2 GB beyond the data.

The data (the new subject's frames and ``--subjects`` trained subjects' frames at the same time
points, float32 in a disc mask) are made first; then ``glfa.adapt.SubjectAdapter("glfa")`` with
the default ``adapt`` config (steps, batch, learning rate) fits, from a GLFA layer that stands in
for the trained one. Reported: the whole fit (the target pass over every frame, then the AdamW
steps), its CPU time (process time, all threads: on a shared machine, CPU time / threads is
what the fit would take with the 2 cores to itself), the 1-minute load average at the end, and
the peak resident memory during the fit beyond the resident size with the data loaded (VmHWM, Linux).

    python benchmarks/bench_adapt.py [--frames 4500] [--size 256] [--kernel 13] [--parcel 16]
        [--subjects 2] [--steps N] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from _memory import reset_peak, status_kib


def main() -> None:
    """Make the data, fit, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4500, help="the new subject's frames (4,500: 1 h at 0.8 s)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--kernel", type=int, default=13)
    parser.add_argument("--parcel", type=int, default=16)
    parser.add_argument("--subjects", type=int, default=2, help="trained subjects")
    parser.add_argument("--steps", type=int, default=None, help="override adapt.steps of the default config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    import torch

    from glfa.adapt import SubjectAdapter
    from glfa.config import GlfaConfig
    from glfa.models.glfa import GLFA

    torch.set_num_threads(args.threads)
    config = GlfaConfig()
    if args.steps is not None:
        config.adapt.steps = args.steps
    yy, xx = np.mgrid[:args.size, :args.size] / args.size
    mask = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.45**2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.frames, args.size, args.size), dtype=np.float32)
    x *= mask
    others = {}
    for s in range(args.subjects):
        y = np.roll(x, s + 1, axis=2)
        y += 0.5 * rng.standard_normal(y.shape, dtype=np.float32)
        y *= mask
        others[f"t{s}"] = y
    groups = np.arange(args.frames) // 13  # 13-frame stimuli
    torch.manual_seed(0)
    layer = GLFA(height=args.size, width=args.size, parcel_size=args.parcel, kernel_size=args.kernel)
    data_gib = (x.nbytes + sum(v.nbytes for v in others.values())) / 2**30

    base = status_kib("VmRSS")
    reset_peak()
    start, cpu_start = time.perf_counter(), time.process_time()
    adapter = SubjectAdapter.from_config(config, "glfa")
    adapter.device = "cpu"
    adapter.fit(x, others, layer, groups, mask)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = (status_kib("VmHWM") - base) / 2**20
    result = {"frames": args.frames, "size": args.size, "kernel": args.kernel, "parcel": args.parcel,
              "trained_subjects": args.subjects, "steps": adapter.steps, "batch_size": adapter.batch_size,
              "threads": args.threads, "data_gib": round(data_gib, 3), "fit_seconds": round(seconds, 1),
              "cpu_seconds": round(cpu, 1), "load_average": os.getloadavg()[0],
              "peak_gib_beyond_data": round(peak, 3), "loss_first": adapter.loss_history_[0],
              "loss_last": adapter.loss_history_[-1]}
    print("| frames | image | k | trained subjects | steps x batch | threads | data (GiB) | fit (s) | CPU (s) | "
          "load | peak beyond data (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.frames} | {args.size} x {args.size} | {args.kernel} | {args.subjects} | {adapter.steps} x "
          f"{adapter.batch_size} | {args.threads} | {data_gib:.2f} | {seconds:.1f} | {cpu:.1f} | "
          f"{result['load_average']:.1f} | {peak:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
