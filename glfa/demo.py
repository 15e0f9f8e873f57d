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
   ISC before and after GLFA, as the paper's Table 1 (``OUT/alignment/alignment.md``).

Later stages append their step to :data:`STEPS`. The demo ends with a printed summary and
``OUT/summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from glfa import __version__
from glfa.config import GlfaConfig, load_config
from glfa.errors import StoreError

__all__ = ["QUICK", "STEPS", "DemoContext", "demo_config", "run_demo"]

#: Overrides of ``--quick``: a study small enough for the tests.
QUICK: dict[str, Any] = {
    "data": {"image_size": 64},
    "pretrain": {"steps": 10, "batch_size": 8, "checkpoint_every": 10},
    "align": {"steps": 20},
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


def step_pretrain(ctx: DemoContext) -> dict[str, Any]:
    """Stage 0: fine-tune the tiny fMRI-PTE on the training split (or reuse a finished run of the same config)."""
    from glfa.training.pretrain import run_pretrain

    key = _key({"store": str(ctx.paths["store"].absolute()), "model": ctx.config.model.model_dump(mode="json"),
                "pretrain": ctx.config.pretrain.model_dump(mode="json"), "subjects": ctx.config.subjects.model_dump()})
    run_dir = ctx.out / f"run-{key}"
    metrics_path = run_dir / "pretrain" / "metrics.json"
    reused = metrics_path.is_file() and (run_dir / "pte").is_dir()
    if not reused:
        run_pretrain(ctx.config, ctx.paths["store"], run_dir, resume=(run_dir / "pretrain").is_dir(),
                     progress=ctx.progress)
    metrics = json.loads(metrics_path.read_text())
    ctx.paths["run"] = run_dir
    return {"path": str(run_dir / "pte"), "reused": reused, "steps": metrics.get("steps"),
            "first_loss": metrics.get("first_loss"), "final_loss": metrics.get("final_loss")}


def step_align(ctx: DemoContext) -> dict[str, Any]:
    """GLFA alone: leave-one-subject-out fSC and ISC before and after alignment (paper Table 1)."""
    from glfa.data.store import StudyStore
    from glfa.evaluation import evaluate_alignment, write_alignment_table

    store = StudyStore.open(ctx.paths["store"])
    try:
        table = evaluate_alignment(store, ctx.config)
    finally:
        store.close()
    paths = write_alignment_table(table, ctx.out / "alignment", ctx.config, store_path=ctx.paths["store"])
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
    start = time.perf_counter()
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
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "summary.json")
    _print_summary(summary)
    return summary
