"""Tiny studies in the real file layouts and formats, for the readers' and the pipeline's tests.

Each writer returns a :class:`FixtureStudy`: the study folder and every fMRI array it wrote
(relative path -> array), so tests compare what a reader loads with what was written.
Surface files hold the visual-ROI vertices of the atlas (8,405 for ``rois="paper"``) with a
handful of TRs; image files are small; videos are 32 x 32 mp4 clips of a few seconds.
All writers take a ``seed`` and are deterministic.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from glfa.data.video import write_video
from glfa.training.checkpoint import latest_checkpoint
from glfa.training.loop import Stage, StepOutput, TrainSettings

VIDEO_SIZE = 32


@dataclass
class FixtureStudy:
    """A written fixture study: its folder, the fMRI arrays by relative path, and layout details."""

    root: Path
    data: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def smooth_series(rng: np.random.Generator, n_trs: int, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth random float32 ``[T, *shape]``: white noise averaged over 3 TRs plus a per-element offset."""
    noise = rng.standard_normal((n_trs + 2, *shape)).astype(np.float32)
    smooth = (noise[:-2] + noise[1:-1] + noise[2:]) / 3.0
    return (smooth + rng.uniform(50, 150, size=(1, *shape)).astype(np.float32)).astype(np.float32)


def write_clip(path: Path, seconds: float, fps: float, seed: int) -> None:
    """A ``seconds``-long 32 x 32 mp4 at ``fps`` with a moving gradient (distinct per seed)."""
    n = max(1, int(round(seconds * fps)))
    t = np.arange(n)[:, None, None]
    y, x = np.mgrid[0:VIDEO_SIZE, 0:VIDEO_SIZE]
    base = (x[None] * 6 + y[None] * 2 + t * 9 + seed * 37) % 256
    frames = np.stack([base, (base + 85 + seed * 11) % 256, (255 - base) % 256], axis=-1).astype(np.uint8)
    write_video(path, frames, fps)


def _roi(rois: str):
    from glfa.surface.atlas import visual_roi

    return visual_roi(rois)


def _write_surface(path: Path, data: np.ndarray, roi, tr: float) -> None:
    from glfa.surface.cifti import write_dtseries

    path.parent.mkdir(parents=True, exist_ok=True)
    write_dtseries(path, data, roi.left, roi.right, tr)


# ----------------------------------------------------------------------------- generic


