"""The ``glfa`` command: parses arguments, loads the config, calls library code.

It stays thin: every subcommand is a ``_cmd_*`` function that calls into the library.
Bad input (any :class:`~glfa.errors.GlfaError`) becomes one line on stderr and exit status 2.
Library modules are imported inside the handlers so ``glfa --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from glfa import __version__
from glfa.errors import ConfigError, DataError, GlfaError
from glfa.runs import RunLayout, default_run_dir  # the standard library only: --help stays fast


def _config(args: argparse.Namespace):
    from glfa.config import load_config

    return load_config(getattr(args, "config", None))


def _output(path: str | Path, kind: str, field: str) -> Path:
    """``path`` once checked writable as a ``kind`` (``file`` or ``dir``): every command checks before its work."""
    from glfa.io import check_output

    return check_output(Path(path), kind, field=field)


def _run_dir(args: argparse.Namespace, config) -> Path:
    """The run folder of ``glfa train``: ``--out``, else OUTPUT_DIR/NAME of the config; checked writable."""
    return _output(args.out if args.out else default_run_dir(config), "dir", "--out")


# ----------------------------------------------------------------------------- prepare


def _cmd_prepare(args: argparse.Namespace) -> int:
    config = _config(args)
    from glfa.data.prepare import prepare_study

    store = prepare_study(
        Path(args.source), _output(args.store, "dir", "store"), config, layout=args.layout, overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"study store written to {store}")
    return 0


def _register_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="turn a raw study into a windowed study store")
    p.add_argument("source", help="the raw study folder")
    p.add_argument("store", help="the study store to write (a folder)")
    p.add_argument("--layout", choices=["wen2017", "fudan", "generic"], default=None,
                   help="the study's file layout (default: data.layout of the config)")
    p.add_argument("-c", "--config", help="YAML config (default: built-in defaults)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)


def _cmd_verify(args: argparse.Namespace) -> int:
    from glfa.data.store import StudyStore

    store = StudyStore.open(Path(args.store))
    report = store.verify(progress=not args.quiet)
    checks = ("every chunk's Fletcher-32 checksum, " if report["checksummed"] else
              "(written before chunk checksums: only what HDF5 itself detects), ")
    print(f"{store.path}: {report['datasets']} datasets, {report['bytes'] / 2**20:.1f} MiB read; {checks}"
          f"finite fMRI, {report['digests']} content digest(s) and the identity check out")
    return 0


def _register_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="read a whole study store and check every checksum, digest and value")
    p.add_argument("store", help="the study store (a folder written by glfa prepare)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify)


# ----------------------------------------------------------------------------- simulate / demo


def _cmd_simulate(args: argparse.Namespace) -> int:
    config = _config(args)
    from glfa.data.synthetic import simulate_study

    out = simulate_study(_output(args.out, "dir", "OUT"), config, seed=args.seed)
    print(f"synthetic study written to {out}")
    return 0


def _register_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="write a simulated multi-subject video-fMRI study (generic layout)")
    p.add_argument("out", help="folder to write the study to")
    p.add_argument("-c", "--config", help="YAML config whose 'simulation' section is used")
    p.add_argument("--seed", type=int, default=None, help="override simulation.seed")
    p.set_defaults(func=_cmd_simulate)


def _cmd_demo(args: argparse.Namespace) -> int:
    from glfa.demo import run_demo

    run_demo(_output(args.out, "dir", "--out"), quick=args.quick)
    return 0


def _register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole method on the built-in synthetic study")
    p.add_argument("--out", default="glfa-demo", help="output folder (default: ./glfa-demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (used by the tests)")
    p.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------------------- train


def _print_training(result, what: str, output: str) -> int:
    """The lines every ``glfa train`` stage ends with."""
    print(f"{what} trained for {result.step} steps (final loss {result.metrics.get('final_loss')})")
    print(f"saved to {result.outputs[output]}")
    print(f"metrics, config and checkpoints in {result.stage_dir}")
    return 0


def _cmd_train_pretrain(args: argparse.Namespace) -> int:
    from glfa.training.pretrain import PretrainStage
    from glfa.training.stage import run_stage

    config = _config(args)
    result = run_stage(PretrainStage, config, Path(args.store), _run_dir(args, config), resume=args.resume,
                       init_from=args.init, progress=not args.quiet)
    return _print_training(result, "stage 0 (fMRI-PTE fine-tuning)", "pte")


def _cmd_train_contrastive(args: argparse.Namespace) -> int:
    from glfa.training.contrastive import ContrastiveStage
    from glfa.training.stage import run_stage

    config = _config(args)
    result = run_stage(ContrastiveStage, config, Path(args.store), _run_dir(args, config), resume=args.resume,
                       init_from=args.init, progress=not args.quiet)
    return _print_training(result, "stage 1 (contrastive)", "encoder")


def _cmd_train_cotrain(args: argparse.Namespace) -> int:
    from glfa.training.cotrain import CotrainStage
    from glfa.training.stage import run_stage

    config = _config(args)
    if args.generator:
        config.cotrain.generator = args.generator
    result = run_stage(CotrainStage, config, Path(args.store), _run_dir(args, config), method=args.method,
                       glfa=False if args.no_glfa else None, init_from=args.init, resume=args.resume,
                       progress=not args.quiet)
    return _print_training(result, "stage 2 (co-training)", "model")


def _cmd_train_lea(args: argparse.Namespace) -> int:
    from glfa.baselines.lea import fit_lea

    config = _config(args)
    if args.generator:
        config.cotrain.generator = args.generator
    path = fit_lea(config, Path(args.store), _run_dir(args, config), progress=not args.quiet)
    print(f"LEA baseline (ridge from the encoder's latent to the text tokens) saved to {path}")
    return 0


def _cmd_train_blurry(args: argparse.Namespace) -> int:
    from glfa.baselines.blurry import fit_blurry

    config = _config(args)
    if args.generator:
        config.cotrain.generator = args.generator
    path = fit_blurry(config, Path(args.store), args.out, encoder_dir=args.encoder, progress=not args.quiet)
    print(f"blurry decoder ({config.blurry.kind} from fMRI features to the generator's VAE latents) saved to {path}")
    return 0


def _train_parser(stages, name: str, help: str, func) -> argparse.ArgumentParser:
    """A ``glfa train NAME`` parser with the options every stage takes."""
    q = stages.add_parser(name, help=help)
    q.add_argument("-c", "--config", help="YAML config (default: built-in defaults)")
    q.add_argument("--store", required=True, help="the study store (written by glfa prepare)")
    q.add_argument("--out", default=None, help="run folder (default: OUTPUT_DIR/NAME from the config)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=func)
    return q


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a stage of the fMRI-to-video model")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    q = _train_parser(stages, "pretrain", "stage 0: reconstruction fine-tuning of fMRI-PTE on the training split",
                      _cmd_train_pretrain)
    q.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    q.add_argument("--init", default=None, help="a saved FmriPTE folder to fine-tune (default: random init)")
    q = _train_parser(stages, "contrastive", "stage 1: fMRI -> CLIP space against frozen image and caption "
                      "embeddings (cached in the store)", _cmd_train_contrastive)
    q.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    q.add_argument("--init", default=None, help="a saved FmriPTE folder (default: RUN/pte when it exists)")
    q = _train_parser(stages, "cotrain", "stage 2: co-train the encoder (with GLFA) and the UNet's attention and "
                      "temporal layers on the denoising loss + L_GLFA", _cmd_train_cotrain)
    q.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    q.add_argument("--method", default=None,
                   help="name of the trained decoder (default: 'glfa', or 'pte-v' without GLFA); RUN/cotrain-METHOD")
    q.add_argument("--no-glfa", action="store_true", help="train without GLFA: the fMRI-PTE-V baseline")
    q.add_argument("--generator", default=None, help="the text-to-video model folder (default: cotrain.generator)")
    q.add_argument("--init", default=None,
                   help="the stage-1 encoder folder to start from (default: RUN/contrastive/encoder)")
    q = _train_parser(stages, "lea", "the LEA baseline: ridge regression from the stage-1 encoder's latent to the "
                      "generator's text tokens", _cmd_train_lea)
    q.add_argument("--generator", default=None, help="the text-to-video model folder (default: cotrain.generator)")
    q = _train_parser(stages, "blurry", "the low-level decoder: ridge, a small conv net or retrieval (blurry.kind) "
                      "from fMRI features (blurry.features) to the generator's VAE latents of the window's frames "
                      "(RUN/blurry/model)", _cmd_train_blurry)
    q.add_argument("--generator", default=None, help="the text-to-video model folder (default: cotrain.generator)")
    q.add_argument("--encoder", default=None,
                   help="the fMRI encoder folder it reads (default: RUN/cotrain-glfa/model/encoder for "
                        "blurry.features 'aligned', RUN/contrastive/encoder for 'latent')")


# ----------------------------------------------------------------------------- import-weights


def _cmd_import_weights(args: argparse.Namespace) -> int:
    from glfa.models.official import import_weights

    config = _config(args) if args.config else None
    report = import_weights(Path(args.checkpoint), Path(args.out), kind=args.kind, num_heads=args.num_heads,
                            pipeline=args.pipeline, store=args.store, config=config, method=args.method)
    what = "stage-2 decoder model (glfa generate decodes with it)" if args.pipeline else \
        {"pte": "FmriPTE", "stage1": "FmriEncoder", "stage2": "FmriEncoder"}[report["kind"]]
    print(f"imported a {report['kind']} checkpoint as a {what} into {report['out']}")
    if report["dropped"]:
        print(f"left out (glfa keeps them elsewhere): {', '.join(report['dropped'])}")
    if report["kept_initial"]:
        print(f"not in the checkpoint, kept at their initial values: {', '.join(report['kept_initial'])}")
    return 0


def _register_import_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-weights", help="turn the authors' published checkpoint (.pth) into a glfa model folder")
    p.add_argument("checkpoint", help="the authors' .pth (read with torch.load(weights_only=True) only)")
    p.add_argument("out", help="the glfa model folder to write")
    p.add_argument("--kind", choices=["auto", "pte", "stage1", "stage2"], default="auto",
                   help="what the checkpoint holds (default: read from its keys)")
    p.add_argument("--pipeline", default=None, help="with a stage-2 checkpoint: the diffusers text-to-video folder "
                   "released beside it; OUT becomes a decoder model folder (RUN/cotrain-glfa/model)")
    p.add_argument("--store", default=None, help="with --pipeline: the study store whose training windows give the "
                   "negative condition (the mean training fMRI)")
    p.add_argument("-c", "--config", help="with --pipeline: the run's YAML config (subjects, generation settings)")
    p.add_argument("--method", default=None, help="with --pipeline: the method name recorded (default glfa)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads (not in any shape; default: embedding width / 64, the authors' 16)")
    p.set_defaults(func=_cmd_import_weights)


# ----------------------------------------------------------------------------- generate


def _cmd_generate(args: argparse.Namespace) -> int:
    from glfa.generate import generate

    config = _config(args) if args.config else None
    out = generate(Path(args.run), method=args.method, subject=args.subject, split=args.split,
                   store=args.store, config=config, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                   init=args.init, progress=not args.quiet)
    print(f"decoded clips, their ground truth and index.json written to {out}")
    return 0


def _register_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="decode a subject's fMRI windows into videos (mp4 + gif beside the truth)")
    p.add_argument("run", help="the run folder (holding cotrain-METHOD/model or lea/model)")
    p.add_argument("--subject", required=True, help="the subject whose fMRI is decoded")
    p.add_argument("--method", default="glfa", help="which trained decoder: glfa (default), pte-v, lea, blurry, ...")
    p.add_argument("--init", choices=["noise", "blurry"], default=None,
                   help="start from pure noise or from RUN/blurry/model's latents (writes generations/METHOD+blurry); "
                        "default: generation.init")
    p.add_argument("--split", choices=["train", "test"], default="test", help="windows to decode (default: test)")
    p.add_argument("--store", default=None, help="study store (default: the one the decoder was trained on; another "
                   "store's clips go to generations/METHOD/S-SPLIT@STORE-TAG)")
    p.add_argument("-c", "--config", help="YAML config whose 'generation' section overrides the trained one")
    p.add_argument("--batch-size", type=int, default=8, help="windows per denoising batch (default 8)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="float32 (default), float16 or bfloat16 for the models")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_generate)


# ----------------------------------------------------------------------------- adapt


def _cmd_adapt(args: argparse.Namespace) -> int:
    import json

    from glfa.adapt import adapt_model, trained_config
    from glfa.generate import model_dir_for

    config = _config(args) if args.config else None
    if args.denoising_weight is not None:
        if not args.denoising_weight >= 0:
            raise ConfigError(f"expected a weight >= 0, got {args.denoising_weight}", field="--denoising-weight")
        config = config if config is not None else trained_config(model_dir_for(Path(args.run), args.base))
        config = config.model_copy(update={"adapt": config.adapt.model_copy(
            update={"denoising_weight": args.denoising_weight})})
    out = adapt_model(Path(args.run), subject=args.subject, minutes=args.minutes, method=args.method, name=args.name,
                      base=args.base, config=config, store=args.store, progress=not args.quiet)
    record = json.loads((out / "model.json").read_text())["adaptation"]
    print(f"{args.base} adapted to subject {args.subject} ({args.method}) on {len(record['windows'])} training "
          f"windows ({record['minutes_used']:.2f} of the {args.minutes:g} minutes asked) in "
          f"{record['fit_seconds']:.1f} s")
    print(f"saved to {out}; decode with `glfa generate {args.run} --method {out.parent.name.removeprefix('cotrain-')} "
          f"--subject {args.subject}`")
    return 0


def _register_adapt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt a trained cross-subject model to a new subject from its first minutes "
                       "of data (a new decoder model RUN/cotrain-NAME)")
    p.add_argument("run", help="the run folder holding the trained model (cotrain-BASE/model, with GLFA)")
    p.add_argument("--subject", required=True, help="the new subject (not one the model was trained on)")
    p.add_argument("--minutes", type=float, required=True,
                   help="fit on the first MINUTES of the subject's training-split fMRI")
    p.add_argument("--method", choices=["glfa", "linear", "full"], default="glfa",
                   help="glfa: the subject's own GLFA layer (default); linear: per-parcel ridge into the trained "
                        "subjects' mean response; full: glfa plus the token projector")
    p.add_argument("--name", default=None, help="the new method's name (default: adapt-METHOD-SUBJECT-MINUTESmin)")
    p.add_argument("--denoising-weight", type=float, default=None,
                   help="glfa/full: add this weight x the denoising loss through the frozen encoder and UNet to "
                        "L_GLFA (default: the config's adapt.denoising_weight, 0)")
    p.add_argument("--base", default="glfa", help="the trained method to start from (default: glfa)")
    p.add_argument("--store", default=None, help="study store (default: the one the model was trained on)")
    p.add_argument("-c", "--config", help="YAML config whose 'adapt' section is used (default: the trained one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_adapt)


# ----------------------------------------------------------------------------- align


def _subject_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _cmd_align_fit(args: argparse.Namespace) -> int:
    from glfa.align import GLFAAligner, responses_from_store
    from glfa.data.store import StudyStore

    config = _config(args)
    output = _output(args.output, "dir", "--output")
    store = StudyStore.open(args.store)
    subjects = _subject_list(args.subjects) if args.subjects else store.subjects
    responses = responses_from_store(store, subjects, args.split)
    aligner = GLFAAligner.from_config(config, mask=store.mask, projector=store.projector, verbose=not args.quiet)
    aligner.fit(responses)
    out = aligner.save(output)
    print(f"GLFA fitted on subjects {','.join(subjects)} ({next(iter(responses.values())).shape[0]} time points "
          f"of the {args.split!r} split) in {aligner.fit_seconds_:.1f} s; L_GLFA {aligner.loss_history_[0]:.4f} -> "
          f"{aligner.loss_history_[-1]:.4f}; saved to {out}")
    return 0


def _read_arrays(path: Path, key: str | None) -> dict[str, object]:
    """Arrays of a .npy (key None) or .npz file (every array, or only ``key``), without pickle."""
    import numpy as np

    if not path.is_file():
        raise DataError("input file not found", path=path)
    try:
        if path.suffix == ".npy":
            return {None: np.load(path, allow_pickle=False)}
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if key is not None:
                    if key not in npz.files:
                        raise DataError(f"no array {key!r}; the file holds {npz.files}", path=path, field="--key")
                    return {key: npz[key]}
                return {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read the array(s) ({exc})", path=path) from None
    raise DataError("expected a .npy or .npz file", path=path)


def _write_arrays(path: Path, arrays: dict[str | None, object]) -> None:
    """Write one array as .npy, or named arrays as .npz, atomically."""
    import numpy as np

    from glfa.io import open_atomic

    if path.suffix == ".npy" and len(arrays) != 1:
        raise DataError(f"{len(arrays)} arrays cannot go into one .npy file; write a .npz", path=path,
                        field="--output")
    with open_atomic(path) as fh:
        if path.suffix == ".npy":
            np.save(fh, next(iter(arrays.values())), allow_pickle=False)
        else:
            np.savez(fh, **{("aligned" if k is None else k): v for k, v in arrays.items()})


def _cmd_align_transform(args: argparse.Namespace) -> int:
    from glfa.align import GLFAAligner

    if (args.input is None) == (args.store is None):
        raise ConfigError("give either INPUT (a .npy/.npz file) or --store STORE --subject S", field="INPUT")
    output = _output(args.output, "file", "--output")
    if output.suffix not in (".npy", ".npz"):
        raise DataError("the output must end in .npy or .npz", path=output, field="--output")
    aligner = GLFAAligner.load(args.aligner)
    if args.store is not None:
        from glfa.data.store import StudyStore

        if not args.subject:
            raise ConfigError("--store needs --subject", field="--subject")
        if output.suffix != ".npz":
            raise DataError("with --store the output is a .npz file (one array per stimulus)", path=output,
                            field="--output")
        store = StudyStore.open(args.store)
        stimuli = [st for st in store.stimuli
                   if (args.split is None or store.split_of(st) == args.split) and store.has(args.subject, st)]
        if not stimuli:
            raise DataError(f"subject {args.subject!r} has no stored response"
                            + (f" in split {args.split!r}" if args.split else ""), path=store.path, field="--subject")
        arrays = {st: store.response(args.subject, st) for st in stimuli}
        source = store.path
    else:
        arrays = _read_arrays(Path(args.input), args.key)
        source = Path(args.input)
    aligned = {}
    for name, array in arrays.items():
        try:
            aligned[name] = aligner.transform(array)
        except DataError as exc:  # the aligner names its argument; the user knows the file and the array
            raise DataError(exc.detail, path=source, field=name) from None
    _write_arrays(output, aligned)
    print(f"aligned {len(aligned)} array(s) written to {output}")
    return 0


def _register_align(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align", help="GLFA as a standalone functional alignment: fit on subjects, transform any")
    asub = p.add_subparsers(dest="align_command", metavar="ACTION", required=True)
    f = asub.add_parser("fit", help="fit GLFA on subjects' responses to the shared stimuli of a split")
    f.add_argument("store", help="a study store (written by glfa prepare)")
    f.add_argument("--subjects", help="comma-separated subjects to fit on (default: all)")
    f.add_argument("-o", "--output", required=True, help="folder to save the aligner to")
    f.add_argument("-c", "--config", help="YAML config: model.glfa (parcel, kernel, lambda) and align (steps, ...)")
    f.add_argument("--split", choices=["train", "test"], default="train", help="stimuli to fit on (default: train)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_align_fit)
    t = asub.add_parser(
        "transform", help="align responses with a fitted aligner",
        description="Align INPUT (a .npy array [T, H, W] or [T, V], or every array of a .npz) and write OUTPUT "
                    "(.npy for one array, .npz keeps the input's names; a .npy input is named 'aligned'). "
                    "Or align a subject's stored responses: --store STORE --subject S [--split test] writes a "
                    ".npz with one array [T_s, H, W] per stimulus id.")
    t.add_argument("aligner", help="a folder written by 'glfa align fit' (or GLFAAligner.save)")
    t.add_argument("input", nargs="?", help=".npy or .npz file of responses")
    t.add_argument("-o", "--output", required=True, help=".npy or .npz file to write")
    t.add_argument("--key", help="only this array of a .npz input")
    t.add_argument("--store", help="align a subject's responses stored here instead of INPUT")
    t.add_argument("--subject", help="the subject whose stored responses are aligned (with --store)")
    t.add_argument("--split", choices=["train", "test"], default=None, help="with --store: only this split")
    t.set_defaults(func=_cmd_align_transform)


# ----------------------------------------------------------------------------- evaluate


def _decoding_labels(args: argparse.Namespace) -> tuple[dict[str, str] | None, str]:
    """``--labels FILE``'s {stimulus: label} and what they are; (None, "clip id") without it."""
    if not args.labels:
        return None, "clip id"
    from glfa.metrics.decoding import read_stimulus_labels

    return read_stimulus_labels(args.labels)


