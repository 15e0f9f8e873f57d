"""Choose the demo's retrieval ``k`` and blurry-start strength on a validation study, never on the demo's test windows.

    python benchmarks/blurry_start_validation.py --out DIR [--seed 1] [--k 1,4,16] [--strength 0.2,0.3,0.4,0.6]

The validation study is the demo's own config with another ``simulation.seed``: new crops and
camera motions of the same photographs, new subjects (brains, deformations, gains) and new noise.
The script runs the demo's steps on it up to GLFA's stage 2 (simulate, prepare, pretrain,
contrastive, the demo generator, cotrain-glfa; cached in ``DIR`` and in ``$GLFA_CACHE`` as the demo
caches them), decodes the held-out subject's test windows with GLFA, then for each ``k`` fits
the retrieval blurry decoder (``blurry.kind: retrieval``, ``retrieval_k: k``, the demo's other
``blurry`` settings) and decodes the same windows with it alone (``blurry``) and with GLFA
started from its latents at each strength (``glfa+blurry``). Every folder is scored by ``glfa
evaluate``'s code against its mismatched baseline. It prints one Markdown row per setting: the
frame 2-way (top-3 rule) and SSIM brain signals (matched - mismatched, permutation p).

The demo takes the setting whose ``glfa+blurry`` frame 2-way signal is the largest (the larger
strength, then the larger k, among those within 0.005 of it); about 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def decode_run(out: Path, seed: int):
    """The demo's steps up to GLFA's clips on the study of ``seed``; ``(config, run folder, store folder)``."""
    import glfa.demo as demo
    from glfa.config import load_config
    from glfa.devices import flush_denormals
    from glfa.generate import generate

    config = load_config(demo.demo_config_path(), overrides={"simulation": {"seed": seed}})
    ctx = demo.DemoContext(out=out, config=config, quick=False, progress=False)
    steps = {"simulate", "prepare", "pretrain", "contrastive", "generator", "cotrain-glfa"}
    with flush_denormals():
        for name, step in demo.STEPS:
            if name in steps:
                start = time.perf_counter()
                step(ctx)
                print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        for subject in config.subjects.held_out:
            generate(ctx.paths["run"], method="glfa", subject=subject, config=config, progress=False)
    return config, ctx.paths["run"], ctx.paths["store"]


def signal(cell: dict) -> str:
    """``+0.093 (p 0.0001)`` from an evaluation result's brain signal."""
    return f"{cell['difference']:+.3f} (p {cell['p']:.2g})"


def main() -> None:
    from glfa.baselines.blurry import fit_blurry
    from glfa.evaluation import evaluate_run
    from glfa.generate import generate
    from glfa.runs import RunLayout

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=1, help="simulation.seed of the validation study (the demo's is 0)")
    parser.add_argument("--k", default="1,4,16", help="retrieval_k values")
    parser.add_argument("--strength", default="0.2,0.3,0.4,0.6", help="init_strength values")
    args = parser.parse_args()
    ks = [int(v) for v in args.k.split(",")]
    strengths = [float(v) for v in args.strength.split(",")]

    config, run_dir, store = decode_run(args.out, args.seed)
    subject = config.subjects.held_out[0]
    rows = []
    for k in ks:
        trial = args.out / f"retrieval-k{k}"  # a copy of the run holding only what this k decodes
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(run_dir, trial, ignore=shutil.ignore_patterns("generations", "evaluation", "blurry"))
        shutil.copytree(RunLayout(run_dir).generations_root, RunLayout(trial).generations_root)
        settings = config.model_copy(deep=True)
        settings.blurry = settings.blurry.model_copy(update={"kind": "retrieval", "retrieval_k": k})
        settings.cotrain = settings.cotrain.model_copy(
            update={"generator": json.loads((RunLayout(trial).model_dir("glfa") / "model.json").read_text())["generator"]})
        fit_blurry(settings, store, trial, progress=False)
        generate(trial, method="blurry", subject=subject, config=settings, progress=False)
        names = {}
        for strength in strengths:
            gen = settings.generation.model_copy(update={"init": "blurry", "init_strength": strength})
            folder = generate(trial, method="glfa", subject=subject, config=gen, progress=False)
            named = RunLayout(trial).generations(f"glfa+blurry-{strength:g}", subject, "test")
            named.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(named))
            index = json.loads((named / "index.json").read_text())
            (named / "index.json").write_text(json.dumps({**index, "method": f"glfa+blurry-{strength:g}"}))
            names[f"glfa+blurry-{strength:g}"] = strength
        evaluation = evaluate_run(trial, methods=["blurry", *names], progress=False)
        rows += [(k, names.get(r.method), r.method, r.brain_signal) for r in evaluation.results]
    print(f"\nValidation study: simulation.seed {args.seed}, held-out subject {subject}\n")
    print("| k | strength | method | frame 2-way Δ (p) | SSIM Δ (p) |\n|---|---|---|---|---|")
    for k, strength, method, base in rows:
        print(f"| {k} | {'—' if strength is None else f'{strength:g}'} | {method} | "
              f"{signal(base['frame-2way'])} | {signal(base['ssim'])} |")


if __name__ == "__main__":
    main()