def write_generic_study(
    root: str | Path,
    *,
    subjects: tuple[str, ...] = ("01", "02"),
    tr: float = 0.8,
    clip_seconds: float = 4.0,
    gap_seconds: float = 1.6,
    fps: float = 3.0,
    tail_trs: int = 10,
    rois: str = "paper",
    seed: int = 0,
) -> FixtureStudy:
    """A generic-layout study: clips ``a``, ``b`` (train) and ``t`` (test, shown twice) in one run per subject.

    The run shows ``a, t, b, t`` at onsets ``k * (clip_seconds + gap_seconds)``;
    ``info["onsets"]`` lists (stim_file, onset) in order.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    roi = _roi(rois)
    clips = {"a.mp4": "train", "b.mp4": "train", "sub/t.mp4": "test"}
    captions = {"a.mp4": "a red square", "b.mp4": "a blue circle", "sub/t.mp4": "a test clip"}
    for i, name in enumerate(clips):
        write_clip(root / "stimuli" / name, clip_seconds, fps, seed + i)
    order = ["a.mp4", "sub/t.mp4", "b.mp4", "sub/t.mp4"]
    step = clip_seconds + gap_seconds
    onsets = [(name, round(k * step, 6)) for k, name in enumerate(order)]
    n_trs = int(math.ceil(len(order) * step / tr)) + tail_trs
    out = FixtureStudy(root, info={"onsets": onsets, "tr": tr, "n_trs": n_trs, "splits": clips})
    for subject in subjects:
        func = root / f"sub-{subject}" / "func"
        stem = f"sub-{subject}_task-movie_run-1"
        data = smooth_series(rng, n_trs, (roi.n_vertices,))
        _write_surface(func / f"{stem}_bold.dtseries.nii", data, roi, tr)
        out.data[f"sub-{subject}/func/{stem}_bold.dtseries.nii"] = data
        lines = ["onset\tduration\tstim_file\tcaption\tsplit"]
        lines += [f"{onset:g}\t{clip_seconds:g}\t{name}\t{captions[name]}\t{clips[name]}" for name, onset in onsets]
        (func / f"{stem}_events.tsv").write_text("\n".join(lines) + "\n")
    return out


# ----------------------------------------------------------------------------- Wen 2017


def write_wen_study(
    root: str | Path,
    *,
    subjects: tuple[str, ...] = ("1", "2"),
    segments: int = 2,
    tests: int = 2,
    train_repeats: int = 2,
    test_repeats: int = 2,
    movie_trs: int = 6,
    tr: float = 2.0,
    fps: float = 4.0,
    captions: bool = True,
    rois: str = "paper",
    seed: int = 0,
) -> FixtureStudy:
    """A Wen 2017 study: ``seg1..`` and ``test1..`` in the release's folders, movies of ``movie_trs`` TRs.

    Like the release, ``seg{N}`` and ``test1`` runs hold 1 + movie + 4 volumes and ``test2..`` runs
    one more leading volume (the 245 / 246 volumes of the real files). With ``captions``,
    ``captions/seg1.json`` holds one caption per frame at ``fps`` and the other stimuli one string.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    roi = _roi(rois)
    movie_seconds = movie_trs * tr
    stims = [f"seg{n}" for n in range(1, segments + 1)] + [f"test{n}" for n in range(1, tests + 1)]
    for i, stim in enumerate(stims):
        write_clip(root / "stimuli" / f"{stim}.mp4", movie_seconds, fps, seed + i)
    if captions:
        folder = root / "captions"
        folder.mkdir(parents=True, exist_ok=True)
        for stim in stims:
            text = ([f"{stim} frame {i}" for i in range(int(round(movie_seconds * fps)))]
                    if stim == "seg1" else f"a scene from {stim}")
            (folder / f"{stim}.json").write_text(json.dumps(text))
    out = FixtureStudy(root, info={"movie_trs": movie_trs, "tr": tr, "stimuli": stims})
    for subject in subjects:
        for stim in stims:
            repeats = train_repeats if stim.startswith("seg") else test_repeats
            leading = 2 if stim.startswith("test") and stim != "test1" else 1
            for r in range(1, repeats + 1):
                rel = f"subject{subject}/fmri/{stim}/cifti/{stim}_{r}_Atlas.dtseries.nii"
                data = smooth_series(rng, leading + movie_trs + 4, (roi.n_vertices,))
                _write_surface(root / rel, data, roi, tr)
                out.data[rel] = data
    return out


# ----------------------------------------------------------------------------- Fudan

#: Condition files of the fixtures: test ids (>= 100) appear in several files, train ids once.
FUDAN_CONDITIONS = {
    "webvid": [[101, 102], [1, 2, 3, 4], [102, 101]],
    "fcvid": [[1, 2], [101, 102], [102, 101], [101, 102]],
}


def fudan_labels(height: int = 24, width: int = 32) -> np.ndarray:
    """A label image: 0 background border, -1 other cortex, 1 a visual-cortex block."""
    labels = np.zeros((height, width), dtype=np.int8)
    labels[2:-2, 2:-2] = -1
    labels[8:15, 10:22] = 1
    return labels


