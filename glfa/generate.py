"""``glfa generate``: decode every window of one subject and split into mp4/gif clips beside the truth.

Output (``RUN/generations/<method>/<subject>-<split>/``, with ``@<store tag>`` after it when the store
is not the one the decoder was trained on: :meth:`glfa.runs.RunLayout.generations`)::

    decoded/0000.mp4, decoded/0000.gif, ...   the decoded clips, at ``generation.fps``
    truth/0000.mp4, truth/0000.gif, ...       the stimulus frames of each window, resampled to the
                                              decoded frame count and size
    videos.npz                                {"decoded", "truth"}: uint8 [N, f, h, w, 3], index order
    generation.json                           timing (seconds, clips/s), device, batch size, processes
    index.json                                what was decoded, with which settings; written last

Everything is written into a hidden temporary folder beside the target and renamed into place
at the end, so a killed run never leaves a half folder and an existing result is replaced only
by a complete one. Clip ``i`` of window ``w`` starts from noise seeded with
``generation.seed + w.index`` (the window's position in the store), so its decoding does not
depend on the batch size, on the other windows or on the device (beyond float rounding).
Under ``accelerate launch`` the processes share the batches out and the main process writes
the folder (:func:`generate`); the result equals a single-process run's.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from glfa.config import GenerationConfig, GlfaConfig
from glfa.data.store import StudyStore
from glfa.data.video import resample_video, write_gif, write_video
from glfa.errors import CheckpointError, DataError
from glfa.io import check_output, remove_stale_temporaries, replace_dir, temporary_name, write_json_atomic
from glfa.pipeline import MODEL_INFO, FmriToVideoPipeline, read_model_info
from glfa.runs import BLURRY, GENERATIONS_INDEX, RunLayout, same_store, store_tag
from glfa.training.loop import Processes

VIDEOS = "videos.npz"
TIMING = "generation.json"
SHARES = ".shares"  # each process's items and timing, merged by the main process and removed


#: Suffix of the generations folder of a method started from the blurry decoder's latents.
BLURRY_SUFFIX = "+blurry"


def available_methods(run_dir: str | Path) -> list[str]:
    """The methods with a decoder model in ``run_dir``: ``cotrain-<method>/model`` names, then ``lea``, ``blurry``."""
    layout = RunLayout(run_dir)
    return [m for m in layout.decoder_methods() if (layout.model_dir(m) / MODEL_INFO).is_file()]


def decoder_folder(run_dir: Path, method: str) -> Path:
    """Where a method's decoder model lives in ``run_dir`` (``METHOD+blurry`` decodes with METHOD's)."""
    return RunLayout(run_dir).model_dir(method.removesuffix(BLURRY_SUFFIX))


def model_dir_for(run_dir: str | Path, method: str) -> Path:
    """``RUN/lea/model`` or ``RUN/blurry/model``, else ``RUN/cotrain-<method>/model``; CheckpointError if empty."""
    run_dir = Path(run_dir)
    if not method or "/" in method or method.startswith("."):
        raise DataError(f"expected a method name such as 'glfa', 'pte-v' or 'lea', got {method!r}", field="method")
    if method.endswith(BLURRY_SUFFIX):
        raise DataError(f"names a generations folder, not a decoder: use --method "
                        f"{method.removesuffix(BLURRY_SUFFIX)} --init blurry", field="method")
    path = decoder_folder(run_dir, method)
    if not (path / MODEL_INFO).is_file() and (path / "config.json").is_file():
        raise CheckpointError("holds an fMRI encoder only, not a decoder model (an authors' stage-2 checkpoint "
                              "imported without its pipeline?): run glfa import-weights CHECKPOINT OUT --pipeline DIR "
                              "--store STORE -c CONFIG", path=path, field="method")
    if not (path / MODEL_INFO).is_file():
        found = available_methods(run_dir)
        raise CheckpointError(f"no model for method {method!r} (no {path / MODEL_INFO}); this run holds "
                              f"{found if found else 'no decoder model: run glfa train cotrain first'}",
                              path=run_dir, field="method")
    return path


def decoded_store_tag(info: dict, store: StudyStore) -> str | None:
    """The :func:`~glfa.runs.store_tag` of ``store`` in its generations folder's name; None for the decoder's own.

    ``info`` is the decoder's ``model.json``; a store other than the one it was trained on
    (cross-dataset decoding) gets its own folder, so its clips never replace the own store's.
    """
    if same_store(info, {"store": str(store.path), "store_identity": store.identity}):
        return None
    return store_tag(store.path, store.identity)


def generation_config(info: dict, config: GlfaConfig | GenerationConfig | None, model_dir: Path) -> GenerationConfig:
    """``config``'s generation settings, else those of the config saved in ``model.json``."""
    if isinstance(config, GlfaConfig):
        return config.generation
    if isinstance(config, GenerationConfig):
        return config
    try:
        return GenerationConfig.model_validate(info["config"].get("generation", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CheckpointError(f"invalid saved generation config ({first['msg']})", path=model_dir / MODEL_INFO,
                              field="config.generation." + ".".join(map(str, first["loc"]))) from None


def clip_settings(gen: GenerationConfig) -> dict:
    """The generation settings a clip depends on, as index.json records them: the start's only for a blurry start."""
    settings = gen.model_dump(mode="json")
    if settings["init"] == "noise":
        del settings["init"], settings["init_strength"]
    return settings


def truth_clip(frames: np.ndarray, num_frames: int, height: int, width: int) -> np.ndarray:
    """A window's stimulus frames ``[m, h, w, 3]`` -> ``[num_frames, height, width, 3]`` over the same span.

    The window's ``m`` frames and the decoded ``num_frames`` cover the same seconds, so time is
    resampled by frame count (nearest frame) and space by antialiased bilinear resizing.
    """
    return resample_video(frames, float(len(frames)), float(num_frames), height, width)


def _subject_windows(store: StudyStore, subject: str, split: str) -> list:
    """The ``split`` windows ``subject`` has responses to; DataError for an unknown subject or none."""
    if subject not in store.subjects:
        raise DataError(f"unknown subject {subject!r}; the store holds {store.subjects}", path=store.path,
                        field="subject")
    windows = [w for w in store.windows(split) if store.has(subject, w.stimulus_id)]
    if not windows:
        raise DataError(f"subject {subject!r} has no response to any {split} window", path=store.path,
                        field="subject")
    return windows


def _write_npz(path: Path, arrays: dict[str, Path]) -> None:
    """Pack ``.npy`` files into an (uncompressed) ``.npz`` as :func:`numpy.savez` would, streaming from disk."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, npy in arrays.items():
            zf.write(npy, arcname=f"{name}.npy")


def generate(run_dir: str | Path, *, method: str, subject: str, split: str = "test",
             store: StudyStore | str | Path | None = None, config: GlfaConfig | GenerationConfig | None = None,
             device: str | None = None, dtype: str | None = None, batch_size: int = 8, init: str | None = None,
             progress: bool = True) -> Path:
    """Decode every ``split`` window of ``subject`` with ``method``'s model; returns the generations folder.

    Under ``accelerate launch`` the batches of windows (``batch_size`` windows each, in the
    order a single process takes them) are dealt out to the processes in turn, each process on
    its own GPU (or the CPU); the main process then writes the one generations folder. Every
    clip is decoded in the same batch and from the same seed as in a single-process run, so
    the folder's clips and arrays are the same, byte for byte.

    Parameters
    ----------
    run_dir
        The experiment's run folder (``output_dir/name``).
    method
        ``"lea"`` for ``RUN/lea/model``, ``"blurry"`` for ``RUN/blurry/model`` (its predicted
        latents decoded by the VAE, no diffusion), else the name of ``RUN/cotrain-<method>/model``.
    subject, split
        Whose fMRI, and which windows (``test`` or ``train``; a training subject's ``train``
        windows are allowed and recorded as ``seen_in_training`` in the index).
    store
        The study store (or its path); the one named in ``model.json`` when None.
    config
        A GlfaConfig (its ``generation`` section) or GenerationConfig; the config saved in
        ``model.json`` when None.
    device, dtype
        Where and in which precision the generator runs (CUDA if available and float32 by default).
    batch_size
        Windows per UNet batch (the UNet sees twice as many under guidance).
    init
        ``"noise"`` or ``"blurry"``, overriding ``generation.init``. With ``blurry`` a diffusion
        method starts from ``RUN/blurry/model``'s latents noised to ``generation.init_strength``
        and writes ``generations/<method>+blurry/``.

    The folder is ``RUN/generations/<method>/<subject>-<split>``, with ``@<store tag>`` after it
    when ``store`` is not the one the decoder was trained on (:func:`decoded_store_tag`).
    progress
        Show a progress bar over the clips (the main process's).
    """
    run_dir = Path(run_dir)
    if batch_size <= 0:
        raise DataError(f"must be positive, got {batch_size}", field="batch_size")
    model_dir = model_dir_for(run_dir, method)
    info = read_model_info(model_dir)
    gen = generation_config(info, config, model_dir)
    if init is not None:
        if init not in ("noise", "blurry"):
            raise DataError(f"expected 'noise' or 'blurry', got {init!r}", field="init")
        gen = gen.model_copy(update={"init": init})
    name = method + BLURRY_SUFFIX if gen.init == "blurry" and info["kind"] != "blurry" else method
    if not isinstance(store, StudyStore):
        store = StudyStore.open(store if store is not None else info["store"])
    store.check_geometry(info.get("geometry"), model_dir)
    windows = _subject_windows(store, subject, split)
    out = RunLayout(run_dir).generations(name, subject, split, decoded_store_tag(info, store))
    procs = Processes(device)
    tmp_name = None
    if procs.is_main:
        check_output(out, "dir")
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)  # only those of killed runs: never a living run's folder
        tmp_name = temporary_name(out).name
        _start_folder(out.with_name(tmp_name), len(windows), gen)
    tmp = out.with_name(procs.main_value(tmp_name))  # the main process's folder, shared by every process
    procs.wait()
    try:
        batches = [(start, windows[start:start + batch_size]) for start in range(0, len(windows), batch_size)]
        started = time.perf_counter()
        _decode_share(tmp, procs.rank, batches[procs.rank::procs.count], run_dir, subject, store, model_dir, info,
                      name, gen, procs.device(device), dtype, progress and procs.is_main)
        procs.wait()
        if procs.is_main:
            _finish_folder(tmp, run_dir, name, subject, split, store, len(windows), model_dir, info, gen,
                           batch_size, procs.count, started)
            replace_dir(tmp, out)
    finally:
        if procs.is_main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    procs.wait()  # the others return once the folder is in place
    return out


class BlurryStart:
    """The blurry decoder's clips and initial latents at the generation's frame count and size.

    The decoder predicts latents of the stored window (``[c, m, h', w']``); when the generation
    asks for another frame count or size, its VAE-decoded clip is resampled as the ground truth
    is (:func:`truth_clip`) and, for a start, encoded again.
    """

    def __init__(self, model_dir: Path, generator, generator_path: str, gen: GenerationConfig):
        from glfa.baselines.blurry import load_blurry_decoder

        info = read_model_info(model_dir)
        if info["generator"] != generator_path:
            raise CheckpointError(f"the blurry decoder predicts latents of the generator {info['generator']}, but "
                                  f"the method decodes with {generator_path}", path=model_dir / MODEL_INFO,
                                  field="generator")
        self.decoder = load_blurry_decoder(model_dir, generator.device)
        self.generator, self.gen = generator, gen
        factor = generator.vae_scale_factor
        self.resampled = self.decoder.shape[1:] != (gen.num_frames, gen.height // factor, gen.width // factor)

    def videos(self, fmri) -> torch.Tensor:
        """fMRI ``[b, n, H, W]`` -> uint8 clips ``[b, f, h, w, 3]`` (CPU)."""
        clips = self.generator.decode_latents(self.decoder.latents(fmri))  # [b, m, h, w, 3]
        if not self.resampled:
            return clips
        gen = self.gen
        return torch.from_numpy(np.stack([truth_clip(c, gen.num_frames, gen.height, gen.width) for c in clips.numpy()]))

    def latents(self, fmri) -> torch.Tensor:
        """fMRI ``[b, n, H, W]`` -> scaled latents ``[b, c, f, h/s, w/s]`` (CPU) to start the solver from."""
        if not self.resampled:
            return self.decoder.latents(fmri).cpu()
        return self.generator.encode_videos(self.videos(fmri)).float().cpu()


def _decoder(run_dir: Path, model_dir: Path, info: dict, gen: GenerationConfig, device, dtype):
    """``(decode(fmri [b, n, H, W], seeds) -> uint8 videos [b, f, h, w, 3], the VideoGenerator)`` for one method."""
    from glfa.backbones import load_video_generator

    if info["kind"] == "blurry":  # the predicted latents decoded as they are: no diffusion, no seeds
        generator = load_video_generator(info["generator"], device=device, dtype=dtype, with_text_encoder=False)
        start = BlurryStart(model_dir, generator, info["generator"], gen)
        return lambda fmri, seeds: start.videos(fmri), generator
    pipe = FmriToVideoPipeline.from_model_dir(model_dir, device=device, dtype=dtype)
    blurry = None
    if gen.init == "blurry":
        try:
            blurry_dir = model_dir_for(run_dir, BLURRY)
        except CheckpointError:
            raise CheckpointError("generation.init is 'blurry' but this run has no blurry decoder (RUN/blurry/model); "
                                  "train it first: glfa train blurry -c CONFIG --store STORE", path=run_dir,
                                  field="generation.init") from None
        blurry = BlurryStart(blurry_dir, pipe.generator, info["generator"], gen)

    def decode(fmri, seeds):
        return pipe(fmri, num_inference_steps=gen.num_inference_steps, guidance_scale=gen.guidance_scale,
                    num_frames=gen.num_frames, height=gen.height, width=gen.width, seed=seeds,
                    init_latents=None if blurry is None else blurry.latents(fmri), init_strength=gen.init_strength)
    return decode, pipe.generator


def _arrays(tmp: Path, mode: str, shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """The ``decoded`` and ``truth`` arrays ``[N, f, h, w, 3]`` uint8, on disk in ``tmp`` (not in memory)."""
    return {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode=mode, dtype=np.uint8, shape=shape)
            for name in ("decoded", "truth")}


def _start_folder(tmp: Path, n: int, gen: GenerationConfig) -> None:
    """The main process's empty folder: clip folders, the arrays every process writes its rows of, the shares."""
    for part in ("decoded", "truth", SHARES):
        (tmp / part).mkdir(parents=True)
    for array in _arrays(tmp, "w+", (n, gen.num_frames, gen.height, gen.width, 3)).values():
        array.flush()  # the zero-filled files, opened "r+" by every process


def _decode_share(tmp: Path, rank: int, batches: list, run_dir: Path, subject: str, store: StudyStore,
                  model_dir: Path, info: dict, method: str, gen: GenerationConfig, device, dtype, progress: bool) -> None:
    """Decode ``batches`` ((first index, windows) each) into ``tmp``: clip files, array rows, a share record."""
    started = time.perf_counter()
    decode, generator = _decoder(run_dir, model_dir, info, gen, device, dtype)
    loaded = time.perf_counter()
    arrays = _arrays(tmp, "r+")
    items, decoding = [], 0.0
    with tqdm(total=sum(len(batch) for _, batch in batches), desc=f"generate {method} {subject}", unit="clip",
              disable=not progress, dynamic_ncols=True) as bar:
        for start, batch in batches:
            fmri = np.stack([store.fmri(subject, w) for w in batch])  # [b, n, H, W]
            tick = time.perf_counter()
            videos = decode(fmri, [gen.seed + w.index for w in batch]).numpy()  # [b, f, h, w, 3]
            decoding += time.perf_counter() - tick
            for j, (w, video) in enumerate(zip(batch, videos)):
                i = start + j
                clips = {"decoded": video, "truth": truth_clip(store.frames(w), gen.num_frames, gen.height, gen.width)}
                item = {"index": i, "window": w.index, "stimulus_id": w.stimulus_id, "onset": w.onset}
                for name, clip in clips.items():
                    arrays[name][i] = clip
                    files = {"mp4": f"{name}/{i:04d}.mp4", "gif": f"{name}/{i:04d}.gif"}
                    write_video(tmp / files["mp4"], clip, gen.fps)
                    write_gif(tmp / files["gif"], clip, gen.fps)
                    item[name] = files
                items.append(item)
            bar.update(len(batch))
    for array in arrays.values():
        array.flush()
    write_json_atomic(tmp / SHARES / f"{rank}.json", {
        "items": items, "load_seconds": loaded - started, "decode_seconds": decoding,
        "device": str(generator.device), "dtype": str(generator.dtype).removeprefix("torch."),
    })


def _finish_folder(tmp: Path, run_dir: Path, method: str, subject: str, split: str, store: StudyStore, n: int,
                   model_dir: Path, info: dict, gen: GenerationConfig, batch_size: int, processes: int,
                   started: float) -> None:
    """The main process: the processes' shares -> videos.npz, generation.json and index.json (last)."""
    shares = [json.loads((tmp / SHARES / f"{rank}.json").read_text()) for rank in range(processes)]
    items = sorted((item for share in shares for item in share["items"]), key=lambda item: item["index"])
    if [item["index"] for item in items] != list(range(n)):
        raise CheckpointError(f"the {processes} processes decoded {len(items)} of {n} clips", path=tmp)
    shutil.rmtree(tmp / SHARES)
    npy = {name: tmp / f"{name}.npy" for name in ("decoded", "truth")}
    _write_npz(tmp / VIDEOS, npy)
    for path in npy.values():
        path.unlink()
    decoding = max(share["decode_seconds"] for share in shares)  # the processes decode side by side
    main = shares[0]
    write_json_atomic(tmp / TIMING, {
        "clips": n, "seconds": time.perf_counter() - started, "load_seconds": main["load_seconds"],
        "decode_seconds": decoding, "clips_per_second": n / decoding if decoding else None,
        "batch_size": batch_size, "device": main["device"], "dtype": main["dtype"], "processes": processes,
    })
    write_json_atomic(tmp / GENERATIONS_INDEX, {
        "method": method, "kind": info["kind"], "subject": subject, "split": split,
        "subject_role": "train" if subject in info["train_subjects"] else
                        "held_out" if subject in info["held_out"] else "other",
        "seen_in_training": split == "train" and subject in info["train_subjects"],
        "model_dir": str(model_dir.resolve()), "run_dir": str(run_dir.resolve()), "store": str(store.path.resolve()),
        "store_identity": store.identity, "seed": gen.seed, "seeds": "generation.seed + window", "fps": gen.fps,
        "generation": clip_settings(gen), "count": n, "items": items,
    })
