"""Few-shot adaptation: a trained cross-subject decoder learns a new subject from its first minutes of data.

The shared GLFA layer of a stage-2 model (``RUN/cotrain-glfa/model``) maps every trained subject
into one common space, and a new subject S enters it zero-shot through the same layer (the floor).
Adaptation fits how S enters it on S's first M minutes of training-split fMRI, with the trained
subjects' responses to the same windows as the target (so S must have watched stimuli that they
watched too):

- ``glfa``: S's own copy of the GLFA layer (global map and local kernels), started from the trained
  layer and fitted with L_GLFA (paper eq. 3) against the trained subjects' aligned responses,
  which stay fixed (:func:`fit_subject_layer`); with ``adapt.denoising_weight`` W > 0, plus W x the
  stage-2 denoising loss of S's windows through the layer and the frozen rest of the decoder
  (:class:`DenoisingTerm`).
- ``linear``: the classic baseline: per parcel, cross-validated ridge from S's pixels to the trained
  subjects' mean response (:class:`ParcelLinearMap`), followed by the trained layer.
- ``full``: ``glfa``, then the encoder's token projector fine-tuned so that S's tokens match the
  mean of the trained subjects' tokens for the same windows (:func:`fine_tune_projector`; the
  rest of the encoder and the UNet stay frozen, so no diffusion step is needed).

:func:`adapt_model` writes a decoder model folder like any other, ``RUN/cotrain-<name>/model``,
which ``glfa generate --method NAME`` and ``glfa evaluate`` read as they read the rest::

    model.json                  the base model's, with method NAME and "adaptation": subject, minutes,
                                the windows seen (training split only) and the fit's statistics
    encoder/                    the base encoder; glfa and full: with S's GLFA layer (full: and projector)
    negative.safetensors        the base model's negative condition
    unet_trainable.safetensors  the base model's UNet parameters
    subject_map.safetensors     linear: the per-parcel map applied to S's fMRI before the encoder

The within-subject model trained on all of S's data (README, "The within-subject protocol") is
the ceiling.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from sklearn.base import BaseEstimator
from torch import nn
from tqdm.auto import tqdm

from glfa.errors import CheckpointError, ConfigError, DataError, NotFittedError
from glfa.evaluation.tables import mean_std
from glfa.runs import GENERATIONS_INDEX, OWN_FOLDER, RunLayout

METHODS = ("glfa", "linear", "full")
SUBJECT_MAP = "subject_map.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ----------------------------------------------------------------------------- data


def adaptation_windows(store, subject: str, train_subjects: list[str], minutes: float) -> tuple[list, float]:
    """The training windows within the first ``minutes`` of ``subject``'s shared training fMRI.

    ``subject``'s training-split responses are taken in store order, restricted to the stimuli
    that every one of ``train_subjects`` watched too; a window is taken when its last fMRI frame
    falls within the first ``minutes`` of them (counted in TRs of the stored responses). Test
    windows are never taken.

    Returns
    -------
    (windows in store order, the minutes of fMRI up to the end of the last one)
    """
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise DataError(f"expected a positive number of minutes, got {minutes!r} (0 minutes is the zero-shot "
                        "model itself)", field="minutes")
    if subject not in store.subjects:
        raise DataError(f"unknown subject {subject!r}; the store holds {store.subjects}", path=store.path,
                        field="subject")
    if subject in train_subjects:
        raise DataError(f"subject {subject!r} is one of the model's training subjects {train_subjects}; "
                        "adaptation is for a subject the model was not trained on", path=store.path, field="subject")
    shared = [st for st in store.stimuli if store.split_of(st) == "train" and store.has(subject, st)
              and all(store.has(t, st) for t in train_subjects)]
    if not shared:
        raise DataError(f"subject {subject!r} watched none of the training stimuli that the trained subjects "
                        f"{train_subjects} watched; adaptation fits on responses to shared stimuli",
                        path=store.path, field="subject")
    by_stimulus: dict[str, list] = {}
    for w in store.windows("train"):
        by_stimulus.setdefault(w.stimulus_id, []).append(w)
    budget, tr, n = minutes * 60.0, store.tr, store.fmri_frames
    elapsed, end, chosen = 0.0, 0.0, []
    for st in shared:
        for w in by_stimulus.get(st, []):
            w_end = elapsed + (w.fmri_start + n) * tr
            if w_end <= budget + 1e-6:
                chosen.append(w)
                end = max(end, w_end)
        elapsed += store.response_length(subject, st) * tr
        if elapsed >= budget:
            break
    if not chosen:
        first = next((w for st in shared for w in by_stimulus.get(st, [])), None)
        need = "" if first is None else f" (the first ends after {(first.fmri_start + n) * tr / 60:.3g} minutes)"
        raise DataError(f"the first {minutes:g} minutes of subject {subject!r}'s shared training fMRI hold no "
                        f"whole window{need}", path=store.path, field="minutes")
    return chosen, end / 60.0


def window_frames(store, subjects: list[str], windows: list) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every subject's fMRI frames that ``windows`` cover, each frame once, in store order.

    Returns
    -------
    ({subject: float32 [F, H, W]}, int64 [F]: the number of each frame's stimulus, for grouped folds)
    """
    spans: dict[str, set[int]] = {}
    for w in windows:
        spans.setdefault(w.stimulus_id, set()).update(range(w.fmri_start, w.fmri_start + store.fmri_frames))
    parts: dict[str, list[np.ndarray]] = {s: [] for s in subjects}
    groups = []
    for k, (st, frames) in enumerate(spans.items()):
        index = sorted(frames)
        for s in subjects:
            parts[s].append(store.response(s, st)[index])  # [f, H, W]
        groups += [k] * len(index)
    return {s: np.concatenate(p) for s, p in parts.items()}, np.asarray(groups, dtype=np.int64)