def write_fudan_study(
    root: str | Path,
    *,
    part: str = "webvid",
    subjects: tuple[int, ...] = (1, 2),
    runs_per_condition: tuple[int, ...] = (1, 2),
    captions: str = "pickle",
    tail_trs: int = 8,
    seed: int = 0,
) -> FixtureStudy:
    """A Fudan fMRI-Video study of ``part`` (webvid: 8 s clips + 2.4 s blank; fcvid: 10 s clips, no blank).

    Subject ``subjects[i]`` has ``runs_per_condition[i]`` runs per condition file (1 like subject 1
    of the release, more like subjects 2-5). ``captions``: ``pickle`` (vid2name.npy), ``json``,
    ``tsv`` or ``none``. Each run: 3 lead-in TRs, its clips, then ``tail_trs`` TRs.
    """
    from glfa.data.sources.fudan import PARTS

    root = Path(root)
    rng = np.random.default_rng(seed)
    spec = PARTS[part]
    tr = spec.tr
    labels = fudan_labels()
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "vc_roi.npz", images=labels[None])
    conditions = FUDAN_CONDITIONS[part]
    cond_dir = root / "stimuli" / "condition"
    cond_dir.mkdir(parents=True, exist_ok=True)
    for c, ids in enumerate(conditions, start=1):
        (cond_dir / f"run{c}.txt").write_text("".join(f"{vid}\n" for vid in ids))
    ids = sorted({vid for ids in conditions for vid in ids})
    fps = 3.0 if part == "webvid" else 5.0
    for vid in ids:
        write_clip(root / "stimuli" / f"{vid}.mp4", spec.clip_seconds, fps, seed + vid)
    names = {vid: f"clip number {vid}" for vid in ids}
    if captions == "pickle":
        np.save(root / "stimuli" / "vid2name.npy", names, allow_pickle=True)
    elif captions == "json":
        (root / "stimuli" / "captions.json").write_text(json.dumps({str(k): v for k, v in names.items()}))
    elif captions == "tsv":
        lines = ["video_id\tcaption"] + [f"{k}\t{v}" for k, v in names.items()]
        (root / "stimuli" / "captions.tsv").write_text("\n".join(lines) + "\n")
    out = FixtureStudy(root, info={"part": part, "tr": tr, "conditions": conditions, "runs": {}})
    for subject, k in zip(subjects, runs_per_condition):
        sub = f"sub-{subject:04d}"
        run_ids: dict[int, list[int]] = {}
        for c, cond in enumerate(conditions):
            share = len(cond) // k
            for j in range(k):
                run_ids[c * k + j + 1] = cond[j * share:(j + 1) * share]
        for r, clip_ids in run_ids.items():
            n_trs = spec.lead_in_trs + int(math.ceil(len(clip_ids) * spec.trial_seconds / tr - 1e-9)) + tail_trs
            images = smooth_series(rng, n_trs, labels.shape) * (labels != 0)
            rel = f"processed-fmri/{sub}/hdf5/{sub}_task-video_run-{r}_space-fsLR_den-91k_bold.dtseries.h5"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(root / rel, "w") as f:
                f.create_dataset("images", data=images.astype(np.float32))
            out.data[rel] = images.astype(np.float32)
        out.info["runs"][str(subject)] = {r: [str(v) for v in clip_ids] for r, clip_ids in run_ids.items()}
    return out


# ----------------------------------------------------------------------------- a tiny decoding store

DECODING_CAPTIONS = ("a red ball rolls on grass", "a blue car drives on a road", "a green tree sways in wind",
                     "a yellow dog runs on sand", "a white boat sails on water", "a black cat sleeps on a sofa")


def write_decoding_store(path: Path, *, subjects: tuple[str, ...] = ("s1", "s2", "s3"), train_stimuli: int = 4,
                         test_stimuli: int = 2, frames: int = 6, fmri_frames: int = 2, image_size: int = 16,
                         video_size: int = 16, video_frames: int = 4, seed: int = 0) -> Path:
    """A tiny study store for the decoding stages: video, captions and planted fMRI.

    Each stimulus is a clip of ``frames`` frames of one flat colour (stimulus ``k`` gets colour
    ``k`` of a fixed palette plus a moving bright square) and one caption from
    :data:`DECODING_CAPTIONS`; every subject's response is a stimulus-specific image pattern
    (shared by subjects, shifted one pixel per subject) plus noise, so the stimulus is
    decodable from fMRI. Windows start at every frame (stride 1, overlapping). fMRI and video
    share the frame clock: window ``i`` of a stimulus covers fMRI frames and video frames
    ``i ..`` (``fmri_frames`` and ``video_frames`` of them; ``frames >= max`` of the two).
    """
    from glfa.data.store import StoreWriter
    from glfa.data.windows import Window

    rng = np.random.default_rng(seed)
    stimuli = [(f"train{k}", "train") for k in range(train_stimuli)] + [(f"test{k}", "test") for k in range(test_stimuli)]
    yy, xx = np.mgrid[:image_size, :image_size] / image_size
    mask = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.45**2
    span = max(fmri_frames, video_frames)
    windows = []
    with StoreWriter(path, image_size=image_size, video_size=(video_size, video_size), fmri_dtype="float32") as writer:
        patterns = {}
        for k, (stim, split) in enumerate(stimuli):
            colour = np.array([(37 * k) % 256, (91 * k + 60) % 256, (53 * k + 120) % 256], np.uint8)
            clip = np.broadcast_to(colour, (frames, video_size, video_size, 3)).copy()
            for t in range(frames):  # a bright square moving to the right
                x0 = (t * 2) % max(1, video_size - 4)
                clip[t, 2:6, x0:x0 + 4] = 255
            caption = DECODING_CAPTIONS[k % len(DECODING_CAPTIONS)]
            writer.add_stimulus(stim, split, clip, [caption] * frames, float(frames))
            patterns[stim] = np.sin((k + 1) * 3 * xx + k) * np.cos((k + 2) * 2 * yy)  # [H, W]
            for start in range(frames - span + 1):
                windows.append(Window(stim, split, float(start), start, start, len(windows)))
        for s, subject in enumerate(subjects):
            for stim, _ in stimuli:
                base = np.roll(patterns[stim], s, axis=1)
                series = base[None] * (1 + 0.1 * np.arange(frames))[:, None, None]
                series = series + 0.2 * rng.normal(size=(frames, image_size, image_size))
                writer.add_response(subject, stim, (series * mask).astype(np.float32))
        writer.set_mask(mask)
        writer.finish(windows, {"tr": 1.0, "fps": 1.0, "fmri_frames": fmri_frames, "video_frames": video_frames,
                                "config": {}})
    return path


