"""Feature caches in the store: frozen-encoder outputs computed once, resumable, reused by every epoch.

Training never runs a frozen encoder on the same input twice: CLIP embeddings of every stored
frame and caption (stage 1) and VAE latents of every window of a split (stage 2) are computed
once into ``STORE/cache/features/<name>-<key>/`` and read back by later calls and runs.

Layout of one cache folder::

    chunk-00000.npz ...   rows [64 k, 64 (k + 1)) of every array (uncompressed npz, written atomically)
    meta.json             written last, when every chunk is present: the key's inputs and the layout

The key is the sha256 of what decides the values: the store's creation stamp, the model's
identity (its folder and weight files, or ``standin`` and the width), the settings that change
values, the cache format version and the chunk layout. A build killed midway resumes from the
chunks on disk; a chunk of the wrong shape or dtype, unreadable or holding non-finite values is
detected and computed again, never used.

A cached value never depends on how rows fall into chunks: frozen models see their inputs in
:class:`FixedBatches`, batches at fixed positions of the whole input list, so a resumed build holds
the same bits as an uninterrupted one (padding to the longest caption of a batch, or a kernel
chosen by the batch size, would otherwise change the floats).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from glfa.errors import StoreError
from glfa.io import write_bytes_atomic, write_json_atomic

__all__ = ["FORMAT_VERSION", "CHUNK_ROWS", "ArraySpec", "cached_arrays", "cache_key", "FixedBatches", "ClipFeatures",
           "clip_features", "frame_view", "caption_view", "LatentFeatures", "vae_latents"]

FORMAT_VERSION = 2  # 2: values computed in FixedBatches
CHUNK_ROWS = 64
META = "meta.json"
FEATURES_DIR = "features"
# Model batch sizes of the caches (FixedBatches): fixed, so that no value depends on the chunking.
EMBED_BATCH_ROWS = 64  # frame rows (times the views) per CLIP image batch
EMBED_BATCH_TEXTS = 64  # distinct caption texts per CLIP text batch
EMBED_BATCH_WINDOWS = 4  # windows per VAE batch
_IMAGE_TAG, _TEXT_TAG = 1, 2  # keep the crop and caption random streams apart


# ----------------------------------------------------------------------------- the generic chunked cache


@dataclass(frozen=True)
class ArraySpec:
    """One cached array: the shape of a row and its dtype (every array of a cache has the same rows)."""

    row_shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        """JSON data for the key and ``meta.json``."""
        return {"row_shape": list(self.row_shape), "dtype": str(np.dtype(self.dtype))}


def cache_key(data: dict[str, Any]) -> str:
    """sha256 (hex) of JSON data, keys sorted."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _chunk_path(folder: Path, k: int) -> Path:
    return folder / f"chunk-{k:05d}.npz"