def _cmd_evaluate_alignment(args: argparse.Namespace) -> int:
    from glfa.data.store import StudyStore
    from glfa.evaluation import evaluate_alignment, write_alignment_table

    config = _config(args)
    out = _output(args.output if args.output else RunLayout(default_run_dir(config)).alignment, "dir", "--output")
    store = StudyStore.open(args.store)
    subjects = _subject_list(args.subjects) if args.subjects else None
    labels, labels_name = _decoding_labels(args)
    table = evaluate_alignment(store, config, subjects=subjects, labels=labels, labels_name=labels_name,
                               verbose=not args.quiet)
    paths = write_alignment_table(table, out, config, store_path=store.path)
    print(f"fSC and ISC on the {table.split!r} split ({table.n_timepoints} time points); bold: the subject "
          "held out of fitting")
    print(table.to_markdown())
    print(f"written to {paths['json']} and {paths['markdown']}")
    return 0


def _register_evaluate_alignment(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser("alignment", help="leave-one-subject-out fSC and ISC before and after GLFA (Table 1), and "
                        "inter-subject decoding of the stimulus after identity, tuned smoothing and GLFA")
    p.add_argument("store", help="a study store (written by glfa prepare)")
    p.add_argument("-c", "--config", help="YAML config: model.glfa and align sections")
    p.add_argument("-o", "--output", help="output folder (default: OUTPUT_DIR/NAME/alignment of the config)")
    p.add_argument("--subjects", help="comma-separated subjects of the table (default: all; at least 3)")
    p.add_argument("--labels", help="JSON {stimulus: label} (or a synthetic study's truth/clips.json: categories) "
                   "for the inter-subject decoding rows (default: every clip is its own class)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate_alignment)


def _print_video_tables(evaluation, paths: dict[str, Path]) -> None:
    """The Markdown tables and where they are; on stderr, one warning line per method without a brain signal."""
    from glfa.evaluation import SIGNAL_LEVEL, metric_label

    print(Path(paths["markdown"]).read_text())
    print(f"written to {paths['json']} and {paths['markdown']}")
    for r in evaluation.results:
        weak = r.not_significant()
        if weak:
            print(f"glfa: warning: {r.method} on {r.task}: no significant brain signal (matched not above mismatched, "
                  f"paired permutation p >= {SIGNAL_LEVEL}) on {', '.join(map(metric_label, weak))}", file=sys.stderr)


def _cmd_evaluate_run(args: argparse.Namespace) -> int:
    from glfa.evaluation import evaluate_run, write_video_tables
    from glfa.training.loop import Processes

    config = _config(args) if args.config else None
    methods = _subject_list(args.methods) if args.methods else None
    out = _output(RunLayout(args.run).evaluation, "dir", "RUN/evaluation")
    evaluation = evaluate_run(Path(args.run), config=config, methods=methods, progress=not args.quiet)
    if not Processes(evaluation.config.get("device")).is_main:
        return 0  # under accelerate launch every process holds the result; the main one writes it
    _print_video_tables(evaluation, write_video_tables(evaluation, out))
    return 0


def _register_evaluate_run(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(RUN_PROTOCOL, help="video metrics (SSIM, PSNR, N-way top-K, CLIP), each matched against "
                        "mismatched, retrieval and t-tests of a run's generations "
                        "(`glfa evaluate RUN` is short for `glfa evaluate run RUN`)")
    p.add_argument("run", help="the run folder (its generations/ are evaluated)")
    p.add_argument("-c", "--config", help="YAML config whose 'evaluation' section is used (default: the trained one)")
    p.add_argument("--methods", help="comma-separated methods to evaluate (default: every generated one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate_run)


def _cmd_evaluate_combine(args: argparse.Namespace) -> int:
    from glfa.evaluation import combine_evaluations, write_video_tables

    out = _output(args.output, "dir", "--output")
    evaluation = combine_evaluations(args.runs, out)
    _print_video_tables(evaluation, write_video_tables(evaluation, out))
    return 0


def _register_evaluate_combine(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser("combine", help="join evaluated runs into one set of tables (leave-one-subject-out: "
                        "one run per held-out subject)")
    p.add_argument("runs", nargs="+", help="run folders evaluated with `glfa evaluate RUN` (or their video.json)")
    p.add_argument("-o", "--output", required=True, help="folder for the joined video.json and video.md")
    p.set_defaults(func=_cmd_evaluate_combine)


def _cmd_evaluate_adaptation(args: argparse.Namespace) -> int:
    from glfa.adapt import evaluate_adaptation, write_adaptation_table

    config = _config(args) if args.config else None
    try:
        minutes = [float(m) for m in _subject_list(args.minutes)]
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {args.minutes!r}", field="--minutes") from None
    labels, labels_name = _decoding_labels(args)
    table = evaluate_adaptation(Path(args.run), subject=args.subject, minutes=minutes,
                                methods=_subject_list(args.methods), base=args.base, ceiling=args.ceiling,
                                config=config, labels=labels, labels_name=labels_name, device=args.device,
                                progress=not args.quiet)
    paths = write_adaptation_table(table)
    print(table.to_markdown())
    print(f"written to {paths['json']} and {paths['markdown']}")
    return 0


def _register_evaluate_adaptation(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser("adaptation", help="the data-efficiency curve of a new subject: glfa adapt -> generate -> "
                        "score at several data sizes, with the zero-shot floor and the within-subject ceiling")
    p.add_argument("run", help="the run folder holding the trained model (cotrain-BASE/model, with GLFA)")
    p.add_argument("--subject", required=True, help="the new subject")
    p.add_argument("--minutes", default="0,5,10,20,40", help="comma-separated data sizes (0: zero-shot; default "
                   "0,5,10,20,40)")
    p.add_argument("--methods", default="glfa,linear", help="comma-separated adaptation methods among glfa, linear, "
                   "full (default glfa,linear)")
    p.add_argument("--base", default="glfa", help="the trained method to start from (default: glfa)")
    p.add_argument("--ceiling", default="within", help="the run's within-subject method (default: within)")
    p.add_argument("--labels", help="JSON {stimulus: label} (or a synthetic study's truth/clips.json) of the "
                   "decoding column (default: every clip is its own class)")
    p.add_argument("-c", "--config", help="YAML config: adapt, generation and evaluation sections (default: the "
                   "trained one)")
    p.add_argument("--device", default=None, help="where the generator runs (default: CUDA when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate_adaptation)


RUN_PROTOCOL = "run"
# Each entry adds one evaluation protocol under `glfa evaluate`.
_EVALUATE_PROTOCOLS = [_register_evaluate_run, _register_evaluate_alignment, _register_evaluate_combine,
                       _register_evaluate_adaptation]


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run's decoded videos (glfa evaluate RUN), the alignment "
                       "metrics of GLFA alone (glfa evaluate alignment STORE), or join evaluated runs "
                       "(glfa evaluate combine RUN RUN ... -o DIR)")
    esub = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for register in _EVALUATE_PROTOCOLS:
        register(esub)


# ----------------------------------------------------------------------------- report


def _cmd_report(args: argparse.Namespace) -> int:
    from glfa.report import write_report

    out = _output(args.out if args.out else RunLayout(args.run).report, "file", "--out")
    path = write_report(Path(args.run), out=out)
    print(f"report written to {path} (one self-contained HTML file; open it in a browser)")
    return 0


def _register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report of a run: tables, plots, decoded clips")
    p.add_argument("run", help="the run folder (after glfa evaluate RUN)")
    p.add_argument("--out", default=None, help="the HTML file to write (default: RUN/report.html)")
    p.set_defaults(func=_cmd_report)


# ----------------------------------------------------------------------------- caption


def _cmd_caption(args: argparse.Namespace) -> int:
    from glfa.backbones import load_captioner
    from glfa.captioning import caption_store
    from glfa.data.store import StudyStore

    store = StudyStore.open(Path(args.store))
    _output(args.out if args.out else store.path / "cache" / "captions", "dir", "--out")
    model = load_captioner(args.model, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    out = caption_store(store, model, out_dir=args.out, batch_size=args.batch_size)
    print(f"captions of {len(store.stimuli)} stimuli in {out} (one JSON list per stimulus, {store.fps:g} fps)")
    if Path(out).resolve() == (store.path / "cache" / "captions").resolve():
        print("the store now reads them for every stimulus it holds without captions")
    else:
        print("to use them, copy the *.json files except index.json to STORE/cache/captions/")
    return 0


def _register_caption(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption every stored video frame with BLIP-2 (resumable)")
    p.add_argument("store", help="the study store (a folder written by glfa prepare)")
    p.add_argument("--model", required=True, help="BLIP-2 folder or cached hub id (e.g. Salesforce/blip2-opt-2.7b)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per BLIP-2 call (default 16)")
    p.add_argument("--out", default=None, help="output folder (default: STORE/cache/captions)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="float32 (default), float16 or bfloat16")
    p.add_argument("--max-new-tokens", type=int, default=30, help="longest caption in tokens (default 30)")
    p.set_defaults(func=_cmd_caption)


# ----------------------------------------------------------------------------- main

# Each entry adds one subcommand; new subcommands add a _register_* function here.
_REGISTRY = [_register_prepare, _register_verify, _register_simulate, _register_demo, _register_train,
             _register_import_weights, _register_adapt, _register_generate, _register_align, _register_evaluate,
             _register_report, _register_caption]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """One clean line per warning on stderr, above any progress bar (not Python's two-line format)."""
    from tqdm.auto import tqdm

    tqdm.write(f"glfa: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _protocol_names() -> set[str]:
    """The names of the ``glfa evaluate`` subcommands."""
    probe = argparse.ArgumentParser(add_help=False).add_subparsers()
    for register in _EVALUATE_PROTOCOLS:
        register(probe)
    return set(probe.choices)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``glfa`` command."""
    parser = argparse.ArgumentParser(
        prog="glfa",
        description="Cross-subject fMRI-to-video decoding with Global-Local Functional Alignment.",
    )
    parser.add_argument("--version", action="version", version=f"glfa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _REGISTRY:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glfa`` command; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "evaluate" and not argv[1].startswith("-") and argv[1] not in _protocol_names():
        argv.insert(1, RUN_PROTOCOL)  # `glfa evaluate RUN` is `glfa evaluate run RUN`
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except GlfaError as exc:
        print(f"glfa: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glfa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