@contextmanager
def recording_fmri_reads(store):
    """Within the block, ``store.fmri`` also records ``(subject, window split)`` of every read, into the yielded list."""
    read, original = [], store.fmri

    def recording_fmri(subject, window, out=None):
        read.append((subject, window.split))
        return original(subject, window, out=out)

    store.fmri = recording_fmri
    try:
        yield read
    finally:
        store.fmri = original


def kill_after_first_checkpoint(args: list[str], latest: Path, timeout: float = 240.0) -> None:
    """Start ``args`` (a Python child on one thread), SIGKILL it once ``latest`` exists, check it died of it."""
    victim = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + timeout
    while not latest.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read().decode()


def dead_pid() -> int:
    """The id of a process that has ended (for temporaries whose owner is gone)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- a tiny decoder model

# The tiny decoder's settings: 16 x 16 fMRI of 2 frames (the decoding store), tokens [8, 32].
GENERATION = {"num_inference_steps": 2, "guidance_scale": 4.0, "num_frames": 6, "height": 16, "width": 16,
              "fps": 3.0, "seed": 5}
CONFIG = {"model": {"preset": "tiny", "glfa": {"parcel_size": 8, "kernel_size": 5}}, "generation": GENERATION,
          "subjects": {"held_out": ["s3"]}}
TRAINED = "attn2"  # the UNet parameters the fake training moves


def perturbed_unet_params(unet, seed: int = 1) -> dict:
    """The UNet parameters whose names contain :data:`TRAINED`, moved by seeded noise (a stand-in for training)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {name: p.detach() + 0.2 * torch.randn(p.shape, generator=g)
            for name, p in unet.named_parameters() if TRAINED in name}


def write_cotrain_model(model_dir: Path, *, generator_dir: Path, store_dir: Path, seed: int = 0) -> Path:
    """A decoder model folder per the contract (kind cotrain) with a tiny encoder and a moved UNet."""
    import torch
    from safetensors.torch import save_file

    from glfa import backbones as B
    from glfa.config import validate_config
    from glfa.data.store import StudyStore
    from glfa.models.encoder import FmriEncoder

    config = validate_config(CONFIG)
    store = StudyStore.open(store_dir)
    torch.manual_seed(seed)
    encoder = FmriEncoder(config.model, store.image_size, store.fmri_frames).eval()
    encoder.save_pretrained(model_dir / "encoder")
    unet = B.load_video_generator(generator_dir, device="cpu").unet
    save_file({k: v.contiguous() for k, v in perturbed_unet_params(unet).items()},
              model_dir / "unet_trainable.safetensors")
    train = ["s1", "s2"]
    mean = torch.stack([torch.from_numpy(store.fmri(s, w)) for s in train for w in store.windows("train")]).mean(0)
    with torch.no_grad():
        tokens = encoder(mean[None])["tokens"][0]  # [k, c]
    save_file({"mean_fmri": mean.contiguous(), "tokens": tokens.contiguous()}, model_dir / "negative.safetensors")
    info = {"kind": "cotrain", "method": "glfa", "generator": str(generator_dir.resolve()),
            "store": str(store_dir.resolve()), "train_subjects": train, "held_out": ["s3"],
            "trainable_unet_patterns": [TRAINED], "config": config.to_dict(),
            "num_frames": store.fmri_frames, "image_size": store.image_size}
    (model_dir / "model.json").write_text(json.dumps(info, indent=2))
    return model_dir