def _read_chunk(path: Path, rows: int, specs: dict[str, ArraySpec]) -> dict[str, np.ndarray] | None:
    """The arrays of a chunk file when it is complete and exactly as specified, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if set(npz.files) != set(specs):
                return None
            out = {name: npz[name] for name in specs}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        return None
    for name, spec in specs.items():
        a = out[name]
        if a.shape != (rows, *spec.row_shape) or a.dtype != np.dtype(spec.dtype):
            return None
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return None
    return out


def _write_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def _remove_temporaries(folder: Path) -> None:
    """Delete temp files of chunk writes that a killed run left behind (``.chunk-*.tmp-<pid>``)."""
    for path in folder.glob(".chunk-*.tmp-*"):
        path.unlink(missing_ok=True)


def cached_arrays(
    folder: str | Path,
    *,
    rows: int,
    specs: dict[str, ArraySpec],
    compute: Callable[[int, int], dict[str, np.ndarray]],
    info: dict[str, Any] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
    desc: str = "features",
    build: bool = True,
    missing: str = "the cache is not built",
) -> dict[str, np.ndarray]:
    """Arrays ``[rows, *row_shape]`` kept in ``folder`` as chunk files; computed only where missing.

    Parameters
    ----------
    folder
        The cache folder (named by the caller from a key that covers everything deciding the values).
    rows
        Rows of every array.
    specs
        Array name -> :class:`ArraySpec`.
    compute
        ``compute(start, stop)`` -> name -> array ``[stop - start, *row_shape]`` (cast to the spec's dtype
        here). Each chunk's rows are computed in one call, so a result must not depend on the chunking.
    info
        JSON data recorded in ``meta.json`` (what the key was made of).
    chunk_rows
        Rows per chunk file.
    progress
        Show a tqdm bar over the rows still to compute.
    desc
        The bar's label.
    build
        False: a cache that is not complete raises StoreError (``missing`` says what to run) instead
        of computing.
    """
    folder = Path(folder)
    n_chunks = (rows + chunk_rows - 1) // chunk_rows
    bounds = [(k * chunk_rows, min(rows, (k + 1) * chunk_rows)) for k in range(n_chunks)]
    out = {name: np.empty((rows, *spec.row_shape), dtype=spec.dtype) for name, spec in specs.items()}
    todo = []
    for k, (a, b) in enumerate(bounds):
        chunk = _read_chunk(_chunk_path(folder, k), b - a, specs)
        if chunk is None:
            todo.append(k)
            continue
        for name, array in chunk.items():
            out[name][a:b] = array
    if not todo and (folder / META).is_file():
        return out
    if todo and not build:
        raise StoreError(f"{missing} ({len(todo)} of {n_chunks} chunks missing in {folder})", path=folder)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(folder)
    (folder / META).unlink(missing_ok=True)  # a chunk was bad: the cache is incomplete until rebuilt
    done_rows = rows - sum(bounds[k][1] - bounds[k][0] for k in todo)
    with tqdm(total=rows, initial=done_rows, desc=desc, unit="row", disable=not progress, dynamic_ncols=True) as bar:
        for k in todo:
            a, b = bounds[k]
            result = compute(a, b)
            chunk = {}
            for name, spec in specs.items():
                array = np.ascontiguousarray(np.asarray(result[name]).astype(spec.dtype, copy=False))
                if array.shape != (b - a, *spec.row_shape):
                    raise ValueError(f"{desc}: {name} of rows {a}..{b} has shape {array.shape}, "
                                     f"expected {(b - a, *spec.row_shape)}")
                if array.dtype.kind == "f" and not np.isfinite(array).all():
                    raise FloatingPointError(f"{desc}: {name} of rows {a}..{b} holds non-finite values "
                                             f"(out of the {spec.dtype} range?)")
                chunk[name] = out[name][a:b] = array
            _write_chunk(_chunk_path(folder, k), chunk)
            bar.update(b - a)
    write_json_atomic(folder / META, {
        "format_version": FORMAT_VERSION, "rows": rows, "chunk_rows": chunk_rows, "chunks": n_chunks,
        "arrays": {name: spec.to_json() for name, spec in specs.items()}, "info": info or {},
    })
    return out


class FixedBatches:
    """Results of a batched function over a list of items, computed in batches at fixed positions.

    Item ``i`` is always computed in batch ``i // size`` together with the same other items,
    whichever items a caller asks for and in whatever groups, so its result is the same bits in
    every run. Each batch is computed once and kept until :meth:`forget_before` drops it.

    Parameters
    ----------
    fn
        ``fn(start, stop)`` -> array ``[stop - start, ...]``: the results of items ``start .. stop - 1``.
    count
        Number of items.
    size
        Items per batch.
    """

    def __init__(self, fn: Callable[[int, int], np.ndarray], *, count: int, size: int):
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.fn, self.count, self.size = fn, int(count), int(size)
        self._done: dict[int, np.ndarray] = {}

    def _batch(self, k: int) -> np.ndarray:
        if k not in self._done:
            start = k * self.size
            self._done[k] = np.asarray(self.fn(start, min(self.count, start + self.size)))
        return self._done[k]

    def take(self, indices) -> np.ndarray:
        """The results of ``indices`` (any order, repeats allowed), stacked ``[len(indices), ...]``."""
        return np.stack([self._batch(i // self.size)[i % self.size] for i in np.asarray(indices, dtype=np.int64)])

    def forget_before(self, index: int) -> None:
        """Drop the batches that hold only items below ``index`` (no later call asks for them)."""
        for k in [k for k in self._done if (k + 1) * self.size <= index]:
            del self._done[k]


def _cache_folder(store, name: str, key: str) -> Path:
    return store.cache_dir / FEATURES_DIR / f"{name}-{key[:16]}"


def _files_identity(folder: Path) -> dict[str, Any]:
    """A model folder by its resolved path and the size and mtime of its config and weight files."""
    folder = Path(folder).resolve()
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin", ".txt"):
            stat = path.stat()
            files[str(path.relative_to(folder))] = [stat.st_size, stat.st_mtime_ns]
    return {"path": str(folder), "files": files}


# ----------------------------------------------------------------------------- the store's frame table


def _frame_table(store):
    """The store's frame table (HDF5 dataset ``video/frames``, ``[F, h, w, 3]`` uint8) and its captions."""
    return store.frame_table(), store.all_captions


