"""Write a simulated multi-subject video-fMRI study in the generic (BIDS-like) layout.

Layout written by :func:`simulate_study`::

    OUT/study.json                          config, seed, glfa version, sizes
    OUT/stimuli/<clip>.mp4                  the clips (H.264)
    OUT/sub-<id>/func/sub-<id>_task-video_run-<r>_bold.dtseries.nii   CIFTI-2 over the ROI vertices
    OUT/sub-<id>/func/sub-<id>_task-video_run-<r>_events.tsv          onset, duration, stim_file, caption, split
    OUT/truth/clips.json                    every clip: category, photo, crop, motion, split, caption
    OUT/truth/subjects.json                 every subject's gain, delay, noise level, deformation size
    OUT/truth/template.npz                  the template brain's tuning, embeddings, parcels, flat coordinates
    OUT/truth/sub-<id>.npz                  displacement [V, 2] mm, tuning params [V, P], mixing [P, P], gain field, noise sd,
                                            noise-free BOLD of every run (``bold_run-<r>``, [T, V] float16)

The same config and seed give byte-identical files. The study is built in a temporary folder
beside ``OUT`` and renamed into place at the end, so ``OUT`` is either absent or complete.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from glfa import __version__
from glfa.config import GlfaConfig
from glfa.data.synthetic.cortex import cortex_geometry, encode, frame_features, make_template, stack_features
from glfa.data.synthetic.design import make_design, sampling_matrix
from glfa.data.synthetic.stimuli import CATEGORIES, MOTIONS, make_clips, render_clip
from glfa.data.synthetic.subjects import draw_subject, mix_parcels, parcellate, private_tuning, resample_params
from glfa.data.video import write_video
from glfa.errors import DataError
from glfa.io import install_dir

__all__ = ["simulate_study", "write_npz", "TASK"]

TASK = "video"
STUDY_FILE = "study.json"

# Independent random streams: numpy.random.default_rng([seed, stream, index]).
_STIMULI, _TEMPLATE, _DESIGN, _SUBJECT, _NOISE = range(1, 6)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed .npz with fixed zip metadata (byte-reproducible, no pickle)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            array = np.asarray(arrays[name])
            if array.dtype == object:
                raise TypeError(f"{path}: array {name!r} has dtype object; refusing to pickle it")
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(info, buffer.getvalue())


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_events(path: Path, rows: list[tuple[float, float, str, str, str]]) -> None:
    lines = ["onset\tduration\tstim_file\tcaption\tsplit"]
    lines += [f"{onset:.3f}\t{duration:.3f}\t{stim}\t{caption}\t{split}" for onset, duration, stim, caption, split in rows]
    path.write_text("\n".join(lines) + "\n")


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def simulate_study(
    out: str | Path, config: GlfaConfig, seed: int | None = None, *, overwrite: bool = False, progress: bool = False
) -> Path:
    """Simulate the study described by ``config.simulation`` (seed: ``seed`` or the config's) into ``out``.

    Returns ``out``. An existing non-empty ``out`` is an error unless ``overwrite``.
    """
    sim = config.simulation
    seed = sim.seed if seed is None else int(seed)
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise DataError("the output folder exists and is not empty; choose another folder or remove it", path=out)
    # One BLAS thread: the same numbers on every machine (byte-identical output), and no
    # oversubscription when several processes share the cores.
    with install_dir(out) as tmp, threadpool_limits(limits=1):
        _simulate_into(tmp, config, seed, progress)
    return out


def _simulate_into(root: Path, config: GlfaConfig, seed: int, progress: bool) -> None:
    """Write the whole study into ``root`` (an empty folder)."""
    from glfa.surface.cifti import write_dtseries

    sim = config.simulation
    n_frames = max(1, int(round(sim.clip_seconds * sim.fps)))

    # Stimuli: render, write, and extract the low-level features the encoding model reads.
    clips = make_clips(sim.n_categories, sim.train_clips_per_category, sim.test_clips_per_category, _rng(seed, _STIMULI))
    (root / "stimuli").mkdir()
    features = []
    for clip in clips:
        frames = render_clip(clip, n_frames, sim.frame_size)  # [f, s, s, 3]
        write_video(root / "stimuli" / f"{clip.clip_id}.mp4", frames, sim.fps)
        features.append(frame_features(frames))
    motions = list(MOTIONS)
    motion_of = np.array([motions.index(c.motion) for c in clips])
    all_features = stack_features(features)  # every clip's frames, clip after clip
    clip_of_frame = np.repeat(np.arange(len(clips)), n_frames)

    # The template brain and the design shared by every subject.
    geometry = cortex_geometry(config.data.rois)
    template = make_template(geometry, np.array([c.category for c in clips]), sim.n_categories, len(motions),
                             _rng(seed, _TEMPLATE))
    parcels = parcellate(geometry)
    train = [i for i, c in enumerate(clips) if c.split == "train"]
    test = [i for i, c in enumerate(clips) if c.split == "test"]
    runs = make_design(train, test, test_repeats=sim.test_repeats, clips_per_run=sim.clips_per_run,
                       clip_seconds=sim.clip_seconds, blank_seconds=sim.blank_seconds, tr=sim.tr,
                       rng=_rng(seed, _DESIGN))

    subject_ids = [f"{i + 1:02d}" for i in range(sim.n_subjects)]
    summaries = {}
    iterator = enumerate(subject_ids)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(subject_ids), desc="simulating subjects", unit="subject")
    for i, sid in iterator:
        subject = draw_subject(sid, geometry, parcels, sim.subject_difference, sim.deformation_mm,
                               _rng(seed, _SUBJECT, i))
        params = resample_params(geometry, template.params, subject.displacement)
        params = private_tuning(geometry, params, template.columns, sim.subject_difference, _rng(seed, _SUBJECT, 1000 + i))
        neural = encode(template, params, all_features, clip_of_frame, motion_of[clip_of_frame])  # [F, V]
        neural = mix_parcels(neural, parcels, subject.mixing) * (subject.gain * subject.gain_field).astype(np.float32)
        bold = []
        for run in runs:
            weights = sampling_matrix(run, n_frames, sim.fps, sim.clip_seconds, sim.tr, subject.delay)
            rows = (np.asarray(run.clips)[:, None] * n_frames + np.arange(n_frames)).ravel()  # the run's frames
            bold.append((weights.astype(np.float32) @ neural[rows]).astype(np.float32))  # [T, V]
        reference = float(np.median(np.concatenate(bold).std(axis=0))) / subject.gain
        noise_sd = reference / sim.snr * subject.noise_factor
        noise_rng = _rng(seed, _NOISE, i)
        func = root / f"sub-{sid}" / "func"
        func.mkdir(parents=True)
        for run, clean in zip(runs, bold):
            noisy = clean + noise_rng.normal(0.0, noise_sd, size=clean.shape).astype(np.float32)
            stem = func / f"sub-{sid}_task-{TASK}_run-{run.run}"
            write_dtseries(Path(f"{stem}_bold.dtseries.nii"), noisy, geometry.left, geometry.right, sim.tr)
            _write_events(Path(f"{stem}_events.tsv"), [
                (onset, sim.clip_seconds, f"{clips[k].clip_id}.mp4", clips[k].caption, clips[k].split)
                for k, onset in zip(run.clips, run.onsets)
            ])
        truth = root / "truth"
        truth.mkdir(exist_ok=True)
        write_npz(truth / f"sub-{sid}.npz", {
            "displacement": subject.displacement.astype(np.float32),
            "params": params.astype(np.float32),
            "mixing": subject.mixing.astype(np.float32),
            "gain_field": subject.gain_field.astype(np.float32),
            "noise_sd": np.float32(noise_sd),
            **{f"bold_run-{run.run}": clean.astype(np.float16) for run, clean in zip(runs, bold)},
        })
        summaries[sid] = {**subject.summary(), "noise_sd": round(noise_sd, 6)}

    truth = root / "truth"
    write_npz(truth / "template.npz", {
        "params": template.params.astype(np.float32),
        "columns": np.array(template.columns),
        "category_embedding": template.category_embedding.astype(np.float32),
        "clip_embedding": template.clip_embedding.astype(np.float32),
        "motion_embedding": template.motion_embedding.astype(np.float32),
        "flat_xy_mm": geometry.xy.astype(np.float32),
        "hemisphere": geometry.hemisphere,
        "areas": geometry.areas.astype("U8"),
        "parcel": parcels.parcel.astype(np.int32),
        "parcel_neighbours": parcels.neighbours.astype(np.int32),
        "left": geometry.left,
        "right": geometry.right,
    })
    _write_json(truth / "clips.json", {
        "categories": [c.name for c in CATEGORIES[: sim.n_categories]],
        "motions": motions,
        "clips": [c.to_dict() | {"category_name": CATEGORIES[c.category].name} for c in clips],
    })
    _write_json(truth / "subjects.json", summaries)
    _write_json(root / STUDY_FILE, {
        "glfa_version": __version__,
        "kind": "glfa synthetic study",
        "seed": seed,
        "simulation": sim.model_dump(mode="json") | {"seed": seed},
        "rois": config.data.rois,
        "task": TASK,
        "subjects": subject_ids,
        "n_vertices": geometry.n_vertices,
        "n_stimuli": len(clips),
        "frames_per_clip": n_frames,
        "runs": [{"run": r.run, "split": r.split, "n_trs": r.n_trs, "clips": [clips[k].clip_id for k in r.clips]}
                 for r in runs],
    })