def write_cotrain_run(root: Path) -> Path:
    """A run folder holding RUN/cotrain-glfa/model (trained on s1, s2; s3 held out) on a tiny generator and store."""
    from glfa import backbones as B

    generator_dir = B.tiny_video_generator(root / "generator", cross_attention_dim=32, sample_size=16)
    store_dir = write_decoding_store(root / "store")
    run_dir = root / "run"
    write_cotrain_model(run_dir / "cotrain-glfa" / "model", generator_dir=generator_dir, store_dir=store_dir)
    return run_dir


def write_uncaptioned_store(path: Path) -> Path:
    """A one-stimulus store (subjects s1, s2) whose frames have empty captions, as Wen 2017 before glfa caption."""
    from glfa.data.store import StoreWriter
    from glfa.data.windows import Window

    with StoreWriter(path, image_size=16, video_size=(16, 16), fmri_dtype="float32") as writer:
        writer.add_stimulus("a", "train", np.zeros((4, 16, 16, 3), np.uint8), [""] * 4, 4.0)
        for subject in ("s1", "s2"):
            writer.add_response(subject, "a", np.zeros((4, 16, 16), np.float32))
        writer.set_mask(np.ones((16, 16), bool))
        writer.finish([Window("a", "train", 0.0, 0, 0, 0)], {"tr": 1.0, "fps": 1.0, "fmri_frames": 2,
                                                            "video_frames": 4, "config": {}})
    return path


# ----------------------------------------------------------------------------- a planted run for glfa evaluate

PLANTED_SIZE, PLANTED_FRAMES, PLANTED_CLIPS = 32, 4, 10  # the planted clips: side, frames, count