# ----------------------------------------------------------------------------- CLIP features


@dataclass
class ClipFeatures:
    """Frozen CLIP embeddings of every row of the store's frame table, ``V`` views each.

    ``image[r, 0]`` embeds frame ``r`` itself and ``image[r, v]`` (v >= 1) a random crop of it;
    ``text[r, 0]`` embeds frame ``r``'s caption and ``text[r, v]`` an augmented caption.
    Unit rows, float16.
    """

    image: torch.Tensor  # [F, V, D]
    text: torch.Tensor  # [F, V, D]
    key: str
    folder: Path

    @property
    def dim(self) -> int:
        """D: the CLIP width."""
        return int(self.image.shape[-1])

    @property
    def views(self) -> int:
        """V: views per frame and per caption."""
        return int(self.image.shape[1])


def _view_seed(tag: int, seed: int, row: int, view: int) -> int:
    """A 64-bit seed for one (frame row, view): independent of how rows are chunked."""
    return int(np.random.SeedSequence([tag, seed % 2**64, row, view]).generate_state(1, np.uint64)[0])


def frame_view(frame: np.ndarray | torch.Tensor, row: int, view: int, *, crop_scale: float, seed: int) -> torch.Tensor:
    """View ``view`` of frame-table row ``row`` (``[h, w, 3]`` uint8): the frame itself for view 0, else a crop."""
    frame = torch.as_tensor(np.asarray(frame))
    if view == 0:
        return frame
    from glfa.augment import random_crop

    generator = torch.Generator().manual_seed(_view_seed(_IMAGE_TAG, seed, row, view))
    return random_crop(frame[None], crop_scale, generator)[0]


def caption_view(caption: str, row: int, view: int, *, swap_prob: float, synonym_prob: float, seed: int) -> str:
    """View ``view`` of frame-table row ``row``'s caption: itself for view 0, else word swaps and synonyms."""
    if view == 0:
        return caption
    from glfa.augment import augment_caption

    rng = np.random.default_rng(_view_seed(_TEXT_TAG, seed, row, view))
    return augment_caption(caption, rng, swap_prob, synonym_prob)


def _clip_identity(clip, dim: int) -> dict[str, Any]:
    """What identifies a CLIP model in a cache key, for a loaded backbone or a folder / hub id / None."""
    from glfa.backbones import STANDIN, StandInClip, resolve_pretrained

    if isinstance(clip, StandInClip):
        return {"model": STANDIN, "dim": clip.dim, "dtype": "float32"}
    if clip is None or isinstance(clip, (str, Path)):
        if clip is None or str(clip) == STANDIN:
            return {"model": STANDIN, "dim": dim, "dtype": "float32"}
        folder = resolve_pretrained(clip, expected="a transformers CLIPModel folder", required=("config.json",))
        return {"model": _files_identity(folder), "dim": dim, "dtype": "float32"}
    if getattr(clip, "path", None) is None:
        raise StoreError(f"cannot key a feature cache on a {type(clip).__name__} without a folder (.path)",
                         field="clip")
    return {"model": _files_identity(clip.path), "dim": int(clip.dim), "dtype": str(clip.dtype).removeprefix("torch.")}


