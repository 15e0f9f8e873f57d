"""``glfa demo``: the whole method on the built-in synthetic study, as a sequence of named steps.

The demo's config is ``glfa/configs/demo.yaml`` (shipped inside the package; ``configs/demo.yaml``
in the repository links to it); ``--quick`` applies :data:`QUICK` on top of it. Steps:

1. ``simulate``: the synthetic study, cached in ``OUT/cache/study-<hash>`` keyed by the
   simulation config (reused when present);
2. ``prepare``: the study store ``OUT/store`` (reused when its manifest records the same study
   folder and the same ``data`` config);
3. ``pretrain``: stage 0, the tiny fMRI-PTE fine-tuned on the training split into
   ``OUT/run-<hash>/pte`` (reused when that folder holds a finished run of the same config);
4. ``align``: GLFA as a functional alignment, leave-one-subject-out on the test split: fSC and
   ISC before and after GLFA, as the paper's Table 1 (``OUT/alignment/alignment.md``);
5. ``contrastive``: stage 1 against the stand-in CLIP, whose embeddings are cached in the store;
6. ``generator``: the tiny text-to-video model trained on the synthetic clips and their captions,
   cached once per machine (``$GLFA_CACHE`` or ``~/.cache/glfa``);
7. ``cotrain-glfa`` and ``cotrain-pte-v``: stage 2 with and without GLFA (the fMRI-PTE-V baseline);
8. ``lea``: the LEA baseline (ridge regression to the generator's caption tokens);
9. ``within``: the within-subject baseline, stages 1 and 2 on the held-out subject's own
   training windows;
10. ``blurry``: the low-level decoder (``blurry.kind: retrieval``: GLFA-aligned flat images, pooled, to
    the window's CLIP image embedding by ridge, then the generator's VAE latents of the nearest training
    window, ``RUN/blurry/model``);
11. ``generate``: every test window of the held-out subject decoded by each method, by the blurry
    decoder alone, and by GLFA started from the blurry latents (``glfa+blurry``);
12. ``adapt``: the held-out subject adapted at two data sizes, decoded and scored, with the
    zero-shot floor and the within-subject ceiling (``RUN/evaluation/adaptation-<S>``; not with ``--quick``);
13. ``evaluate``: every metric per method (the adapted ones included), matched against mismatched, with
    t-tests (``RUN/evaluation``);
14. ``report``: ``RUN/report.html``.

Training steps are reused when their run folder ``OUT/run-<hash>`` (keyed by the store and every
training section of the config) holds a finished stage, and resumed when a killed demo left
checkpoints. The demo ends with a printed summary and ``OUT/summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from glfa import __version__
from glfa.config import GlfaConfig, load_config
from glfa.errors import StoreError
from glfa.io import write_json_atomic
from glfa.runs import BLURRY, CONTRASTIVE, GENERATIONS_INDEX, LEA, PRETRAIN, RunLayout

__all__ = ["QUICK", "STEPS", "DemoContext", "demo_config", "run_demo"]

#: Overrides of ``--quick``: a study small enough for the tests.
QUICK: dict[str, Any] = {
    "data": {"image_size": 64},
    "pretrain": {"steps": 10, "batch_size": 8, "checkpoint_every": 10},
    "align": {"steps": 20},
    "contrastive": {"steps": 10, "stimuli_per_batch": 8, "checkpoint_every": 10},
    "cotrain": {"steps": 10, "batch_size": 8, "checkpoint_every": 10},
    "demo_generator": {"vae_steps": 30, "unet_steps": 60},
    "generation": {"num_inference_steps": 4, "height": 32, "width": 32},
    "evaluation": {"trials": 20},
    "simulation": {
        "n_subjects": 3, "n_categories": 4, "train_clips_per_category": 2, "test_clips_per_category": 1,
        "test_repeats": 2, "clip_seconds": 6.0, "blank_seconds": 2.0, "clips_per_run": 8, "frame_size": 32,
    },
}  # fmt: skip


def demo_config_path() -> Path:
    """The demo's YAML config inside the installed package."""
    return Path(str(resources.files("glfa") / "configs" / "demo.yaml"))