def planted_clips(n: int = PLANTED_CLIPS, seed: int = 0) -> np.ndarray:
    """``n`` distinct uint8 clips [n, 4, 32, 32, 3]: smooth random colour fields (the classifier sees them apart)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, PLANTED_FRAMES, 4, 4, 3))
    return np.repeat(np.repeat(coarse, PLANTED_SIZE // 4, axis=2), PLANTED_SIZE // 4, axis=3).round().astype(np.uint8)


def write_model(run: Path, method: str, *, train: list[str], held_out: list[str], store: str | Path,
                config: dict | None = None, kind: str = "cotrain") -> Path:
    """A decoder model folder holding only model.json (what evaluation reads of it)."""
    from glfa.config import validate_config

    model_dir = run / ("lea/model" if method == "lea" else f"cotrain-{method}/model")
    model_dir.mkdir(parents=True, exist_ok=True)
    info = {"kind": kind, "method": method, "generator": "/nowhere", "store": str(store), "train_subjects": train,
            "held_out": held_out, "config": validate_config(config or {}).to_dict(), "num_frames": 2,
            "image_size": 16}
    (model_dir / "model.json").write_text(json.dumps(info))
    return model_dir


def write_generations(run: Path, method: str, subject: str, decoded: np.ndarray, truth: np.ndarray, *,
                      store: str | Path, split: str = "test", media: bool = False, fps: float = 2.0) -> Path:
    """A generations folder per the contract; the GIF files (what the report shows) only with ``media``."""
    from glfa.data.video import write_gif

    folder = run / "generations" / method / f"{subject}-{split}"
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(len(decoded)):
        item = {"index": i, "window": 3 * i, "stimulus_id": f"test{i}", "onset": float(i)}
        for key, clips in (("decoded", decoded), ("truth", truth)):
            item[key] = {"mp4": f"{key}/{i:04d}.mp4", "gif": f"{key}/{i:04d}.gif"}
            if media:
                write_gif(folder / item[key]["gif"], clips[i], fps)
        items.append(item)
    np.savez(folder / "videos.npz", decoded=decoded, truth=truth)
    model_dir = run / ("lea/model" if method == "lea" else f"cotrain-{method}/model")
    index = {"method": method, "subject": subject, "split": split, "model_dir": str(model_dir), "store": str(store),
             "seed": 0, "fps": fps, "generation": {}, "count": len(items), "items": items}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def write_planted_run(run: Path, *, store: str | Path = "/data/study", good: str = "glfa", bad: str = "lea",
                      media: bool = False) -> np.ndarray:
    """Cross-subject run "s1,s2 -> s3": ``good`` decodes every clip exactly, ``bad`` gives the next clip instead."""
    truth = planted_clips()
    for method in (good, bad):
        write_model(run, method, train=["s1", "s2"], held_out=["s3"], store=store,
                    kind="lea" if method == "lea" else "cotrain")
    write_generations(run, good, "s3", truth.copy(), truth, store=store, media=media)
    write_generations(run, bad, "s3", np.roll(truth, 1, axis=0), truth, store=store, media=media)
    return truth


def sharpen(classifier, inputs: np.ndarray, folder: Path, gain: float = 30.0) -> str:
    """Make a random tiny classifier tell inputs apart, and save it to ``folder``.

    A random ViT/VideoMAE ranks the classes almost the same for every input (its features are a
    large constant plus a small input-dependent part), so any clip would score as the truth.
    The head is re-centred on the mean feature of ``inputs`` and scaled by ``gain`` over their
    spread: logits = gain * W (h - mean h) / std h, which ranks classes by the input itself.
    """
    features = []
    hook = classifier.model.classifier.register_forward_hook(lambda m, i, o: features.append(i[0].detach()))
    classifier.probabilities(inputs)
    hook.remove()
    h = torch.cat(features).float()  # [n, d]
    head = classifier.model.classifier
    with torch.no_grad():
        head.weight.mul_(gain / h.std(0).mean())
        head.bias.copy_(-head.weight @ h.mean(0))
    classifier.model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def eval_config(classifiers: dict[str, str], **evaluation):
    """The evaluation settings with the tiny classifiers, and the tiny CLIP as stage 1's (32-d, the tiny preset's)."""
    from glfa.config import validate_config

    networks = {k: v for k, v in classifiers.items() if k != "clip_model"}
    return validate_config({"device": "cpu", "model": {"preset": "tiny"},
                            "contrastive": {"clip_model": classifiers.get("clip_model")},
                            "evaluation": {**networks, "n_ways": [2, 50], **evaluation}})


# ----------------------------------------------------------------------------- a toy stage (checkpoints, the loop)

class ToyData(Dataset):
    """y = x @ w + small noise, fixed by a seed: items depend only on their index."""

    def __init__(self, n: int = 48, dim: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, dim)).astype(np.float32)
        w = rng.normal(size=(dim, 1)).astype(np.float32)
        self.y = (self.x @ w + 0.05 * rng.normal(size=(n, 1))).astype(np.float32)
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.loaded.append(i)
        return {"x": torch.from_numpy(self.x[i]), "y": torch.from_numpy(self.y[i]), "index": i}


class ToyStage(Stage):
    """A small MLP with dropout and an RNG-drawing step, so data order and RNG both matter."""

    name = "toy"

    def __init__(self, settings: TrainSettings, *, dropout: float = 0.2, noise: float = 0.01, n: int = 48):
        self.settings = settings
        self.noise = noise
        self.dropout = dropout
        self.data = ToyData(n=n)
        self.finished: dict[str, nn.Module] = {}

    def build_models(self) -> dict[str, nn.Module]:
        net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(self.dropout), nn.Linear(16, 1))
        return {"net": net}

    def dataset(self) -> Dataset:
        return self.data

    def step(self, models, batch) -> StepOutput:
        x = batch["x"] + self.noise * torch.randn_like(batch["x"])  # [b, 6]
        loss = torch.nn.functional.mse_loss(models["net"](x), batch["y"])
        return StepOutput(loss=loss, logs={"x_mean": x.mean()})

    def finish(self, models, run_dir: Path) -> dict[str, str]:
        self.finished = models
        path = run_dir / "toy.txt"
        path.write_text("done\n")
        return {"toy": str(path)}

    def resolved_config(self):
        return {"toy": True}


def toy_settings(**values) -> TrainSettings:
    """Tiny CPU settings for the toy stage."""
    base = dict(steps=30, batch_size=8, learning_rate=1e-2, weight_decay=0.01, seed=3,
                checkpoint_every=10, log_every=5, num_workers=0)
    base.update(values)
    return TrainSettings(**base)


def final_weights(run_dir: Path, stage: str = "toy") -> dict[str, torch.Tensor]:
    """The trained weights in the newest checkpoint of a run."""
    newest = latest_checkpoint(run_dir / stage / "checkpoints")
    return load_file(str(newest / "model-net.safetensors"))
