"""GLFA as a standalone functional-alignment tool, scikit-learn style.

:class:`GLFAAligner` fits one GLFA layer (paper section 3.5), shared by every subject, with
L_GLFA (eq. 3) on several subjects' responses to the same stimuli, then maps the responses of
any subject, one never seen included, into the common space::

    aligner = GLFAAligner(parcel_size=16, kernel_size=13).fit({"1": x1, "2": x2})
    aligned = aligner.transform(x3)          # [T, H, W] -> [T, H, W]
    aligner.save("aligner")                   # a folder: aligner.json + weights.safetensors
    aligner = GLFAAligner.load("aligner")

Responses are flat cortical images ``[T, H, W]`` (zero outside the visual-cortex mask), or
surface data ``[T, V]`` when a :class:`~glfa.surface.flatmap.FlatMapProjector` is given as
``projector``: they are rasterised with ``projector.to_image`` for GLFA and brought back with
``projector.to_surface``, so ``transform`` returns the kind it was given.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from glfa.devices import flush_denormals, resolve_device
from glfa.errors import CheckpointError, DataError, NotFittedError
from glfa.io import install_dir
from glfa.optim import adamw

FORMAT_VERSION = 1
_CONFIG_FILE = "aligner.json"
_WEIGHTS_FILE = "weights.safetensors"
_TRANSFORM_CHUNK = 64  # frames per forward pass in transform


class GLFAAligner(BaseEstimator):
    """Fit a shared GLFA layer on subjects' responses to shared stimuli; transform any subject.

    Parameters
    ----------
    parcel_size : int
        Side of the square parcels of the global map (the image side must be a multiple).
    kernel_size : int
        Side (odd) of every pixel's local kernel.
    consistency_weight : float
        lambda of L_GLFA.
    n_steps : int
        AdamW steps.
    batch_size : int
        Time points per step; each step takes the same time points from every subject and
        sums the loss over all subject pairs.
    learning_rate, weight_decay : float
        AdamW settings (weight decay pulls GLFA back toward the identity).
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the initial weights and the batch sampling; CPU fits are deterministic.
    mask : bool array [H, W], optional
        The visual-cortex mask; default: the projector's mask, else the pixels that are
        non-zero anywhere in the training responses.
    projector : FlatMapProjector, optional
        Needed for surface input ``[T, V]``; saved with the aligner.
    verbose : bool
        Show a progress bar while fitting.

    Attributes
    ----------
    model_ : glfa.models.glfa.GLFA
        The fitted layer (on CPU after ``fit``).
    mask_ : bool ndarray [H, W]
    loss_history_ : list of float
        L_GLFA at every step.
    n_subjects_ : int
    subjects_ : list of str
    image_shape_ : tuple (H, W)
    fit_seconds_ : float
    """

    def __init__(self, *, parcel_size: int = 16, kernel_size: int = 13, consistency_weight: float = 0.5,
                 n_steps: int = 60, batch_size: int = 4, learning_rate: float = 2e-2, weight_decay: float = 0.01,
                 device: str = "auto", seed: int = 0, mask: np.ndarray | None = None, projector: Any = None,
                 verbose: bool = False):
        self.parcel_size = parcel_size
        self.kernel_size = kernel_size
        self.consistency_weight = consistency_weight
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.device = device
        self.seed = seed
        self.mask = mask
        self.projector = projector
        self.verbose = verbose

    @classmethod
    def from_config(cls, config, *, mask: np.ndarray | None = None, projector: Any = None,
                    verbose: bool = False) -> GLFAAligner:
        """An aligner with ``config.model.glfa`` (parcel, kernel, lambda) and ``config.align`` (optimiser) settings."""
        layer, opt = config.model.glfa, config.align
        return cls(parcel_size=layer.parcel_size, kernel_size=layer.kernel_size,
                   consistency_weight=layer.consistency_weight, n_steps=opt.steps, batch_size=opt.batch_size,
                   learning_rate=opt.learning_rate, weight_decay=opt.weight_decay, device=config.device,
                   seed=opt.seed, mask=mask, projector=projector, verbose=verbose)

    # ------------------------------------------------------------------ input checks

    def _as_images(self, x: Any, field: str) -> tuple[np.ndarray, str]:
        """One subject's responses -> (float32 images [T, H, W], kind "image" or "surface")."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise DataError(f"expected a numeric array, got dtype {x.dtype}", field=field)
        if x.ndim == 3:
            kind = "image"
        elif x.ndim == 2:
            if self.projector is None:
                raise DataError(f"got surface data of shape {x.shape} [T, V] but the aligner has no projector; "
                                "expected images [T, H, W], or pass projector=FlatMapProjector(...)", field=field)
            if x.shape[1] != self.projector.n_vertices:
                raise DataError(f"expected [T, {self.projector.n_vertices}] surface data (the projector's vertices), "
                                f"got shape {x.shape}", field=field)
            kind = "surface"
        else:
            raise DataError(f"expected images [T, H, W] or surface data [T, V], got shape {x.shape}", field=field)
        if x.shape[0] == 0:
            raise DataError("has no time point", field=field)
        if not np.all(np.isfinite(x)):
            raise DataError("contains NaN or infinite values", field=field)
        images = self.projector.to_image(x) if kind == "surface" else x
        return np.asarray(images, dtype=np.float32), kind

    def _resolve_mask(self, images: list[np.ndarray]) -> np.ndarray:
        """The mask parameter, else the projector's, else the pixels non-zero anywhere."""
        shape = images[0].shape[1:]
        if self.mask is not None:
            mask = np.asarray(self.mask, dtype=bool)
        elif self.projector is not None:
            mask = np.asarray(self.projector.mask, dtype=bool)
        else:
            mask = np.zeros(shape, dtype=bool)
            for x in images:
                mask |= np.any(x != 0, axis=0)
        if mask.shape != shape:
            raise DataError(f"mask of shape {mask.shape} does not match the images' {shape}", field="mask")
        if not mask.any():
            raise DataError("the mask selects no pixel (are all responses zero?)", field="mask")
        return mask

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this GLFAAligner is not fitted yet; call fit(responses) or GLFAAligner.load(path) "
                                 "before transform", field="GLFAAligner")

    # ------------------------------------------------------------------ fit / transform

    def fit(self, responses: Mapping[str, Any]) -> GLFAAligner:
        """Fit GLFA with L_GLFA on ``responses`` ({subject: [T, H, W] or [T, V]}, the same T time points each)."""
        from glfa.losses import glfa_loss
        from glfa.models.glfa import GLFA

        if not isinstance(responses, Mapping):
            raise DataError(f"expected a mapping subject -> array, got {type(responses).__name__}", field="responses")
        if len(responses) < 2:
            raise DataError(f"GLFA is fitted on at least 2 subjects' responses to the same stimuli, "
                            f"got {len(responses)}", field="responses")
        subjects = [str(s) for s in responses]
        images = [self._as_images(x, f"responses[{s!r}]")[0] for s, x in zip(subjects, responses.values())]
        first = images[0].shape
        for s, x in zip(subjects, images):
            if x.shape[0] != first[0]:
                raise DataError(f"has {x.shape[0]} time points but subject {subjects[0]!r} has {first[0]}; every "
                                "subject must respond to the same time points", field=f"responses[{s!r}]")
            if x.shape[1:] != first[1:]:
                raise DataError(f"images of {x.shape[1]} x {x.shape[2]} differ from subject {subjects[0]!r}'s "
                                f"{first[1]} x {first[2]}", field=f"responses[{s!r}]")
        mask = self._resolve_mask(images)
        height, width = first[1:]
        device = resolve_device(self.device)

        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = GLFA(height=height, width=width, parcel_size=self.parcel_size, kernel_size=self.kernel_size)
        model.to(device).train()
        mask_t = torch.from_numpy(mask).to(device)
        data = torch.from_numpy(np.stack(images)).to(device)  # [s, t, h, w]
        del images
        data.mul_(mask_t)
        n_subjects, n_times = data.shape[:2]
        batch = min(self.batch_size, n_times)
        optimizer = adamw(model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        history: list[float] = []
        with flush_denormals():
            for _ in tqdm(range(self.n_steps), desc="fitting GLFA", disable=not self.verbose, leave=False):
                idx = torch.randperm(n_times, generator=generator)[:batch].to(device)
                x = data[:, idx]  # [s, b, h, w]
                aligned = model(x.reshape(-1, height, width)).reshape(x.shape)  # [s, b, h, w]
                loss = glfa_loss(aligned, x, mask_t, self.consistency_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history.append(float(loss.detach()))
        model.eval().cpu()

        self.model_ = model
        self.mask_ = mask
        self.loss_history_ = history
        self.n_subjects_ = n_subjects
        self.subjects_ = subjects
        self.image_shape_ = (int(height), int(width))
        self.fit_seconds_ = time.perf_counter() - start
        return self

    @torch.no_grad()
    def _apply(self, images: np.ndarray) -> np.ndarray:
        """Images [T, H, W] (already checked) -> aligned images [T, H, W] float32."""
        device = resolve_device(self.device)
        model = self.model_.to(device)
        mask = torch.from_numpy(self.mask_).to(device)
        out = []
        try:
            for i in range(0, images.shape[0], _TRANSFORM_CHUNK):
                x = torch.from_numpy(images[i:i + _TRANSFORM_CHUNK]).to(device) * mask  # [c, h, w]
                out.append(model(x).float().cpu().numpy())
        finally:
            model.cpu()
        return np.concatenate(out)

    def transform(self, X: Any) -> Any:
        """Align one subject's responses (any subject): [T, H, W] -> [T, H, W], or [T, V] -> [T, V].

        A mapping {subject: array} gives a mapping of the aligned arrays.
        """
        self._check_fitted()
        if isinstance(X, Mapping):
            return {s: self._transform_one(x, f"X[{s!r}]") for s, x in X.items()}
        return self._transform_one(X, "X")

    def _transform_one(self, x: Any, field: str) -> np.ndarray:
        images, kind = self._as_images(x, field)
        if images.shape[1:] != self.image_shape_:
            raise DataError(f"images of {images.shape[1]} x {images.shape[2]} do not match the "
                            f"{self.image_shape_[0]} x {self.image_shape_[1]} the aligner was fitted on", field=field)
        aligned = self._apply(images)
        if kind == "surface":
            return np.asarray(self.projector.to_surface(aligned), dtype=np.float32)
        return aligned

    def fit_transform(self, responses: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``fit(responses)``, then the aligned responses of every subject (same kinds as given)."""
        return self.fit(responses).transform(responses)

    # ------------------------------------------------------------------ persistence

    def _params_json(self) -> dict[str, Any]:
        params = {k: v for k, v in self.get_params().items() if k not in ("mask", "projector")}
        return params

    def save(self, path: str | Path) -> Path:
        """Write the fitted aligner to the folder ``path`` (aligner.json + weights.safetensors), atomically."""
        from safetensors.numpy import save_file

        self._check_fitted()
        path = Path(path)
        tensors = {f"model.{k}": v.detach().cpu().contiguous().numpy() for k, v in self.model_.state_dict().items()}
        tensors["mask"] = self.mask_.astype(np.uint8)
        if self.projector is not None:
            for k, v in self.projector.to_arrays().items():
                tensors[f"projector.{k}"] = np.ascontiguousarray(v)
        info = {
            "format": "glfa.GLFAAligner",
            "version": FORMAT_VERSION,
            "params": self._params_json(),
            "has_projector": self.projector is not None,
            "n_subjects": self.n_subjects_,
            "subjects": self.subjects_,
            "image_shape": list(self.image_shape_),
            "loss_history": self.loss_history_,
            "fit_seconds": self.fit_seconds_,
        }
        with install_dir(path) as tmp:
            save_file(tensors, str(tmp / _WEIGHTS_FILE))
            (tmp / _CONFIG_FILE).write_text(json.dumps(info, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> GLFAAligner:
        """Read an aligner written by :meth:`save`; CheckpointError if missing, half-written or newer."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        from glfa.models.glfa import GLFA

        path = Path(path)
        cfg_path, weights_path = path / _CONFIG_FILE, path / _WEIGHTS_FILE
        if not path.is_dir():
            raise CheckpointError("no saved aligner here (expected a folder written by GLFAAligner.save)", path=path)
        for p in (cfg_path, weights_path):
            if not p.is_file():
                raise CheckpointError("missing; the aligner folder is incomplete", path=p)
        try:
            info = json.loads(cfg_path.read_text())
            params, version = info["params"], info["version"]
            height, width = info["image_shape"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"not a valid aligner description ({exc})", path=cfg_path) from None
        if info.get("format") != "glfa.GLFAAligner" or version > FORMAT_VERSION:
            raise CheckpointError(f"expected format glfa.GLFAAligner version <= {FORMAT_VERSION}, got "
                                  f"{info.get('format')!r} version {version}", path=cfg_path)
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read the weights ({exc})", path=weights_path) from None
        projector = None
        if info.get("has_projector"):
            from glfa.surface.flatmap import FlatMapProjector

            prefix = "projector."
            projector = FlatMapProjector.from_arrays(
                {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        if "mask" not in tensors:
            raise CheckpointError("no 'mask' tensor", path=weights_path)
        mask = tensors["mask"].astype(bool)
        try:
            aligner = cls(**params, mask=mask, projector=projector)
        except TypeError as exc:
            raise CheckpointError(f"unexpected aligner parameters ({exc})", path=cfg_path) from None
        model = GLFA(height=height, width=width, parcel_size=aligner.parcel_size, kernel_size=aligner.kernel_size)
        state = {k[len("model."):]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit the described GLFA ({exc})", path=weights_path) from None
        aligner.model_ = model.eval()
        aligner.mask_ = mask
        aligner.loss_history_ = [float(v) for v in info.get("loss_history", [])]
        aligner.n_subjects_ = int(info["n_subjects"])
        aligner.subjects_ = list(info.get("subjects", []))
        aligner.image_shape_ = (int(height), int(width))
        aligner.fit_seconds_ = float(info.get("fit_seconds", math.nan))
        return aligner


def apply_frames(layer: torch.nn.Module, images: np.ndarray, chunk: int = 32) -> np.ndarray:
    """A frame-wise layer (a GLFA layer, a subject map) on ``[T, H, W]`` images, in chunks, without
    gradients, on the layer's device -> float32 ``[T, H, W]`` (CPU)."""
    device = next(iter(layer.buffers()), torch.empty(0)).device
    out = np.empty(images.shape, dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(images), chunk):
            x = torch.from_numpy(np.asarray(images[i:i + chunk], np.float32)).to(device)
            out[i:i + chunk] = layer(x).float().cpu().numpy()
    return out


def _shared_stimuli(store, subjects: list[str], split: str) -> list[str]:
    """The ``split`` stimuli that every one of ``subjects`` saw, in store order (StoreError if none)."""
    from glfa.errors import StoreError

    missing = [s for s in subjects if s not in store.subjects]
    if missing:
        raise StoreError(f"subject(s) {missing} are not in the store; it holds {store.subjects}", path=store.path)
    stimuli = [st for st in store.stimuli
               if store.split_of(st) == split and all(store.has(s, st) for s in subjects)]
    if not stimuli:
        raise StoreError(f"no {split!r} stimulus was seen by every one of the subjects {subjects}", path=store.path)
    return stimuli


def responses_from_store(store, subjects: list[str], split: str = "train") -> dict[str, np.ndarray]:
    """Every subject's responses to the stimuli of ``split`` that all of them saw, concatenated in time.

    Stimuli are taken in the store's order; when the subjects' responses to one stimulus
    differ in length (a run cut short), all are cut to the shortest, so time point t is the
    same moment of the same stimulus for every subject (:func:`timepoint_stimuli` names it).

    Returns
    -------
    dict subject -> float32 ``[T, H, W]``
    """
    parts: dict[str, list[np.ndarray]] = {s: [] for s in subjects}
    for st in _shared_stimuli(store, subjects, split):
        n = min(store.response_length(s, st) for s in subjects)
        for s in subjects:
            parts[s].append(store.response(s, st)[:n])  # [n, h, w]
    return {s: np.concatenate(p) for s, p in parts.items()}


def timepoint_stimuli(store, subjects: list[str], split: str = "train") -> np.ndarray:
    """The stimulus id of every time point of :func:`responses_from_store` (same arguments): str ``[T]``."""
    return np.concatenate([[st] * min(store.response_length(s, st) for s in subjects)
                           for st in _shared_stimuli(store, subjects, split)]).astype(str)


# ----------------------------------------------------------------------------- smoothing, the blur baseline

#: Gaussian widths tried by :func:`tune_smoothing`, in pixels of a 256 x 256 image (scaled to the image).
SMOOTHING_GRID = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def masked_smooth(x: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of images [T, H, W] inside ``mask`` (normalised convolution), zero outside."""
    from scipy import ndimage

    m = mask.astype(np.float32)
    num = ndimage.gaussian_filter(x * m, sigma=(0, sigma, sigma), truncate=3.0)  # [t, h, w]
    den = ndimage.gaussian_filter(m, sigma=sigma, truncate=3.0)  # [h, w]
    return np.where(mask, num / np.maximum(den, 1e-6), 0).astype(np.float32)


def tune_smoothing(responses: Mapping[str, np.ndarray], mask: np.ndarray, grid=SMOOTHING_GRID) -> float:
    """The width of :data:`SMOOTHING_GRID` (scaled from 256 pixels to the image's side) that gives
    ``responses`` ({subject: [T, H, W]}, the training subjects' training data) the highest mean fSC
    over their pairs: the blur that fSC and ISC reward, tuned without the held-out subject."""
    import itertools

    from glfa.metrics.alignment import fsc

    scale = mask.shape[-1] / 256
    return max((g * scale for g in grid), key=lambda sigma: np.mean(
        [fsc(masked_smooth(responses[a], mask, sigma), masked_smooth(responses[b], mask, sigma), mask)
         for a, b in itertools.combinations(responses, 2)]))