def demo_config(quick: bool = False) -> GlfaConfig:
    """The demo's config (with :data:`QUICK` applied when ``quick``)."""
    return load_config(demo_config_path(), overrides=QUICK if quick else None)


def _key(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _size_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return round(total / 2**20, 2)


@dataclass
class DemoContext:
    """What the steps share: the output folder, the config, and each step's results."""

    out: Path
    config: GlfaConfig
    quick: bool
    progress: bool = True
    paths: dict[str, Path] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def step_simulate(ctx: DemoContext) -> dict[str, Any]:
    """Simulate the synthetic study (or reuse the cached one with the same simulation config)."""
    from glfa.data.synthetic import simulate_study

    sim = ctx.config.simulation.model_dump(mode="json")
    key = _key({"simulation": sim, "rois": ctx.config.data.rois, "glfa": __version__})
    study = ctx.out / "cache" / f"study-{key}"
    reused = (study / "study.json").is_file()
    if not reused:
        simulate_study(study, ctx.config, progress=ctx.progress)
    ctx.paths["study"] = study
    info = json.loads((study / "study.json").read_text())
    return {
        "path": str(study), "reused": reused, "subjects": info["subjects"], "stimuli": info["n_stimuli"],
        "runs_per_subject": len(info["runs"]), "trs_per_subject": sum(r["n_trs"] for r in info["runs"]),
        "size_mb": _size_mb(study),
    }  # fmt: skip


def step_prepare(ctx: DemoContext) -> dict[str, Any]:
    """Turn the study into a windowed study store (or reuse one built from the same study and data config)."""
    from glfa.data.prepare import prepare_study
    from glfa.data.store import StudyStore

    study, store_dir = ctx.paths["study"], ctx.out / "store"
    data = ctx.config.data.model_dump(mode="json")
    store = None
    try:
        store = StudyStore.open(store_dir)
        built = store.manifest
        if built.get("source") != str(study.absolute()) or built.get("config", {}).get("data") != data:
            store.close()
            store = None
    except StoreError:
        store = None
    reused = store is not None
    if store is None:
        prepare_study(study, store_dir, ctx.config, layout="generic", overwrite=True, progress=ctx.progress)
        store = StudyStore.open(store_dir)
    ctx.paths["store"] = store_dir
    result = {
        "path": str(store_dir), "reused": reused, "subjects": list(store.subjects), "stimuli": len(store.stimuli),
        "windows_train": len(store.windows("train")), "windows_test": len(store.windows("test")),
        "image_size": store.image_size, "tr": store.tr, "fps": store.fps,
        "fmri_frames_per_window": store.fmri_frames, "video_frames_per_window": store.video_frames,
        "size_mb": _size_mb(store_dir),
    }  # fmt: skip
    store.close()
    return result


def _run_dir(ctx: DemoContext) -> Path:
    """``OUT/run-<hash>``, keyed by the store and every section that changes a trained model."""
    sections = ("model", "subjects", "pretrain", "contrastive", "cotrain", "lea", "demo_generator")
    data = {name: getattr(ctx.config, name).model_dump(mode="json") for name in sections}
    data["cotrain"].pop("generator")  # the demo generator's folder is filled in by step_generator
    data["demo_generator"].pop("cache_dir")
    return ctx.out / f"run-{_key({'store': str(ctx.paths['store'].absolute()), **data})}"


def _trained(run: RunLayout, stage: str, output: Path, fit: Callable[[bool], Any]) -> dict[str, Any]:
    """Run a training stage unless the stage's ``metrics.json`` in ``run`` and ``output`` say it finished.

    ``fit(resume)`` trains; an unfinished stage folder (a killed demo) is resumed from its checkpoint.
    """
    metrics_path = run.metrics(stage)
    reused = metrics_path.is_file() and output.exists()
    if not reused:
        fit(run.checkpoints(stage).is_dir())
    metrics = json.loads(metrics_path.read_text())
    return {"path": str(output), "reused": reused, "steps": metrics.get("steps"),
            "first_loss": _round(metrics.get("first_loss")), "final_loss": _round(metrics.get("final_loss"))}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def step_pretrain(ctx: DemoContext) -> dict[str, Any]:
    """Stage 0: fine-tune the tiny fMRI-PTE on the training split (or reuse a finished run of the same config)."""
    from glfa.training.pretrain import PretrainStage
    from glfa.training.stage import run_stage

    ctx.paths["run"] = run_dir = _run_dir(ctx)
    run = RunLayout(run_dir)
    return _trained(run, PRETRAIN, run.pte,
                    lambda resume: run_stage(PretrainStage, ctx.config, ctx.paths["store"], run_dir, resume=resume,
                                             progress=ctx.progress))


def step_contrastive(ctx: DemoContext) -> dict[str, Any]:
    """Stage 1: the encoder (GLFA off) learns CLIP space from cached stand-in CLIP embeddings of frames and captions."""
    from glfa.training.contrastive import ContrastiveStage
    from glfa.training.stage import run_stage

    run_dir = ctx.paths["run"]
    run = RunLayout(run_dir)
    return _trained(run, CONTRASTIVE, run.stage1_encoder,
                    lambda resume: run_stage(ContrastiveStage, ctx.config, ctx.paths["store"], run_dir, resume=resume,
                                             progress=ctx.progress))


def step_generator(ctx: DemoContext) -> dict[str, Any]:
    """The demo's tiny text-to-video model, trained on the synthetic clips' captions once per machine."""
    from glfa.data.store import StudyStore
    from glfa.demo_generator import demo_generator_dir, is_complete, train_demo_generator

    store = StudyStore.open(ctx.paths["store"])
    try:
        reused = is_complete(demo_generator_dir(store, ctx.config))
        path = train_demo_generator(store, ctx.config, progress=ctx.progress)
    finally:
        store.close()
    ctx.config.cotrain.generator = str(path)
    metrics = json.loads((path / "metrics.json").read_text())
    return {"path": str(path), "reused": reused, "seconds_training": metrics.get("seconds"),
            "vae_psnr_test": metrics.get("vae", {}).get("psnr_test"),
            "unet_final_loss": _round(metrics.get("unet", {}).get("final_loss"))}


def _cotrain_step(method: str, glfa: bool) -> Callable[[DemoContext], dict[str, Any]]:
    def step(ctx: DemoContext) -> dict[str, Any]:
        from glfa.training.cotrain import CotrainStage
        from glfa.training.stage import run_stage

        run_dir = ctx.paths["run"]
        run = RunLayout(run_dir)
        return _trained(run, run.cotrain_stage(method), run.cotrain_model(method),
                        lambda resume: run_stage(CotrainStage, ctx.config, ctx.paths["store"], run_dir, method=method,
                                                 glfa=glfa, resume=resume, progress=ctx.progress))

    step.__doc__ = f"Stage 2 {'with' if glfa else 'without'} GLFA: the decoder {method!r} (fMRI tokens replace text)."
    return step


def step_lea(ctx: DemoContext) -> dict[str, Any]:
    """The LEA baseline: ridge from the stage-1 encoder's latent to the generator's caption tokens."""
    from glfa.baselines.lea import fit_lea

    model = RunLayout(ctx.paths["run"]).model_dir(LEA)
    reused = (model / "model.json").is_file()
    if not reused:
        fit_lea(ctx.config, ctx.paths["store"], ctx.paths["run"], progress=ctx.progress)
    info = json.loads((model / "model.json").read_text())
    return {"path": str(model), "reused": reused, "alpha": info.get("alpha")}


def step_blurry(ctx: DemoContext) -> dict[str, Any]:
    """The blurry decoder (``blurry.kind``: ridge, conv or retrieval) from fMRI features to the generator's VAE latents."""
    from glfa.baselines.blurry import fit_blurry

    model = RunLayout(ctx.paths["run"]).model_dir(BLURRY)
    info_path = model / "model.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    reused = info is not None and info["config"]["blurry"] == ctx.config.blurry.model_dump(mode="json")
    if not reused:
        fit_blurry(ctx.config, ctx.paths["store"], ctx.paths["run"], progress=ctx.progress)
        info = json.loads(info_path.read_text())
    decoder = info.get("decoder", "ridge")
    fit = ({"validation": info["validation"]} if decoder == "conv"
           else {"alpha": info["alpha"], "cv_mse": _round(info["cv_mse"][f"{info['alpha']:g}"])})  # ridge, retrieval
    if decoder == "retrieval":
        fit["retrieval_k"] = info["retrieval_k"]
    return {"path": str(model), "reused": reused, "decoder": decoder, **fit,
            "target_variance": _round(info["target_variance"])}


def step_within(ctx: DemoContext) -> dict[str, Any]:
    """Within-subject baselines: stages 1 and 2 (no GLFA) on each held-out subject's own training windows."""
    from glfa.config import SubjectsConfig
    from glfa.training.contrastive import ContrastiveStage
    from glfa.training.cotrain import CotrainStage
    from glfa.training.stage import run_stage

    run_dir, store, results = ctx.paths["run"], ctx.paths["store"], {}
    run = RunLayout(run_dir)
    for subject in ctx.config.subjects.held_out:
        config = ctx.config.model_copy(deep=True)
        config.subjects = SubjectsConfig(train=[subject], held_out=[])
        own = run.within(subject)
        encoder = own.stage1_encoder
        _trained(own, CONTRASTIVE, encoder,
                 lambda resume: run_stage(ContrastiveStage, config, store, own.root, resume=resume,
                                          progress=ctx.progress))
        method = run.within_method(subject)
        results[subject] = _trained(
            run, run.cotrain_stage(method), run.cotrain_model(method),
            lambda resume: run_stage(CotrainStage, config, store, run_dir, method=method, glfa=False,
                                     init_from=encoder, resume=resume, progress=ctx.progress))
    return {"path": str(run_dir), **{f"final_loss_{s}": r["final_loss"] for s, r in results.items()},
            "reused": all(r["reused"] for r in results.values())}


#: The cross-subject decoders the demo compares, by method name (RUN/cotrain-<method>, RUN/lea or
#: RUN/blurry) and how each starts: ``glfa`` also from the blurry latents (``glfa+blurry``). Each
#: held-out subject S is also decoded by its own within-subject model ``within-S``.
DEMO_METHODS = (("glfa", "noise"), ("pte-v", "noise"), ("lea", "noise"), ("blurry", "noise"), ("glfa", "blurry"))


def _fresh(output: Path, inputs: list[Path]) -> bool:
    """Whether ``output`` exists and was written after every one of ``inputs``."""
    return output.is_file() and all(output.stat().st_mtime >= p.stat().st_mtime for p in inputs)


def step_generate(ctx: DemoContext) -> dict[str, Any]:
    """Decode every test window of each held-out subject with every method (mp4 + gif beside the truth).

    A method's clips are reused when they were written after its decoder (and the blurry decoder it
    starts from) with the same generation settings.
    """
    from glfa.generate import BLURRY_SUFFIX, clip_settings, generate, model_dir_for

    run_dir = ctx.paths["run"]
    run = RunLayout(run_dir)
    written, reused = {}, []
    for subject in ctx.config.subjects.held_out:
        for method, init in (*DEMO_METHODS, (run.within_method(subject), "noise")):
            settings = clip_settings(ctx.config.generation.model_copy(update={"init": init}))
            name = method + BLURRY_SUFFIX if init == "blurry" else method
            index_path = run.generations(name, subject, "test") / GENERATIONS_INDEX
            models = [model_dir_for(run_dir, m) / "model.json" for m in {method, BLURRY if init == "blurry" else method}]
            if _fresh(index_path, models) and json.loads(index_path.read_text())["generation"] == settings:
                reused.append(name)
            else:
                generate(run_dir, method=method, subject=subject, split="test", config=ctx.config, init=init,
                         progress=ctx.progress)
            written[f"{name}/{subject}"] = json.loads(index_path.read_text())["count"]
    return {"path": str(run.generations_root), "clips": written, "reused": len(reused) == len(written)}


def step_evaluate(ctx: DemoContext) -> dict[str, Any]:
    """Video metrics (SSIM, N-way top-K) of every method's decoded clips, with t-tests; alignment before/after."""
    from glfa.evaluation import VideoEvaluation, evaluate_run, write_video_tables

    run = RunLayout(ctx.paths["run"])
    saved = run.video_evaluation
    folders = [folder for _, folder in run.generations_folders()]
    settings = ctx.config.evaluation.model_dump(mode="json")
    evaluation = VideoEvaluation.load(saved) if _fresh(saved, [f / GENERATIONS_INDEX for f in folders]) else None
    # Reused only when it scored every generations folder (`glfa evaluate RUN --methods M` scores some).
    reused = (evaluation is not None and evaluation.config["evaluation"] == settings
              and sorted(Path(r.generations).resolve() for r in evaluation.results) == sorted(f.resolve() for f in folders))
    if reused:
        paths = {"markdown": saved.with_suffix(".md")}
    else:
        evaluation = evaluate_run(run.root, config=ctx.config, progress=ctx.progress)
        paths = write_video_tables(evaluation, run.evaluation)
    if ctx.progress:
        print(Path(paths["markdown"]).read_text())
    means = {f"{r.method}/{r.subject}": {k: f"{v['mean']:.3f}±{v['std']:.3f}" for k, v in r.summary.items()}
             for r in evaluation.results}
    return {"path": str(paths["markdown"]), "reused": reused, **means}


#: The data sizes (minutes of the held-out subject's training fMRI) the demo adapts the GLFA model with.
ADAPT_MINUTES = (2.0, 8.0)


def step_adapt(ctx: DemoContext) -> dict[str, Any]:
    """A new subject in minutes: adapt the GLFA model to each held-out subject at two data sizes, decode, score
    (``glfa evaluate adaptation``, with the zero-shot floor and the within-subject ceiling); skipped by ``--quick``."""
    from glfa.adapt import evaluate_adaptation, write_adaptation_table
    from glfa.metrics.decoding import read_stimulus_labels

    if ctx.quick:
        return {"skipped": "--quick"}
    labels, name = read_stimulus_labels(ctx.paths["study"] / "truth" / "clips.json")
    out = {}
    for subject in ctx.config.subjects.held_out:
        table = evaluate_adaptation(ctx.paths["run"], subject=subject, minutes=[0.0, *ADAPT_MINUTES],
                                    methods=["glfa"], ceiling=RunLayout.within_method(subject), config=ctx.config,
                                    labels=labels, labels_name=name, progress=ctx.progress)
        paths = write_adaptation_table(table)
        if ctx.progress:
            print(table.to_markdown())
        out["path"] = str(paths["markdown"])
        for s in table.settings:
            fsc = s.alignment.get("fsc")
            out[f"fsc_{subject}_{s.label}"] = None if fsc is None else round(fsc["mean"], 3)
    return out


def step_report(ctx: DemoContext) -> dict[str, Any]:
    """One self-contained HTML report: tables, plots, decoded clips beside the ground truth."""
    from glfa.report import write_report

    path = write_report(ctx.paths["run"])
    return {"path": str(path), "size_mb": _size_mb(path)}


def step_align(ctx: DemoContext) -> dict[str, Any]:
    """GLFA alone: leave-one-subject-out fSC and ISC before and after alignment (paper Table 1)."""
    from glfa.data.store import StudyStore
    from glfa.evaluation import evaluate_alignment, write_alignment_table

    from glfa.metrics.decoding import read_stimulus_labels

    labels, name = read_stimulus_labels(ctx.paths["study"] / "truth" / "clips.json")  # decoding rows: categories
    store = StudyStore.open(ctx.paths["store"])
    try:
        table = evaluate_alignment(store, ctx.config, labels=labels, labels_name=name)
    finally:
        store.close()
    # beside the runs, shared by them (the report finds it there)
    paths = write_alignment_table(table, RunLayout(ctx.out).alignment, ctx.config, store_path=ctx.paths["store"])
    if ctx.progress:
        print(table.to_markdown())
    rows = table.to_dict()["rows"]
    identity, aligned = rows[0], [r for r in rows if r["held_out"]]
    return {
        "path": str(paths["markdown"]),
        "held_out_isc_identity": {r["held_out"]: round(identity["isc"][r["held_out"]], 3) for r in aligned},
        "held_out_isc_glfa": {r["held_out"]: round(r["isc"][r["held_out"]], 3) for r in aligned},
    }


#: The demo's steps, in order: (name, function of the context returning a JSON-able summary).
STEPS: list[tuple[str, Callable[[DemoContext], dict[str, Any]]]] = [
    ("simulate", step_simulate),
    ("prepare", step_prepare),
    ("pretrain", step_pretrain),
    ("align", step_align),
    ("contrastive", step_contrastive),
    ("generator", step_generator),
    ("cotrain-glfa", _cotrain_step("glfa", glfa=True)),
    ("cotrain-pte-v", _cotrain_step("pte-v", glfa=False)),
    ("lea", step_lea),
    ("within", step_within),
    ("blurry", step_blurry),
    ("generate", step_generate),
    ("adapt", step_adapt),
    ("evaluate", step_evaluate),
    ("report", step_report),
]


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"\nglfa demo{' (quick)' if summary['quick'] else ''}: done in {summary['seconds']:.1f} s")
    for name, result in summary["steps"].items():
        reused = " (reused)" if result.get("reused") else ""
        print(f"  {name:<10} {result['seconds']:7.1f} s{reused}  {result.get('path', '')}")
        details = {k: v for k, v in result.items() if k not in ("path", "reused", "seconds")}
        print("             " + ", ".join(f"{k}={v}" for k, v in details.items()))
    print(f"  summary    {summary['summary_path']}")


def run_demo(out: str | Path, quick: bool = False, *, progress: bool = True) -> dict[str, Any]:
    """Run every demo step into ``out``; print a summary, write ``out/summary.json`` and return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = demo_config(quick)
    ctx = DemoContext(out=out, config=config, quick=quick, progress=progress)
    from glfa.devices import flush_denormals

    start = time.perf_counter()
    with flush_denormals():  # the tiny models' small updates reach denormal floats, 10x slower on a CPU
        for name, step in STEPS:
            t0 = time.perf_counter()
            if progress:
                print(f"glfa demo: {name} ...", flush=True)
            result = step(ctx)
            ctx.results[name] = {**result, "seconds": round(time.perf_counter() - t0, 2)}
    summary = {
        "glfa_version": __version__,
        "quick": quick,
        "config": config.to_dict(),
        "steps": ctx.results,
        "seconds": round(time.perf_counter() - start, 2),
        "summary_path": str(out / "summary.json"),
    }
    write_json_atomic(out / "summary.json", summary)
    _print_summary(summary)
    return summary