def clip_features(store, clip, *, config, progress: bool = True, build: bool = True,
                  device: str | torch.device | None = None, chunk_rows: int = CHUNK_ROWS,
                  batch_rows: int = EMBED_BATCH_ROWS) -> ClipFeatures:
    """CLIP embeddings of every frame and caption of ``store``, computed once into ``STORE/cache/features``.

    Parameters
    ----------
    store
        An open :class:`~glfa.data.store.StudyStore`.
    clip
        A loaded CLIP (:func:`glfa.backbones.load_clip`), or what to load when something must be
        computed: a folder or hub id, or None / ``"standin"`` for the stand-in of width
        ``config.model.heads.clip_dim``. Nothing is loaded when the cache is complete.
    config
        The experiment config: ``contrastive.augment_views``, ``crop_scale``, ``word_swap_prob``,
        ``synonym_prob`` and ``seed`` decide the views; ``model.heads.clip_dim`` the width.
    progress
        Show a progress bar while computing.
    build
        False: raise StoreError instead of computing a missing cache.
    device
        Where a CLIP given by name is loaded (default: CUDA when present).
    chunk_rows
        Frames per chunk file.
    batch_rows
        Frames (each with its views) per image batch of the model, at fixed positions of the frame
        table (:class:`FixedBatches`); part of the key.

    Returns
    -------
    ClipFeatures
        ``image`` and ``text`` float16 ``[F, V, D]`` (F = ``store.num_video_frames``).
    """
    section = config.contrastive
    dim = int(config.model.heads.clip_dim)
    frames, captions = _frame_table(store)
    empty = sorted({sid for sid in store.stimuli if not all(c.strip() for c in store.video_captions(sid))})
    if empty:
        raise StoreError(f"{len(empty)} stimulus clip(s) have no captions (e.g. {empty[:3]}); stage 1 contrasts "
                         "fMRI with caption embeddings: run `glfa caption STORE --model BLIP2_DIR` first",
                         path=store.path, field="video/captions")
    identity = _clip_identity(clip, dim)
    if identity["dim"] != dim:
        raise StoreError(f"the CLIP model embeds in {identity['dim']} dimensions but model.heads.clip_dim is {dim}",
                         field="model.heads.clip_dim")
    views = int(section.augment_views)
    settings = {"views": views, "crop_scale": section.crop_scale, "word_swap_prob": section.word_swap_prob,
                "synonym_prob": section.synonym_prob, "seed": section.seed}
    rows = len(captions)
    info = {"kind": "clip", "format_version": FORMAT_VERSION, "store_created": store.manifest.get("created"),
            "captions": hashlib.sha256("\n".join(captions).encode()).hexdigest(), "model": identity,
            "settings": settings, "chunk_rows": chunk_rows, "batch_rows": batch_rows, "rows": rows}
    key = cache_key(info)
    folder = _cache_folder(store, "clip", key)
    loaded: list[Any] = []

    def backbone():
        if not loaded:
            if isinstance(clip, (str, Path)) or clip is None:
                from glfa.backbones import load_clip

                loaded.append(load_clip(clip, device=device, dim=dim))
            else:
                loaded.append(clip)
        return loaded[0]

    def embed_views(start: int, stop: int) -> np.ndarray:  # item r * views + v: view v of frame row r
        first = start // views
        block = frames[first:(stop - 1) // views + 1]  # [r, h, w, 3] uint8, one read
        crops = [frame_view(block[i // views - first], i // views, i % views, crop_scale=section.crop_scale,
                            seed=section.seed) for i in range(start, stop)]
        return backbone().embed_images(torch.stack(crops)).float().cpu().numpy()

    images = FixedBatches(embed_views, count=rows * views, size=batch_rows * views)

    @functools.cache
    def caption_texts() -> tuple[np.ndarray, FixedBatches]:
        """Per item, its text's place among the distinct texts (in order of first use), and their batches."""
        texts = [caption_view(captions[r], r, v, swap_prob=section.word_swap_prob,
                              synonym_prob=section.synonym_prob, seed=section.seed)
                 for r in range(rows) for v in range(views)]
        distinct = list(dict.fromkeys(texts))  # each distinct text is embedded once
        place = {text: i for i, text in enumerate(distinct)}
        embed = FixedBatches(lambda a, b: backbone().embed_texts(distinct[a:b]).float().cpu().numpy(),
                             count=len(distinct), size=EMBED_BATCH_TEXTS)
        return np.array([place[t] for t in texts], dtype=np.int64), embed

    def compute(a: int, b: int) -> dict[str, np.ndarray]:
        items = np.arange(a * views, b * views)
        image = images.take(items).reshape(b - a, views, -1)
        images.forget_before(b * views)
        text_item, text_embeddings = caption_texts()
        text = text_embeddings.take(text_item[items]).reshape(b - a, views, -1)
        return {"image": image, "text": text}

    specs = {"image": ArraySpec((views, dim), "float16"), "text": ArraySpec((views, dim), "float16")}
    arrays = cached_arrays(folder, rows=rows, specs=specs, compute=compute, info=info, chunk_rows=chunk_rows,
                           progress=progress, desc="CLIP features", build=build,
                           missing="no CLIP feature cache for this store, model and contrastive settings; "
                                   "run `glfa train contrastive` (it builds the cache)")
    return ClipFeatures(image=torch.from_numpy(arrays["image"]), text=torch.from_numpy(arrays["text"]), key=key,
                        folder=folder)


# ----------------------------------------------------------------------------- VAE latents


@dataclass
class LatentFeatures:
    """Scaled VAE latents of every window of one split, keyed by window index."""

    latents: torch.Tensor  # [N, c, m, h', w'], row i = window window_indices[i]
    window_indices: list[int]
    split: str
    key: str
    folder: Path
    store_path: Path

    def __post_init__(self):
        self._rows = {w: i for i, w in enumerate(self.window_indices)}

    @property
    def windows(self) -> set[int]:
        """The window indices that have latents."""
        return set(self._rows)

    def _row(self, window_index: int) -> int:
        try:
            return self._rows[int(window_index)]
        except KeyError:
            raise StoreError(f"window {int(window_index)} has no cached VAE latents: the cache holds the "
                             f"{self.split!r} split's windows; build the other split's with "
                             "vae_latents(store, generator, split=...)", path=self.store_path) from None

    def get(self, window_index: int) -> torch.Tensor:
        """The latents of one window, ``[c, m, h', w']``."""
        return self.latents[self._row(window_index)]

    def stack(self, indices) -> torch.Tensor:
        """The latents of several windows, ``[b, c, m, h', w']``."""
        rows = [self._row(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        return self.latents[torch.tensor(rows, dtype=torch.long)]


def _generator_identity(generator) -> dict[str, Any]:
    """The VAE's folder (or a hash of its weights when it has none), dtype and scaling factor."""
    vae = generator.vae
    if generator.path is not None:
        model: Any = _files_identity(Path(generator.path) / "vae")
    else:
        digest = hashlib.sha256()
        for name, tensor in sorted(vae.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        model = {"weights_sha256": digest.hexdigest()}
    return {"vae": model, "dtype": str(vae.dtype).removeprefix("torch."), "scaling_factor": generator.scaling_factor}


def vae_latents(store, generator, *, split: str = "train", progress: bool = True, build: bool = True,
                dtype: str = "float16", chunk_rows: int = CHUNK_ROWS) -> LatentFeatures:
    """Scaled VAE latents (``generator.encode_videos``) of every window of ``split``, computed once.

    Parameters
    ----------
    store
        An open :class:`~glfa.data.store.StudyStore`.
    generator
        A :class:`~glfa.backbones.VideoGenerator`; only its VAE is used.
    split
        ``train`` or ``test``.
    progress
        Show a progress bar while computing.
    build
        False: raise StoreError instead of computing a missing cache.
    dtype
        Storage dtype of the latents (``float16`` or ``float32``).
    chunk_rows
        Windows per chunk file.
    """
    windows = store.windows(split)
    if not windows:
        raise StoreError(f"the store has no {split!r} window", path=store.path)
    height, width = int(store.manifest["video_height"]), int(store.manifest["video_width"])
    factor = int(generator.vae_scale_factor)
    if height % factor or width % factor:
        raise StoreError(f"the stored video is {height} x {width} pixels, not a multiple of the VAE's factor "
                         f"{factor}; prepare the store with a video size divisible by {factor}",
                         path=store.path, field="video_height/video_width")
    m = store.video_frames
    info = {"kind": "vae", "format_version": FORMAT_VERSION, "store_created": store.manifest.get("created"),
            "split": split, "windows": [w.index for w in windows], "model": _generator_identity(generator),
            "dtype": str(np.dtype(dtype)), "chunk_rows": chunk_rows}
    key = cache_key(info)
    folder = _cache_folder(store, f"vae-{split}", key)

    def encode(a: int, b: int) -> np.ndarray:
        videos = np.stack([store.frames(w) for w in windows[a:b]])  # [r, m, h, w, 3]
        return generator.encode_videos(videos).float().cpu().numpy()

    latents = FixedBatches(encode, count=len(windows), size=EMBED_BATCH_WINDOWS)

    def compute(a: int, b: int) -> dict[str, np.ndarray]:
        out = latents.take(np.arange(a, b))
        latents.forget_before(b)
        return {"latents": out}

    shape = (generator.latent_channels, m, height // factor, width // factor)
    arrays = cached_arrays(folder, rows=len(windows), specs={"latents": ArraySpec(shape, dtype)}, compute=compute,
                           info=info, chunk_rows=chunk_rows, progress=progress, desc=f"VAE latents ({split})",
                           build=build, missing=f"no VAE latent cache of the {split!r} windows for this generator; "
                                                "run `glfa train cotrain` (it builds the cache)")
    return LatentFeatures(latents=torch.from_numpy(arrays["latents"]), window_indices=[w.index for w in windows],
                          split=split, key=key, folder=folder, store_path=Path(store.path))