# ----------------------------------------------------------------------------- linear: per-parcel ridge


def _mask_tensor(mask, height: int, width: int) -> torch.Tensor:
    """A ``[H, W]`` mask (bool or 0/1, numpy or torch; None: every pixel) -> float32 0/1, checked."""
    if mask is None:
        return torch.ones(height, width)
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).detach().cpu().float()
    if m.shape != (height, width):
        raise DataError(f"expected a mask of shape [{height}, {width}], got {list(m.shape)}", field="mask")
    if not torch.all((m == 0) | (m == 1)) or not m.any():
        raise DataError("expected a boolean (0/1) mask that selects some pixel", field="mask")
    return m


class ParcelLinearMap(nn.Module):
    """Per-parcel affine map of flat images: ``y_p = W_p x_p + b_p`` for the q pixels of parcel p; zero off the mask.

    Parcels are the GLFA layer's (s x s squares, row-major; q = s * s pixels, row-major inside).
    ``weight`` ``[P, q, q]`` and ``bias`` ``[P, q]`` start as the identity map. Input and output:
    ``[N, H, W]`` or ``[N, 1, H, W]``, or windows ``[B, n, H, W]`` (every frame mapped).
    """

    def __init__(self, *, height: int, width: int, parcel_size: int, mask=None):
        super().__init__()
        if parcel_size <= 0 or height % parcel_size or width % parcel_size:
            raise ConfigError(f"image {height} x {width} must be divisible by parcel_size {parcel_size}",
                              field="parcel_size")
        self.height, self.width, self.parcel_size = height, width, parcel_size
        p, q = (height // parcel_size) * (width // parcel_size), parcel_size * parcel_size
        self.register_buffer("weight", torch.eye(q).repeat(p, 1, 1))
        self.register_buffer("bias", torch.zeros(p, q))
        self.register_buffer("mask", _mask_tensor(mask, height, width))  # the map writes the cortex only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., H, W]`` -> the same shape."""
        if x.shape[-2:] != (self.height, self.width):
            raise DataError(f"expected images of {self.height} x {self.width}, got {list(x.shape)}", field="x")
        s = self.parcel_size
        frames = x.reshape(-1, self.height, self.width).to(self.weight.dtype)
        parcels = rearrange(frames, "n (gh p1) (gw p2) -> n (gh gw) (p1 p2)", p1=s, p2=s)  # [n, P, q]
        mapped = torch.einsum("npi,poi->npo", parcels, self.weight) + self.bias  # [n, P, q]
        out = rearrange(mapped, "n (gh gw) (p1 p2) -> n (gh p1) (gw p2)", p1=s, gh=self.height // s)
        return (out * self.mask).reshape(x.shape)

    @classmethod
    def fit(cls, x: np.ndarray, target: np.ndarray, groups: np.ndarray, mask: np.ndarray, *, parcel_size: int,
            alphas, cv_folds: int, seed: int = 0) -> tuple[ParcelLinearMap, np.ndarray]:
        """Cross-validated ridge per parcel from ``x`` to ``target`` (both ``[F, H, W]``), on the mask's pixels.

        Folds keep each stimulus (``groups``, ``[F]``) whole; with fewer stimuli than
        ``cv_folds`` there are as many folds as stimuli. Uses :class:`glfa.baselines.lea.RidgeCV`.

        Returns
        -------
        (the map, float64 ``[P]``: the penalty chosen for each parcel, nan where the mask has no pixel)
        """
        from glfa.baselines.lea import RidgeCV

        height, width = x.shape[1:]
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise DataError(f"linear adaptation cross-validates over stimuli and needs at least 2, got {n_groups}; "
                            "give it more minutes", field="minutes")
        out = cls(height=height, width=width, parcel_size=parcel_size, mask=mask)
        s = parcel_size
        cut = "n (gh p1) (gw p2) -> n (gh gw) (p1 p2)"
        xp = rearrange(x, cut, p1=s, p2=s)  # [F, P, q]
        yp = rearrange(target, cut, p1=s, p2=s)
        inside = rearrange(np.asarray(mask, bool)[None], cut, p1=s, p2=s)[0]  # [P, q]
        chosen = np.full(len(inside), np.nan)
        for p in np.flatnonzero(inside.any(axis=1)):
            pix = np.flatnonzero(inside[p])
            ridge = RidgeCV(alphas, cv=min(cv_folds, n_groups), random_state=seed).fit(
                xp[:, p, pix], yp[:, p, pix], groups)
            out.weight[p][np.ix_(pix, pix)] = torch.from_numpy(ridge.coef_).float()
            out.bias[p, pix] = torch.from_numpy(ridge.intercept_ - ridge.x_mean_ @ ridge.coef_.T).float()
            chosen[p] = ridge.alpha_
        return out, chosen


def save_subject_map(subject_map: ParcelLinearMap, path: Path) -> None:
    """Write a :class:`ParcelLinearMap` as safetensors (weight, bias, mask, parcel_size)."""
    from safetensors.torch import save_file

    save_file({"weight": subject_map.weight.contiguous(), "bias": subject_map.bias.contiguous(),
               "mask": subject_map.mask.contiguous(), "parcel_size": torch.tensor([subject_map.parcel_size])},
              str(path))


def load_subject_map(path: str | Path, device: str | torch.device = "cpu") -> ParcelLinearMap:
    """Read a map written by :func:`save_subject_map`; CheckpointError naming the file when it cannot."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("missing file; expected the linear subject map (weight, bias, mask, parcel_size)",
                              path=path)
    try:
        tensors = load_file(str(path))
        height, width = tensors["mask"].shape
        out = ParcelLinearMap(height=height, width=width, parcel_size=int(tensors["parcel_size"][0]),
                              mask=tensors["mask"])
        out.load_state_dict({k: tensors[k] for k in ("weight", "bias", "mask")})
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"not a valid subject map ({exc.__class__.__name__}: {exc})".splitlines()[0],
                              path=path) from None
    return out.to(device)


# ----------------------------------------------------------------------------- glfa: the subject's own layer


def fit_subject_layer(layer: nn.Module, x: np.ndarray, others: list[np.ndarray], mask: np.ndarray, *,
                      consistency_weight: float, steps: int, batch_size: int, learning_rate: float,
                      weight_decay: float, seed: int, device: torch.device, denoising: DenoisingTerm | None = None,
                      progress: bool = False) -> tuple[nn.Module, list[float]]:
    """A copy of the trained GLFA ``layer`` fitted to one new subject; returns it (on the CPU) and its losses.

    With the trained subjects' layer A frozen, the terms of L_GLFA that involve the new subject,
    averaged over the trained subjects t, are ``mean_t MSE(A_S x_S, A x_t) + lambda * MSE(A_S x_S, x_S)``
    plus constants, and ``mean_t MSE(a, A x_t) = MSE(a, mean_t A x_t) + const``, where
    ``mean_t A x_t = A(mean_t x_t)`` (GLFA is linear in its input). So each step's loss is L_GLFA
    of the pair (A_S x_S, y) with y = A(mean_t x_t) for the step's frames, y being its own
    original (it has no consistency term). y is computed for the sampled frames only, so the
    cost does not grow with the number of frames and nothing the size of the data is allocated.

    Parameters
    ----------
    layer : the trained :class:`~glfa.models.glfa.GLFA` (left unchanged).
    x : ``[F, H, W]`` the new subject's frames (masked here, a batch at a time).
    others : the trained subjects' frames ``[F, H, W]`` at the same time points.
    mask : ``[H, W]`` bool, the visual cortex (the store's mask).
    denoising : added to every step's loss, called with the layer being fitted (:class:`DenoisingTerm`);
        None: L_GLFA alone.
    """
    from glfa.devices import flush_denormals
    from glfa.losses import glfa_loss
    from glfa.optim import adamw

    frozen = copy.deepcopy(layer).to(device).eval().requires_grad_(False)
    model = copy.deepcopy(layer).to(device).train().requires_grad_(True)
    mask = torch.from_numpy(np.asarray(mask, dtype=np.float32)).to(device)  # [h, w]

    def frames(a: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a[idx], np.float32)).to(device) * mask  # [b, h, w]

    optimizer = adamw(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = []
    with flush_denormals():
        for _ in tqdm(range(steps), desc="adapting GLFA", disable=not progress, leave=False):
            idx = np.sort(torch.randperm(len(x), generator=generator)[:batch_size].numpy())
            xb = frames(x, idx)
            with torch.no_grad():
                yb = frozen(torch.stack([frames(o, idx) for o in others]).mean(0))  # A(mean_t x_t): [b, h, w]
            loss = glfa_loss(torch.stack([model(xb), yb]), torch.stack([xb, yb]), mask, consistency_weight)
            if denoising is not None:
                loss = loss + denoising(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
    return model.eval().requires_grad_(False).cpu(), history


class DenoisingTerm:
    """``weight`` x the stage-2 denoising loss of the new subject's windows through a GLFA layer and the frozen rest.

    Each call draws ``batch_size`` of the windows (seeded), reads their fMRI from the store, takes it
    through the given layer in place of the encoder's GLFA layer, then through the frozen encoder
    (PTE, spatiotemporal block, token projector) to condition the frozen UNet, and returns ``weight``
    x :func:`glfa.losses.denoising_loss` on the windows' VAE latents, as stage 2 computes it
    (:func:`glfa.training.cotrain.cotrain_step`). Its noise and timesteps come from a seed drawn from
    the term's own generator, so the fit is reproducible and the global RNG untouched. Only the
    layer receives gradients: the encoder's and the UNet's parameters are frozen here.

    Parameters
    ----------
    encoder : the trained FmriEncoder.
    unet : the generator's UNet carrying the trained model's parameters.
    scheduler : the generator's DDPM scheduler.
    store, subject, windows : where the new subject's fMRI windows ``[n, H, W]`` are read, a batch at a time.
    latents : the windows' scaled VAE latents (:class:`~glfa.data.features.LatentFeatures`, by window index).
    """

    def __init__(self, encoder: nn.Module, unet: nn.Module, scheduler, store, subject: str, windows: list, latents, *,
                 weight: float, batch_size: int, seed: int):
        missing = [w.index for w in windows if w.index not in latents.windows]
        if missing or not windows:
            raise DataError(f"expected the VAE latents of every window; {len(missing)} of {len(windows)} missing "
                            f"(e.g. {missing[:5]})", path=store.path, field="latents")
        self.encoder = encoder.eval().requires_grad_(False)
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler, self.latents = scheduler, latents
        self.store, self.subject, self.windows = store, subject, windows
        self.weight, self.batch_size = float(weight), int(batch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, layer: nn.Module) -> torch.Tensor:
        """The weighted loss of one batch of windows through ``layer`` (a scalar with a gradient to ``layer``)."""
        from glfa.losses import denoising_loss

        device = next(layer.parameters()).device
        batch = [self.windows[i] for i in torch.randperm(len(self.windows), generator=self.generator)[:self.batch_size]]
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        fmri = torch.from_numpy(np.stack([self.store.fmri(self.subject, w) for w in batch])).float()  # [b, n, H, W]
        latents = self.latents.stack([w.index for w in batch]).float()  # [b, c, m, h', w']
        self.encoder.glfa = layer  # the layer being fitted stands in for the trained one
        tokens = self.encoder(fmri.to(device), heads=("tokens",))["tokens"]  # [b, K, C]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            loss = denoising_loss(self.unet, self.scheduler, latents.to(device), tokens)
        return self.weight * loss

    @classmethod
    def for_model(cls, model_dir: Path, store, subject: str, windows: list, *, weight: float, batch_size: int,
                  seed: int, device: torch.device, progress: bool = False) -> DenoisingTerm:
        """The term of a trained decoder model folder: its encoder, its generator with its trained UNet
        parameters, and the store's VAE latents cache of the training windows (built on first use)."""
        from glfa.backbones import load_video_generator
        from glfa.data.features import vae_latents
        from glfa.models.encoder import FmriEncoder
        from glfa.pipeline import ENCODER_DIR, UNET_TRAINABLE, overlay_unet, read_model_info

        generator = load_video_generator(read_model_info(model_dir)["generator"], device=device,
                                         with_text_encoder=False)
        overlay_unet(generator.unet, model_dir / UNET_TRAINABLE)
        return cls(FmriEncoder.from_pretrained(model_dir / ENCODER_DIR, map_location=device), generator.unet,
                   generator.scheduler, store, subject, windows, vae_latents(store, generator, split="train",
                                                                             progress=progress),
                   weight=weight, batch_size=batch_size, seed=seed)


class SubjectAdapter(BaseEstimator):
    """How one new subject's frames enter a trained GLFA layer's common space, fitted on a few minutes.

    Parameters
    ----------
    method : ``"glfa"`` (the subject's own GLFA layer; ``"full"`` fits the same layer here) or
        ``"linear"`` (per-parcel ridge into the trained subjects' mean response, then the trained layer).
    steps, batch_size, learning_rate, weight_decay, consistency_weight, seed, device
        The GLFA fit (:func:`fit_subject_layer`).
    alphas, cv_folds
        The ridge penalties and folds of ``linear``.

    Attributes
    ----------
    layer_ : the trained layer (frozen, CPU).
    subject_layer_ : glfa/full: the subject's layer.
    subject_map_ : linear: the :class:`ParcelLinearMap`.
    loss_history_ : glfa/full: the loss at every step.
    alphas_ : linear: the penalty of every parcel.
    fit_seconds_ : float
    """

    def __init__(self, method: str = "glfa", *, steps: int = 100, batch_size: int = 8, learning_rate: float = 1e-2,
                 weight_decay: float = 0.0, consistency_weight: float = 0.5,
                 alphas=(0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0), cv_folds: int = 5, seed: int = 0,
                 device: str = "auto"):
        self.method = method
        self.steps = steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.consistency_weight = consistency_weight
        self.alphas = alphas
        self.cv_folds = cv_folds
        self.seed = seed
        self.device = device

    @classmethod
    def from_config(cls, config, method: str) -> SubjectAdapter:
        """An adapter with ``config.adapt``'s settings, lambda from ``model.glfa`` and ``config.device``."""
        a = config.adapt
        return cls(method, steps=a.steps, batch_size=a.batch_size, learning_rate=a.learning_rate,
                   weight_decay=a.weight_decay, consistency_weight=config.model.glfa.consistency_weight,
                   alphas=tuple(a.alphas), cv_folds=a.cv_folds, seed=a.seed, device=config.device)

    def fit(self, x: np.ndarray, others: Mapping[str, np.ndarray], layer: nn.Module, groups: np.ndarray,
            mask: np.ndarray, denoising: DenoisingTerm | None = None, progress: bool = False) -> SubjectAdapter:
        """Fit on the new subject's frames ``x`` ``[F, H, W]`` and the trained subjects' at the same time points.

        ``layer`` is the trained GLFA layer; ``groups`` (``[F]``) numbers each frame's stimulus; ``mask``
        (``[H, W]`` bool) is the visual cortex, outside which frames are zero; ``denoising``
        (glfa/full) is added to every step's L_GLFA.
        """
        from glfa.devices import resolve_device

        if self.method not in METHODS:
            raise ConfigError(f"unknown adaptation method {self.method!r}; expected one of {list(METHODS)}",
                              field="method")
        if not others:
            raise DataError("expected the responses of at least one trained subject", field="others")
        for name, a in {"x": x, **{f"others[{s!r}]": v for s, v in others.items()}}.items():
            if np.shape(a) != np.shape(x) or np.ndim(a) != 3:
                raise DataError(f"expected frames [F, H, W] like x {list(np.shape(x))}, got {list(np.shape(a))}",
                                field=name)
        start = time.perf_counter()
        self.layer_ = copy.deepcopy(layer).eval().requires_grad_(False).cpu()
        self.mask_ = mask = np.asarray(mask, dtype=bool)
        if self.method == "linear":
            mean = np.zeros(np.shape(x), np.float32)  # [F, H, W]: the trained subjects' mean response, masked
            for v in others.values():
                mean += v
            mean *= mask / len(others)
            self.subject_map_, self.alphas_ = ParcelLinearMap.fit(
                np.asarray(x, np.float32) * mask, mean, groups, mask, parcel_size=self.layer_.parcel_size,
                alphas=self.alphas, cv_folds=self.cv_folds, seed=self.seed)
        else:
            self.subject_layer_, self.loss_history_ = fit_subject_layer(
                self.layer_, x, list(others.values()), mask, consistency_weight=self.consistency_weight, steps=self.steps,
                batch_size=self.batch_size, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                seed=self.seed, device=resolve_device(self.device), denoising=denoising, progress=progress)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """The new subject's frames ``[T, H, W]`` in the common space (what the encoder's PTE sees)."""
        from glfa.align import apply_frames

        if not hasattr(self, "layer_"):
            raise NotFittedError("this SubjectAdapter is not fitted yet; call fit first")
        x = np.asarray(x, np.float32) * self.mask_
        if self.method == "linear":
            return apply_frames(self.layer_, apply_frames(self.subject_map_, x))
        return apply_frames(self.subject_layer_, x)


# ----------------------------------------------------------------------------- full: the token projector


def fine_tune_projector(encoder: nn.Module, base: nn.Module, windows: np.ndarray, others: Mapping[str, np.ndarray], *,
                        steps: int, batch_size: int, learning_rate: float, seed: int,
                        progress: bool = False) -> list[float]:
    """Fine-tune ``encoder.token_head`` in place so the new subject's tokens match the trained subjects' mean.

    Parameters
    ----------
    encoder : the FmriEncoder holding the new subject's GLFA layer; only its token projector is trained.
    base : the trained FmriEncoder (frozen): the target tokens are the mean over the trained subjects
        of its tokens for their windows.
    windows : float32 ``[B, n, H, W]`` the new subject's windows.
    others : {trained subject: float32 ``[B, n, H, W]``} the same windows.

    Returns the MSE at every step.
    """
    from glfa.optim import adamw

    device = next(encoder.parameters()).device
    base = base.eval().requires_grad_(False)
    with torch.no_grad():
        target = torch.stack([torch.cat([base(torch.from_numpy(v[i:i + batch_size]).to(device),
                                              heads=("tokens",))["tokens"] for i in range(0, len(v), batch_size)])
                              for v in others.values()]).mean(0)  # [B, K, C]
    encoder.eval().requires_grad_(False)  # no dropout; the trunk and GLFA stay as they are
    encoder.token_head.requires_grad_(True)
    optimizer = adamw(encoder.token_head.parameters(), lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(np.ascontiguousarray(windows, np.float32))
    history = []
    for _ in tqdm(range(steps), desc="fine-tuning the token projector", disable=not progress, leave=False):
        idx = torch.randperm(len(xs), generator=generator)[:batch_size]
        tokens = encoder(xs[idx].to(device), heads=("tokens",))["tokens"]  # [b, K, C]
        loss = torch.nn.functional.mse_loss(tokens, target[idx.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    encoder.requires_grad_(False)
    return history


# ----------------------------------------------------------------------------- the model folder


def default_name(method: str, subject: str, minutes: float) -> str:
    """``adapt-<method>-<subject>-<minutes>min``, e.g. ``adapt-glfa-03-10min``."""
    return f"adapt-{method}-{subject}-{minutes:g}min"


def trained_config(model_dir: str | Path):
    """The config a trained decoder model folder was trained with (``model.json``'s ``config``), validated."""
    from glfa.config import validate_config
    from glfa.pipeline import MODEL_INFO, read_model_info

    return validate_config(read_model_info(Path(model_dir))["config"], str(Path(model_dir) / MODEL_INFO))


def adapt_model(run_dir: str | Path, *, subject: str, minutes: float, method: str = "glfa", name: str | None = None,
                base: str = "glfa", config=None, store=None, progress: bool = True) -> Path:
    """Adapt the run's trained model ``base`` to ``subject`` on its first ``minutes``; returns the new model folder.

    Parameters
    ----------
    run_dir : the run folder holding ``cotrain-<base>/model`` (a stage-2 model with GLFA).
    subject, minutes : the new subject and how much of its training-split fMRI to fit on.
    method : ``glfa``, ``linear`` or ``full`` (module docstring).
    name : the new method's name, ``RUN/cotrain-<name>/model`` (default :func:`default_name`).
    config : a GlfaConfig whose ``adapt`` section is used (default: the base model's saved config,
        :func:`trained_config`).
    store : the study store or its path (default: the one the base model was trained on).
    """
    from glfa.data.store import StudyStore
    from glfa.devices import resolve_device
    from glfa.generate import model_dir_for
    from glfa.models.encoder import FmriEncoder
    from glfa.pipeline import ENCODER_DIR, MODEL_INFO, NEGATIVE, UNET_TRAINABLE, read_model_info
    from glfa.io import install_dir, write_json_atomic

    if method not in METHODS:
        raise ConfigError(f"unknown adaptation method {method!r}; expected one of {list(METHODS)}", field="--method")
    run_dir = Path(run_dir)
    base_dir = model_dir_for(run_dir, base)
    info = read_model_info(base_dir)
    if info["kind"] != "cotrain" or info.get("adaptation"):
        raise CheckpointError(f"method {base!r} is not a co-trained cross-subject model (kind {info['kind']!r}"
                              f"{', itself adapted' if info.get('adaptation') else ''}); adaptation starts from one "
                              "trained with GLFA (glfa train cotrain)", path=base_dir / MODEL_INFO, field="--base")
    name = name if name is not None else default_name(method, subject, minutes)
    if not _NAME.match(name) or name in (base, *OWN_FOLDER):
        raise ConfigError(f"the adapted model's name {name!r} names a new folder RUN/cotrain-<name>: use letters, "
                          f"digits, '.', '_' or '-', and not the base model's name or one of {list(OWN_FOLDER)}",
                          field="--name")
    target = RunLayout(run_dir).cotrain_model(name)
    if (target / MODEL_INFO).is_file() and not read_model_info(target).get("adaptation"):
        raise ConfigError("holds a trained model that is not an adaptation; choose another name",
                          path=target, field="--name")
    if config is None:
        config = trained_config(base_dir)
    if not isinstance(store, StudyStore):
        store = StudyStore.open(store if store is not None else info["store"])
    encoder = FmriEncoder.from_pretrained(base_dir / ENCODER_DIR)
    if encoder.glfa is None:
        raise CheckpointError("the encoder has no GLFA layer; adaptation starts from a model co-trained with GLFA",
                              path=base_dir / ENCODER_DIR, field="--base")
    train = [str(s) for s in info["train_subjects"]]
    windows, used = adaptation_windows(store, subject, train, minutes)
    frames, groups = window_frames(store, [subject, *train], windows)
    x = frames.pop(subject)
    a = config.adapt
    denoising = None if method == "linear" or a.denoising_weight == 0 else DenoisingTerm.for_model(
        base_dir, store, subject, windows, weight=a.denoising_weight, batch_size=a.denoising_batch_size, seed=a.seed,
        device=resolve_device(config.device), progress=progress)
    adapter = SubjectAdapter.from_config(config, method).fit(x, frames, encoder.glfa, groups, store.mask,
                                                             denoising=denoising, progress=progress)
    del x, frames
    record: dict[str, Any] = {
        "method": method, "subject": subject, "minutes": minutes, "minutes_used": used, "base_method": base,
        "base_model": str(base_dir.resolve()), "split": "train", "windows": [w.index for w in windows],
        "stimuli": list(dict.fromkeys(w.stimulus_id for w in windows)), "frames": int(len(groups)),
        "settings": config.adapt.model_dump(mode="json"), "fit_seconds": adapter.fit_seconds_}
    if method == "linear":
        record["alphas"] = [None if math.isnan(a) else float(a) for a in adapter.alphas_]
    else:
        encoder.glfa.load_state_dict(adapter.subject_layer_.state_dict())
        record["loss_first"], record["loss_last"] = adapter.loss_history_[0], adapter.loss_history_[-1]
    if method == "full":
        fmri = {s: np.stack([store.fmri(s, w) for w in windows]) for s in [subject, *train]}  # [B, n, H, W] each
        start = time.perf_counter()
        losses = fine_tune_projector(encoder, FmriEncoder.from_pretrained(base_dir / ENCODER_DIR), fmri.pop(subject),
                                     fmri, steps=config.adapt.projector_steps,
                                     batch_size=config.adapt.projector_batch_size,
                                     learning_rate=config.adapt.projector_learning_rate, seed=config.adapt.seed,
                                     progress=progress)
        record.update(projector_loss_first=losses[0], projector_loss_last=losses[-1],
                      projector_seconds=time.perf_counter() - start)

    with install_dir(target) as tmp:
        encoder.save_pretrained(tmp / ENCODER_DIR)
        for file in (NEGATIVE, UNET_TRAINABLE):
            shutil.copy2(base_dir / file, tmp / file)
        if method == "linear":
            save_subject_map(adapter.subject_map_, tmp / SUBJECT_MAP)
        write_json_atomic(tmp / MODEL_INFO, {**info, "method": name, "adaptation": record})
    return target


# ----------------------------------------------------------------------------- the data-efficiency sweep


def subject_front_end(model_dir: str | Path) -> nn.Module | None:
    """What takes a subject's frames ``[N, H, W]`` into a decoder's common space: its encoder's GLFA layer,
    after the linear subject map of ``glfa adapt --method linear``; None for a model without GLFA."""
    from glfa.models.encoder import FmriEncoder
    from glfa.pipeline import ENCODER_DIR, read_model_info

    model_dir = Path(model_dir)
    layer = FmriEncoder.from_pretrained(model_dir / ENCODER_DIR).glfa
    if layer is None:
        return None
    if read_model_info(model_dir).get("adaptation", {}).get("method") == "linear":
        return nn.Sequential(load_subject_map(model_dir / SUBJECT_MAP), layer).eval()
    return layer.eval()


#: The metrics whose brain signal (matched minus mismatched) the data-efficiency table shows.
SIGNAL_METRICS = ("frame-2way", "ssim")


@dataclass
class AdaptationSetting:
    """One row of the data-efficiency table: a decoder of the new subject and what it scored.

    ``role`` is ``floor`` (the zero-shot model), ``adapted`` or ``ceiling`` (the within-subject
    model); ``alignment`` holds ``fsc`` (``{"mean", "std", "n"}`` over test time points: the mean
    fSC with the trained subjects), ``isc`` and ``decoding`` (:func:`~glfa.metrics.decoding.inter_subject_decoding`),
    empty for a model without GLFA; ``video`` the ``{"mean", "std", "n"}`` over clips of every metric
    that :func:`glfa.evaluation.score_clips` computes, ``scores`` the per-clip values, ``brain_signal``
    each metric's matched and mismatched means, their difference and its permutation p-value;
    ``retrieval`` the stage-1 encoder's brain-to-video retrieval of the subject's test windows through
    the setting's front end (:func:`subject_front_end`), ``{"1": ..., "5": ...}`` as
    :func:`glfa.evaluation.brain_retrieval` records each top (hit rate, chance, mismatched, p);
    empty when the run has no stage-1 encoder (``not_computed`` says so).
    """

    role: str
    method: str
    minutes: float | None
    model: str
    minutes_used: float | None
    windows: int | None
    fit_seconds: float | None
    alignment: dict[str, Any]
    video: dict[str, dict[str, float]]
    scores: dict[str, list[float]]
    brain_signal: dict[str, dict[str, float]]
    retrieval: dict[str, dict[str, float]]
    not_computed: dict[str, str]

    @property
    def label(self) -> str:
        """``zero-shot (floor)``, ``glfa, 10 min``, ``within-subject (ceiling)``."""
        if self.role == "adapted":
            return f"{self.method}, {self.minutes:g} min"
        return f"{self.method} ({self.role})"


@dataclass
class AdaptationTable:
    """The data-efficiency sweep of one new subject: floor, adapted settings in order, ceiling."""

    run_dir: str
    subject: str
    base: str
    train_subjects: list[str]
    labels: str
    settings: list[AdaptationSetting]
    config: dict[str, Any]
    skipped: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {**{k: v for k, v in asdict(self).items() if k != "settings"},
                "settings": [{**asdict(s), "label": s.label} for s in self.settings]}

    def to_markdown(self) -> str:
        """The table: one row per setting, mean ± std (over test time points or clips), and notes."""
        metrics = list(dict.fromkeys(k for s in self.settings for k in s.video))
        signals = [m for m in SIGNAL_METRICS if any(m in s.brain_signal for s in self.settings)]
        tops = list(dict.fromkeys(t for s in self.settings for t in s.retrieval))
        head = ["Setting", "minutes used", "windows", "fSC with trained", "ISC", f"decoding {self.labels}",
                "mismatched", *[f"retrieval top-{t} (chance)" for t in tops], *metrics,
                *[f"{m}: matched - mismatched (p)" for m in signals], "fit (s)"]
        lines = [f"## Adapting to subject {self.subject} ({','.join(self.train_subjects)} -> {self.subject})", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in self.settings:
            a = s.alignment
            cells = [s.label, _fmt(s.minutes_used), _fmt(s.windows), _mean_std(a.get("fsc")), _fmt(a.get("isc")),
                     _fmt(a.get("decoding", {}).get("accuracy")), _fmt(a.get("decoding", {}).get("mismatched")),
                     *[_hits(s.retrieval.get(t)) for t in tops], *[_mean_std(s.video.get(m)) for m in metrics],
                     *[_signal(s.brain_signal.get(m)) for m in signals], _fmt(s.fit_seconds, 1)]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"Test windows of subject {self.subject}. fSC: mean ± std over test time points of its spatial "
                 "correlation with the trained subjects (their responses through the base model's GLFA layer, "
                 "its through the setting's own); decoding: inter-subject decoding (Bazeille et al. 2021), "
                 "mismatched beside it; retrieval: the true clip among the test clips' top-k by the stage-1 "
                 "encoder's CLIP-space embedding of the fMRI (through the setting's own front end); video "
                 "metrics: mean ± std over clips. —: not applicable."]
        reasons = dict.fromkeys(f"{m}: {why}" for s in self.settings for m, why in s.not_computed.items())
        return "\n".join(lines) + "\n\n" + "\n\n".join(notes + list(reasons) + self.skipped) + "\n"


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _mean_std(summary: dict[str, float] | None) -> str:
    return "—" if not summary else mean_std(summary)


def _hits(record: dict[str, float] | None) -> str:
    return "—" if not record else f"{record['matched']:.3f} ({record['chance']:.3f})"


def _signal(record: dict[str, float] | None) -> str:
    return "—" if not record else f"{record['difference']:+.3f} (p {record['p']:.3g})"


def _generations(run_dir: Path, method: str, subject: str, store, config, device, progress: bool) -> Path:
    """``method``'s clips of ``subject``'s test windows of ``store``, decoded again unless newer than its model."""
    from glfa.generate import decoded_store_tag, generate, model_dir_for
    from glfa.pipeline import MODEL_INFO, read_model_info

    model_dir = model_dir_for(run_dir, method)
    tag = decoded_store_tag(read_model_info(model_dir), store)
    folder = RunLayout(run_dir).generations(method, subject, "test", tag)
    index, model = folder / GENERATIONS_INDEX, model_dir / MODEL_INFO
    if index.is_file() and index.stat().st_mtime >= model.stat().st_mtime:
        return folder
    return generate(run_dir, method=method, subject=subject, split="test", store=store, config=config,
                    device=device, progress=progress)


def _adapted(run_dir: Path, *, subject: str, minutes: float, method: str, base: str, config, store,
             progress: bool) -> Path:
    """The adapted model folder of one setting: reused when its record matches, else fitted."""
    from glfa.pipeline import read_model_info

    target = RunLayout(run_dir).cotrain_model(default_name(method, subject, minutes))
    if (target / "model.json").is_file():
        record = read_model_info(target).get("adaptation", {})
        if (record.get("settings") == config.adapt.model_dump(mode="json") and record.get("base_method") == base
                and record.get("method") == method and record.get("minutes") == minutes):
            return target
    return adapt_model(run_dir, subject=subject, minutes=minutes, method=method, base=base, config=config,
                       store=store, progress=progress)


def evaluate_adaptation(run_dir: str | Path, *, subject: str, minutes: list[float], methods: list[str],
                        base: str = "glfa", ceiling: str = "within", config=None, store=None,
                        labels: dict[str, str] | None = None, labels_name: str = "clip id",
                        device: str | None = None, progress: bool = True) -> AdaptationTable:
    """The data-efficiency sweep: adapt -> generate -> score for every method and number of minutes.

    Parameters
    ----------
    run_dir : the run folder with the trained cross-subject model ``cotrain-<base>``.
    subject : the new subject (its training-split windows adapt, its test windows are scored).
    minutes : the data sizes; 0 is the zero-shot base model (the floor).
    methods : adaptation methods (``glfa``, ``linear``, ``full``).
    ceiling : the run's within-subject method (a model trained on ``subject`` alone); reported when present.
    config : its ``adapt``, ``generation`` and ``evaluation`` sections (default: the base model's saved config).
    labels : {stimulus: class} of the decoding column (default: every clip its own class).
    """
    from glfa.align import apply_frames, responses_from_store, timepoint_stimuli
    from glfa.data.store import StudyStore
    from glfa.devices import resolve_device
    from glfa.evaluation import GenerationsFolder, Scorers, brain_retrieval, score_clips, timepoint_labels
    from glfa.generate import available_methods, model_dir_for
    from glfa.metrics.alignment import fsc_per_timepoint, isc
    from glfa.metrics.decoding import inter_subject_decoding
    from glfa.metrics.video import summarize
    from glfa.pipeline import read_model_info

    run_dir = Path(run_dir)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"expected adaptation methods among {list(METHODS)}, got {methods}", field="--methods")
    if any(not (isinstance(m, (int, float)) and math.isfinite(m) and m >= 0) for m in minutes) or not minutes:
        raise DataError(f"expected minutes >= 0, got {minutes}", field="--minutes")
    base_dir = model_dir_for(run_dir, base)
    info = read_model_info(base_dir)
    config = config if config is not None else trained_config(base_dir)
    store = store if isinstance(store, StudyStore) else StudyStore.open(store if store is not None else info["store"])
    train = [str(s) for s in info["train_subjects"]]
    for m in sorted(set(minutes) - {0}):  # every data size must fit before anything is fitted
        adaptation_windows(store, subject, train, m)

    plan: list[tuple[str, str, float | None, Path]] = []  # (role, method, minutes, model folder)
    if 0 in minutes:
        plan.append(("floor", "zero-shot", 0.0, base_dir))
    for method in methods:
        for m in sorted(set(minutes) - {0}):
            plan.append(("adapted", method, float(m), _adapted(run_dir, subject=subject, minutes=float(m),
                                                                  method=method, base=base, config=config,
                                                                  store=store, progress=progress)))
    skipped = []
    if ceiling in available_methods(run_dir):
        plan.append(("ceiling", "within-subject", None, model_dir_for(run_dir, ceiling)))
    else:
        skipped.append(f"ceiling: no `{ceiling}` model in this run; train the within-subject model on subject "
                       f"{subject} (README, the within-subject protocol) to add it")

    mask = store.mask
    test = responses_from_store(store, [*train, subject], "test")  # {s: [t, h, w]}
    stimuli = timepoint_stimuli(store, [*train, subject], "test")
    classes = timepoint_labels(stimuli, labels)
    base_layer = subject_front_end(base_dir)
    trained = {s: apply_frames(base_layer, test[s]) for s in train}
    device_ = resolve_device(config.device)
    ev = config.evaluation
    scorers = Scorers.from_config(config, device_)
    settings = []
    for role, method, m, model_dir in plan:
        name = RunLayout(run_dir).method_of(model_dir)
        folder = GenerationsFolder.open(_generations(run_dir, name, subject, store, config, device, progress), run_dir)
        decoded, truth = folder.videos()
        scores, _, signal, not_computed = score_clips(decoded, truth, ev, scorers, folder.stimuli())
        record = read_model_info(model_dir).get("adaptation", {})
        front = subject_front_end(model_dir)
        alignment: dict[str, Any] = {}
        if front is not None:
            mine = apply_frames(front, test[subject])
            alignment = {
                "fsc": summarize(np.nanmean([fsc_per_timepoint(mine, x, mask) for x in trained.values()], axis=0)),
                "isc": float(isc({**trained, subject: mine}, mask)[subject]),
                "decoding": inter_subject_decoding(trained, mine, classes, stimuli, mask)}
        retrieval, why = brain_retrieval(run_dir, [folder], scorers, ev, device_, store, front_end=front)
        if why:
            not_computed["retrieval"] = "; ".join(why)
        settings.append(AdaptationSetting(
            role=role, method=method, minutes=m, model=name, minutes_used=record.get("minutes_used"),
            windows=len(record["windows"]) if record else None, fit_seconds=record.get("fit_seconds"),
            alignment=alignment, video={k: summarize(v) for k, v in scores.items()}, scores=scores,
            brain_signal={k: {f: v[f] for f in ("matched", "mismatched", "difference", "p")}
                          for k, v in signal.items()}, retrieval=retrieval[0]["top"] if retrieval else {},
            not_computed=not_computed))
    return AdaptationTable(run_dir=str(run_dir), subject=subject, base=base, train_subjects=train, labels=labels_name,
                           settings=settings, config=config.to_dict(), skipped=skipped)


def write_adaptation_table(table: AdaptationTable, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``adaptation-<subject>.json`` and ``.md`` atomically (default ``RUN/evaluation``)."""
    from glfa.io import write_bytes_atomic, write_json_atomic

    out = Path(out_dir) if out_dir is not None else RunLayout(table.run_dir).evaluation
    paths = {"json": out / f"adaptation-{table.subject}.json", "markdown": out / f"adaptation-{table.subject}.md"}
    write_json_atomic(paths["json"], table.to_dict())
    write_bytes_atomic(paths["markdown"], table.to_markdown().encode())
    return paths
