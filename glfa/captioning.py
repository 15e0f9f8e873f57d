"""Per-frame captions for datasets that ship none (Wen 2017), written by BLIP-2, resumable.

Output folder (``STORE/cache/captions`` by default)::

    <stimulus id>.json            a JSON list of strings: one caption per stored frame (final)
    <stimulus id>.partial.jsonl   work in progress: a header line, then one line per captioned batch
    index.json                    {"fps", "model", "stimuli": {id: number of frames}} of the finished ones

A store reads ``STORE/cache/captions/<stimulus id>.json`` for every stimulus it was prepared
without captions (:class:`~glfa.data.store.StudyStore`), so captioning a store is enough; the
same files are also what the Wen 2017 reader reads from ``ROOT/captions/`` when preparing
again. Captions are at the store's frame rate (``index.json`` records it).

Resuming: a finished stimulus (its ``.json`` exists and is valid) is skipped without reading its
video; a stimulus interrupted midway continues after the last batch that reached the disk (each
batch line is flushed and fsynced; a torn last line is dropped). Final files are written
atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from glfa.data.captions import INDEX, caption_path, read_captions
from glfa.data.store import StudyStore
from glfa.errors import DataError
from glfa.io import write_bytes_atomic

__all__ = ["caption_frames", "caption_videos", "caption_store"]


def _partial_path(out_dir: Path, stimulus_id: str) -> Path:
    """The work-in-progress file of a stimulus."""
    return caption_path(out_dir, stimulus_id).with_suffix(".partial.jsonl")


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically (:func:`glfa.io.write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    _write_text(path, json.dumps(data, ensure_ascii=False, indent=1))


def caption_frames(model, frames: np.ndarray, batch_size: int = 16) -> list[str]:
    """One caption per frame of ``frames`` (uint8 ``[f, h, w, 3]``), ``batch_size`` frames at a time.

    ``model`` is a :class:`glfa.backbones.Captioner` (anything with ``caption(frames) -> list[str]``).
    """
    if np.ndim(frames) != 4:
        raise DataError(f"expected frames [f, h, w, 3], got shape {np.shape(frames)}", field="frames")
    out: list[str] = []
    for start in range(0, len(frames), batch_size):
        out.extend(model.caption(frames[start:start + batch_size]))
    return out


def _resume(partial: Path, n_frames: int) -> list[str]:
    """Captions already in a partial file for a video of ``n_frames`` frames (rewritten without a torn tail)."""
    if not partial.is_file():
        return []
    lines = partial.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("n_frames") != n_frames:
        partial.unlink()  # another video, or a torn header: start over
        return []
    done: list[str] = []
    kept = [lines[0]]
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a line torn by a kill: everything after it is dropped
        if record.get("start") != len(done) or not isinstance(record.get("captions"), list):
            break
        done.extend(record["captions"])
        kept.append(line)
    if len(kept) != len(lines):
        _write_text(partial, "".join(line + "\n" for line in kept))
    return done


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` and make it durable before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _caption_one(model, stimulus_id: str, frames: np.ndarray, out_dir: Path, batch_size: int) -> list[str]:
    """Caption one video, batch by batch through its partial file; returns every frame's caption."""
    n = len(frames)
    if n == 0:
        raise DataError(f"stimulus {stimulus_id!r} has no frames", field="video")
    partial = _partial_path(out_dir, stimulus_id)
    done = _resume(partial, n)
    if not partial.is_file():
        _write_text(partial, json.dumps({"stimulus_id": stimulus_id, "n_frames": n}) + "\n")
    for start in range(len(done), n, batch_size):
        captions = model.caption(frames[start:start + batch_size])
        _append_line(partial, {"start": start, "captions": captions})
        done.extend(captions)
    return done


def caption_videos(
    videos: Mapping[str, Any],
    out_dir: str | Path,
    model,
    *,
    fps: float | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Path]:
    """Caption every frame of every video into ``out_dir``, skipping the stimuli already done.

    Parameters
    ----------
    videos : Mapping[str, array]
        Stimulus id -> uint8 frames ``[f, h, w, 3]``; a value is only read when its stimulus is
        not finished yet, so a lazy mapping (reading from the store) costs nothing for those.
    out_dir : str or Path
        Output folder (created).
    model
        A :class:`glfa.backbones.Captioner`.
    fps : float, optional
        Frame rate of the videos, recorded in ``index.json``.
    batch_size : int
        Frames per BLIP-2 call; also the granularity of resuming.
    progress : bool
        Show a progress bar over stimuli.

    Returns
    -------
    dict[str, Path]
        Stimulus id -> its captions file.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise DataError(f"expected a batch size >= 1, got {batch_size}", field="batch_size")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index["model"] = str(getattr(model, "path", None) or type(model).__name__)
    if fps is not None:
        index["fps"] = fps
    index.setdefault("stimuli", {})
    written: dict[str, Path] = {}
    for stimulus_id in tqdm(list(videos), desc="captioning", unit="stimulus", disable=not progress):
        path = caption_path(out_dir, stimulus_id)
        if path.is_file():
            try:
                index["stimuli"][stimulus_id] = len(read_captions(path))
                written[stimulus_id] = path
                continue
            except DataError:
                path.unlink()  # a damaged result: caption again
        captions = _caption_one(model, stimulus_id, np.asarray(videos[stimulus_id]), out_dir, batch_size)
        _write_json(path, captions)
        _partial_path(out_dir, stimulus_id).unlink(missing_ok=True)
        index["stimuli"][stimulus_id] = len(captions)
        _write_json(index_path, index)
        written[stimulus_id] = path
    _write_json(index_path, index)
    return written


class _StoreVideos(Mapping):
    """Stimulus id -> the store's frames, read only when asked for."""

    def __init__(self, store):
        self._store = store
        self._ids = list(store.stimuli)

    def __getitem__(self, stimulus_id: str) -> np.ndarray:
        return self._store.video(stimulus_id)

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def caption_store(store, model, *, out_dir: str | Path | None = None, batch_size: int = 16,
                  progress: bool = True) -> Path:
    """Caption every stored frame of a study store (a folder or an open ``StudyStore``); returns the folder.

    The captions go to ``out_dir`` (default ``STORE/cache/captions``), one file per stimulus.
    """
    if not isinstance(store, StudyStore):
        store = StudyStore.open(store)
    out = Path(out_dir) if out_dir is not None else store.cache_dir / "captions"
    caption_videos(_StoreVideos(store), out, model, fps=store.fps, batch_size=batch_size, progress=progress)
    return out
