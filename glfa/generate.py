"""``glfa generate``: decode every window of one subject and split into mp4/gif clips beside the truth.

Output (``RUN/generations/<method>/<subject>-<split>/``)::

    decoded/0000.mp4, decoded/0000.gif, ...   the decoded clips, at ``generation.fps``
    truth/0000.mp4, truth/0000.gif, ...       the stimulus frames of each window, resampled to the
                                              decoded frame count and size
    videos.npz                                {"decoded", "truth"}: uint8 [N, f, h, w, 3], index order
    generation.json                           timing (seconds, clips/s), device, batch size
    index.json                                what was decoded, with which settings; written last

Everything is written into a hidden temporary folder beside the target and renamed into place
at the end, so a killed run never leaves a half folder and an existing result is replaced only
by a complete one. Clip ``i`` of window ``w`` starts from noise seeded with
``generation.seed + w.index`` (the window's position in the store), so its decoding does not
depend on the batch size, on the other windows or on the device.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from glfa.training.checkpoint import replace_dir
from glfa.config import GenerationConfig, GlfaConfig
from glfa.data.store import StudyStore
from glfa.data.video import resample_video, write_gif, write_video
from glfa.errors import CheckpointError, DataError
from glfa.pipeline import MODEL_INFO, FmriToVideoPipeline, read_model_info
from glfa.training.checkpoint import write_json_atomic

INDEX = "index.json"
VIDEOS = "videos.npz"
TIMING = "generation.json"


#: Methods whose model folder is ``RUN/<method>/model`` (every other one is ``RUN/cotrain-<method>/model``).
OWN_FOLDER = ("lea", "blurry")
#: Suffix of the generations folder of a method started from the blurry decoder's latents.
BLURRY_SUFFIX = "+blurry"


def available_methods(run_dir: str | Path) -> list[str]:
    """The methods with a decoder model in ``run_dir``: ``cotrain-<method>/model`` names, then ``lea``, ``blurry``."""
    run_dir = Path(run_dir)
    methods = sorted(p.parent.name.removeprefix("cotrain-") for p in run_dir.glob("cotrain-*/model")
                     if (p / MODEL_INFO).is_file())
    return methods + [m for m in OWN_FOLDER if (run_dir / m / "model" / MODEL_INFO).is_file()]


def model_dir_for(run_dir: str | Path, method: str) -> Path:
    """``RUN/lea/model`` or ``RUN/blurry/model``, else ``RUN/cotrain-<method>/model``; CheckpointError if empty."""
    run_dir = Path(run_dir)
    if not method or "/" in method or method.startswith("."):
        raise DataError(f"expected a method name such as 'glfa', 'pte-v' or 'lea', got {method!r}", field="method")
    path = run_dir / method / "model" if method in OWN_FOLDER else run_dir / f"cotrain-{method}" / "model"
    if not (path / MODEL_INFO).is_file():
        found = available_methods(run_dir)
        raise CheckpointError(f"no model for method {method!r} (no {path / MODEL_INFO}); this run holds "
                              f"{found if found else 'no decoder model: run glfa train cotrain first'}",
                              path=run_dir, field="method")
    return path


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
    progress
        Show a progress bar over the clips.
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
    windows = _subject_windows(store, subject, split)
    out = run_dir / "generations" / name / f"{subject}-{split}"
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale)  # left by a killed run
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        _generate_into(tmp, run_dir, name, subject, split, store, windows, model_dir, info, gen,
                       device, dtype, batch_size, progress)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


class BlurryStart:
    """The blurry decoder's clips and initial latents at the generation's frame count and size.

    The decoder predicts latents of the stored window (``[c, m, h', w']``); when the generation
    asks for another frame count or size, its VAE-decoded clip is resampled as the ground truth
    is (:func:`truth_clip`) and, for a start, encoded again.
    """

    def __init__(self, model_dir: Path, generator, generator_path: str, gen: GenerationConfig):
        from glfa.baselines.blurry import BlurryDecoder

        info = read_model_info(model_dir)
        if info["generator"] != generator_path:
            raise CheckpointError(f"the blurry decoder predicts latents of the generator {info['generator']}, but "
                                  f"the method decodes with {generator_path}", path=model_dir / MODEL_INFO,
                                  field="generator")
        self.decoder = BlurryDecoder.load(model_dir, generator.device)
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
            blurry_dir = model_dir_for(run_dir, "blurry")
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


def _generate_into(tmp: Path, run_dir: Path, method: str, subject: str, split: str, store: StudyStore,
                   windows: list, model_dir: Path, info: dict, gen: GenerationConfig, device, dtype,
                   batch_size: int, progress: bool) -> None:
    """Write the whole generations folder into ``tmp`` (index.json last); ``method`` names the folder."""
    started = time.perf_counter()
    decode, generator = _decoder(run_dir, model_dir, info, gen, device, dtype)
    loaded = time.perf_counter()
    for part in ("decoded", "truth"):
        (tmp / part).mkdir(parents=True)
    shape = (len(windows), gen.num_frames, gen.height, gen.width, 3)
    npy = {name: tmp / f"{name}.npy" for name in ("decoded", "truth")}
    arrays = {name: np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
              for name, path in npy.items()}  # [N, f, h, w, 3] on disk, not in memory
    items, decoding = [], 0.0
    with tqdm(total=len(windows), desc=f"generate {method} {subject}-{split}", unit="clip",
              disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
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
    del arrays
    _write_npz(tmp / VIDEOS, npy)
    for path in npy.values():
        path.unlink()
    seconds = time.perf_counter() - started
    write_json_atomic(tmp / TIMING, {
        "clips": len(windows), "seconds": seconds, "load_seconds": loaded - started,
        "decode_seconds": decoding, "clips_per_second": len(windows) / decoding if decoding else None,
        "batch_size": batch_size, "device": str(generator.device), "dtype": str(generator.dtype).removeprefix("torch."),
    })
    write_json_atomic(tmp / INDEX, {
        "method": method, "kind": info["kind"], "subject": subject, "split": split,
        "subject_role": "train" if subject in info["train_subjects"] else
                        "held_out" if subject in info["held_out"] else "other",
        "seen_in_training": split == "train" and subject in info["train_subjects"],
        "model_dir": str(model_dir.resolve()), "run_dir": str(run_dir.resolve()), "store": str(store.path.resolve()),
        "seed": gen.seed, "seeds": "generation.seed + window", "fps": gen.fps,
        "generation": clip_settings(gen), "count": len(items), "items": items,
    })
