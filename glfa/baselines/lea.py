"""LEA: the paper's baseline (Qian et al.), ridge regression from fMRI latents to text tokens.

LEA maps the fMRI encoder's latent of a window to the base video generator's text-token
embeddings of the window's caption with ridge regression; the predicted tokens then condition
the same text-to-video generator (through :class:`glfa.pipeline.FmriToVideoPipeline`, with the
prediction for the mean training fMRI window as the negative condition).

- Latent (:func:`encoder_latent`): the fMRI-PTE latent of the stage-1 encoder
  (``RUN/contrastive/encoder``, GLFA off), the [CLS] tokens of the window's n frames concatenated
  (``[B, n * D]``, D = ``model.pte.embed_dim``), as LEA regresses from the fMRI-PTE latent; stage 1
  trains it towards CLIP space (the authors' linear CLIP head is one linear map of it).
- Target: ``VideoGenerator.encode_text`` of the caption of the window's middle video frame
  (frame ``m // 2`` of its ``m``), ``[K, C]`` flattened to ``K * C``.
- Samples: every training subject's response to every training window (held-out subjects and
  test windows are never read); cross-validation folds split by stimulus, so overlapping windows
  of one clip (near-identical fMRI, the same caption) never sit on both sides of a fold.

:class:`RidgeCV` picks the penalty from ``config.lea.alphas`` by ``config.lea.cv_folds``-fold
cross-validation on the mean squared error, then refits on every sample. The result is a decoder
model folder, ``RUN/lea/model/``::

    model.json            kind "lea", method "lea", generator, store, subjects, config, num_frames,
                          image_size, plus the chosen alpha and the cross-validation errors
    negative.safetensors  mean_fmri [n, H, W], tokens [K, C] (the prediction for mean_fmri)
    encoder/              the encoder whose latent LEA reads (FmriEncoder.save_pretrained)
    ridge.safetensors     coef [K*C, n*D], intercept [K*C], x_mean [n*D], alpha [1], token_shape [2] = (K, C)

:class:`LeaDecoder` loads it and predicts tokens for fMRI windows; :mod:`glfa.baselines.blurry` reuses
the ridge, the latent and the folder layout for VAE latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glfa.config import GlfaConfig
from glfa.errors import BackboneError, CheckpointError, DataError, NotFittedError
from glfa.runs import LEA, RunLayout, default_run_dir

MODEL_INFO = "model.json"
NEGATIVE = "negative.safetensors"
ENCODER_DIR = "encoder"
RIDGE = "ridge.safetensors"
_RIDGE_KEYS = ("coef", "intercept", "x_mean", "alpha")


# ----------------------------------------------------------------------------- ridge regression


def _group_folds(groups: np.ndarray, cv: int, seed: int) -> list[np.ndarray]:
    """Validation indices of ``cv`` folds that keep every group whole (groups dealt out after a seeded shuffle)."""
    names, index = np.unique(groups, return_inverse=True)
    if len(names) < cv:
        raise DataError(f"{cv}-fold cross-validation needs at least {cv} groups of samples, got {len(names)}",
                        field="groups")
    fold_of_group = np.empty(len(names), dtype=np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(len(names))] = np.arange(len(names)) % cv
    fold = fold_of_group[index]  # [n]
    return [np.flatnonzero(fold == k) for k in range(cv)]


class _CenteredSVD:
    """Thin SVD of the centred features of a training set: ``X - x_mean = U diag(s) Vt``."""

    def __init__(self, x: np.ndarray):
        self.x_mean = x.mean(axis=0)
        self.u, self.s, self.vt = np.linalg.svd(x - self.x_mean, full_matrices=False)  # [n, r], [r], [r, d]

    def shrink(self, alpha: float) -> np.ndarray:
        """The ridge filter factors ``s / (s^2 + alpha)``, ``[r]``."""
        return self.s / (self.s**2 + alpha)


class RidgeCV:
    """Multi-output ridge regression with the penalty chosen by (group) k-fold cross-validation.

    Closed form through the thin SVD of the centred features, ``X - x_mean = U S V^T``:
    ``coef = V diag(s / (s^2 + alpha)) U^T (Y - y_mean)``, which serves both N > D and N < D
    (the SVD has min(N, D) components). Targets are processed in blocks of ``block_size``
    columns, and each fold's validation error for every alpha comes from r x r products
    (no prediction is formed), so wide targets (K * C = 78,848 for zeroscope) fit in memory.

    Parameters
    ----------
    alphas : sequence of float
        Penalties tried (positive).
    cv : int
        Folds (at least 2); with ``groups`` a group never straddles two folds.
    random_state : int
        Seed of the shuffle that deals samples (or groups) into folds.
    block_size : int
        Target columns per block.

    Attributes
    ----------
    alpha_ : float
        The penalty with the lowest cross-validated mean squared error (the first on ties).
    cv_scores_ : float64 ``[len(alphas)]``
        Mean squared error of each alpha over every held-out sample and target of every fold.
    coef_ : float64 ``[n_targets, n_features]``
        Weights refitted on every sample with ``alpha_``.
    intercept_ : float64 ``[n_targets]``
        The intercept of the centred model, the training targets' mean:
        ``predict(X) = (X - x_mean_) @ coef_.T + intercept_`` (sklearn's ``intercept_`` is
        ``intercept_ - x_mean_ @ coef_.T``).
    x_mean_ : float64 ``[n_features]``
    """

    def __init__(self, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0), cv: int = 5, *, random_state: int = 0,
                 block_size: int = 4096):
        self.alphas = alphas
        self.cv = cv
        self.random_state = random_state
        self.block_size = block_size

    def _check(self, x, y, groups, y_rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y)
        rows = np.arange(len(x)) if y_rows is None else np.asarray(y_rows)
        if x.ndim != 2 or y.ndim != 2 or (y_rows is None and len(x) != len(y)):
            raise DataError(f"expected X [n, features] and Y [n, targets] with the same n, got {x.shape} and "
                            f"{y.shape}", field="Y")
        if rows.shape != (len(x),) or not np.issubdtype(rows.dtype, np.integer) or \
                (rows.size and (rows.min() < 0 or rows.max() >= len(y))):
            raise DataError(f"expected one row index of Y (0 to {len(y) - 1}) per sample ({len(x)}), got "
                            f"{rows.dtype} of shape {rows.shape}", field="y_rows")
        for name, a in (("X", x), ("Y", y)):
            if not np.all(np.isfinite(a)):
                raise DataError("contains NaN or infinite values", field=name)
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        if alphas.size == 0 or np.any(alphas <= 0):
            raise DataError(f"expected positive penalties, got {list(alphas)}", field="alphas")
        if int(self.cv) < 2:
            raise DataError(f"expected at least 2 folds, got {self.cv}", field="cv")
        groups = np.arange(len(x)) if groups is None else np.asarray(groups)
        if groups.shape != (len(x),):
            raise DataError(f"expected one group per sample ({len(x)}), got shape {groups.shape}", field="groups")
        return x, y, groups, rows

    def _blocks(self, width: int):
        step = max(1, int(self.block_size))
        return (slice(i, min(i + step, width)) for i in range(0, width, step))

    def _fold_errors(self, x, y, rows, train: np.ndarray, val: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """Summed squared validation error of every alpha for one fold, ``[len(alphas)]``.

        With ``P = (X_val - x_mean) V``, ``M = U^T (Y_train - y_mean)`` and ``d = s / (s^2 + alpha)``,
        the validation prediction is ``P diag(d) M``, so ``||Y_val - y_mean - P diag(d) M||^2 =
        ||Y_val - y_mean||^2 - 2 d . c + d^T (P^T P * M M^T) d`` with ``c_r = (P^T (Y_val - y_mean))_r . M_r``.
        """
        svd = _CenteredSVD(x[train])
        p = (x[val] - svd.x_mean) @ svd.vt.T  # [v, r]
        r = len(svd.s)
        total, cross, mm = 0.0, np.zeros(r), np.zeros((r, r))
        for block in self._blocks(y.shape[1]):
            y_train = y[rows[train], block].astype(np.float64)  # [t, b]
            y_mean = y_train.mean(axis=0)
            m = svd.u.T @ (y_train - y_mean)  # [r, b]
            y_val = y[rows[val], block].astype(np.float64) - y_mean  # [v, b]
            total += float(np.einsum("vb,vb->", y_val, y_val))
            cross += np.einsum("rb,rb->r", p.T @ y_val, m)
            mm += m @ m.T
        g = (p.T @ p) * mm  # [r, r]
        errors = []
        for alpha in alphas:
            d = svd.shrink(alpha)
            errors.append(total - 2 * d @ cross + d @ g @ d)
        return np.maximum(np.array(errors), 0.0)

    def fit(self, X, Y, groups=None, *, y_rows=None) -> RidgeCV:
        """Choose ``alpha_`` by cross-validation on ``X`` ``[n, features]`` -> ``Y`` ``[n, targets]``, refit on all.

        ``groups`` (``[n]``, any labels) keeps samples that share a label in one fold. ``y_rows``
        (``[n]`` integers) makes ``Y`` a table of distinct targets, sample ``i``'s being
        ``Y[y_rows[i]]``: samples that share a target (every subject's response to one stimulus)
        then share one row in memory instead of a copy each.
        """
        x, y, groups, rows = self._check(X, Y, groups, y_rows)
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        errors = np.zeros(len(alphas))
        everyone = np.arange(len(x))
        for val in _group_folds(groups, int(self.cv), self.random_state):
            errors += self._fold_errors(x, y, rows, np.setdiff1d(everyone, val), val, alphas)
        self.cv_scores_ = errors / (len(x) * y.shape[1])
        self.alpha_ = float(alphas[int(np.argmin(self.cv_scores_))])
        svd = _CenteredSVD(x)
        d = svd.shrink(self.alpha_)
        self.coef_ = np.empty((y.shape[1], x.shape[1]))
        self.intercept_ = np.empty(y.shape[1])
        for block in self._blocks(y.shape[1]):
            y_block = y[rows, block].astype(np.float64)
            self.intercept_[block] = y_block.mean(axis=0)
            m = svd.u.T @ (y_block - self.intercept_[block])  # [r, b]
            self.coef_[block] = (m.T * d) @ svd.vt  # [b, d]
        self.x_mean_ = svd.x_mean
        return self

    def predict(self, X) -> np.ndarray:
        """``[n, features]`` -> float64 ``[n, targets]``."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("this RidgeCV is not fitted yet; call fit first")
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef_.shape[1]:
            raise DataError(f"expected X [n, {self.coef_.shape[1]}], got {x.shape}", field="X")
        return (x - self.x_mean_) @ self.coef_.T + self.intercept_


# ----------------------------------------------------------------------------- latent and targets


def encoder_latent(encoder, fmri: torch.Tensor) -> torch.Tensor:
    """The encoder's PTE latent ``[B, n * D]`` for fMRI windows ``[B, n, H, W]`` (no gradient, dropout off)."""
    training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            cls = encoder(fmri, heads=("cls",))["cls"]  # [b, n, d]
    finally:
        encoder.train(training)
    return cls.flatten(1)


def aligned_images(encoder, fmri: torch.Tensor, pool: int) -> torch.Tensor:
    """The encoder's GLFA-aligned flat images, average-pooled to ``pool x pool``: ``[B, n, H, W]`` -> ``[B, n*pool*pool]``.

    The raw images when the encoder has no GLFA layer. Pooling keeps the coarse retinotopic
    layout a low-level readout needs and averages out what alignment leaves misregistered.
    """
    with torch.no_grad():
        aligned = encoder.align(fmri.float())  # [b, n, H, W]
    return torch.nn.functional.adaptive_avg_pool2d(aligned, pool).flatten(1)


def readout_features(encoder, fmri: torch.Tensor, features: str = "latent", pool: int | None = None) -> torch.Tensor:
    """What a ridge readout reads from fMRI ``[B, n, H, W]``: :func:`encoder_latent` or :func:`aligned_images`."""
    if features == "latent":
        return encoder_latent(encoder, fmri)
    if features == "aligned":
        return aligned_images(encoder, fmri, int(pool))
    raise DataError(f"expected 'latent' or 'aligned', got {features!r}", field="features")


def window_caption(store, window) -> str:
    """The caption LEA regresses onto: the caption of the window's middle video frame."""
    captions = store.captions(window)
    return captions[len(captions) // 2]


# ----------------------------------------------------------------------------- fitting


def load_encoder(encoder_dir: Path, store, device: torch.device):
    """The saved FmriEncoder, checked against the store's image size and window length."""
    from glfa.models.encoder import FmriEncoder

    if not (encoder_dir / "config.json").is_file():
        raise CheckpointError("no fMRI encoder here (expected RUN/contrastive/encoder, written by "
                              "`glfa train contrastive`, or a folder of FmriEncoder.save_pretrained)", path=encoder_dir)
    encoder = FmriEncoder.from_pretrained(encoder_dir, map_location=device).eval().requires_grad_(False)
    if (encoder.image_size, encoder.num_frames) != (store.image_size, store.fmri_frames):
        raise CheckpointError(f"the encoder reads [{encoder.num_frames}, {encoder.image_size}, {encoder.image_size}] "
                              f"windows, the store holds [{store.fmri_frames}, {store.image_size}, "
                              f"{store.image_size}]", path=encoder_dir)
    store.check_geometry(encoder.geometry, encoder_dir)
    return encoder


@dataclass
class RidgeProblem:
    """A ridge readout of the stage-1 encoder's latent, ready to fit: the loaded parts and the samples.

    The samples are every training subject's response to every training window (held-out
    subjects and test windows are never read); ``groups`` (their stimulus ids) keep a stimulus
    in one cross-validation fold. :meth:`prepare` loads and checks everything; :meth:`fit` and
    :meth:`info` use the config section ``section`` (``lea`` or ``blurry``: alphas, cv_folds).
    """

    config: GlfaConfig
    section: str
    store: Any
    run_dir: Path
    encoder_dir: Path
    encoder: Any
    generator: Any
    train_subjects: list[str]
    held_out: list[str]
    samples: list
    groups: np.ndarray

    @classmethod
    def prepare(cls, config: GlfaConfig, section: str, store, run_dir: str | Path | None,
                encoder_dir: str | Path | None, generator: str | Path | None, *, predicts: str,
                with_text_encoder: bool, default_encoder: str | None = None) -> RidgeProblem:
        """Open the store, load the encoder and generator, list the samples; errors name what is wrong.

        ``predicts`` completes the error for a missing generator ("... whose <predicts> it predicts");
        the encoder is ``encoder_dir``, else the one of the run's decoder of method ``default_encoder``,
        else (None) the stage-1 encoder ``RUN/contrastive/encoder``.
        """
        from glfa.backbones import load_video_generator
        from glfa.data.store import StudyStore
        from glfa.devices import resolve_device

        if isinstance(store, (str, Path)):
            store = StudyStore.open(store)
        train_subjects, held_out = config.check_subjects(store.subjects)
        run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
        if encoder_dir is None:
            run = RunLayout(run_dir)
            encoder_dir = run.stage1_encoder if default_encoder is None else \
                run.model_dir(default_encoder) / ENCODER_DIR
        generator_path = generator if generator is not None else config.cotrain.generator
        if generator_path is None:
            raise config.error("cotrain.generator", "no video generator: set cotrain.generator to the diffusers "
                               f"text-to-video folder whose {predicts} it predicts, or pass --generator DIR")
        encoder_dir = Path(encoder_dir)
        device = resolve_device(config.device)
        encoder = load_encoder(encoder_dir, store, device)
        gen = load_video_generator(generator_path, device=device, with_text_encoder=with_text_encoder)
        samples = [(s, w) for s in train_subjects for w in store.windows("train") if store.has(s, w.stimulus_id)]
        if not samples:
            raise DataError(f"no training window for subjects {train_subjects}", path=store.path)
        groups = np.array([w.stimulus_id for _, w in samples])
        folds = getattr(config, section).cv_folds
        if len(set(groups)) < folds:
            raise config.error(f"{section}.cv_folds", f"is {folds}, but the training split has "
                               f"{len(set(groups))} stimuli (folds split by stimulus)")
        return cls(config, section, store, run_dir, encoder_dir, encoder, gen, train_subjects, held_out, samples,
                   groups)

    def fit(self, x: np.ndarray, y: np.ndarray, y_rows: np.ndarray) -> RidgeCV:
        """:class:`RidgeCV` of the samples' latents ``x`` onto the target table ``y`` (sample i's row ``y_rows[i]``)."""
        settings = getattr(self.config, self.section)
        return RidgeCV(settings.alphas, cv=settings.cv_folds).fit(x, y, groups=self.groups, y_rows=y_rows)

    def info(self, kind: str, ridge: RidgeCV | None, target: str,
             latent: str = "the fMRI-PTE [CLS] tokens of the window's frames, concatenated") -> dict[str, Any]:
        """The ``model.json`` of the fitted readout (the keys every decoder model folder holds, and the ridge's
        penalty and cross-validation errors when it is one)."""
        generator = str(Path(self.generator.path).resolve())
        resolved = self.config.to_dict()
        resolved["cotrain"]["generator"] = generator
        info = {
            "kind": kind, "method": kind, "generator": generator, "store": str(Path(self.store.path).resolve()),
            "store_identity": self.store.identity, "train_subjects": self.train_subjects, "held_out": self.held_out,
            "config": resolved, "num_frames": self.store.fmri_frames, "image_size": self.store.image_size,
            "geometry": self.store.geometry,
            "encoder_source": str(self.encoder_dir.resolve()),
            "latent": latent, "target": target,
            "samples": len(self.samples), "stimuli": len(set(self.groups)),
        }
        if ridge is not None:
            info["alpha"] = ridge.alpha_
            info["cv_mse"] = {f"{a:g}": float(e) for a, e in
                              zip(np.ravel(getattr(self.config, self.section).alphas), ridge.cv_scores_)}
        return info


def fit_lea(config: GlfaConfig, store, run_dir: str | Path | None = None, *, encoder_dir: str | Path | None = None,
            generator: str | Path | None = None, batch_size: int = 16, progress: bool = True) -> Path:
    """Fit LEA on the training subjects' training windows; write ``RUN_DIR/lea/model/`` and return it.

    Parameters
    ----------
    config
        The experiment config (``subjects``, ``lea.alphas``, ``lea.cv_folds``, ``device``).
    store
        A store folder or an open :class:`~glfa.data.store.StudyStore`.
    run_dir
        The run folder (default ``output_dir/name``).
    encoder_dir
        The saved FmriEncoder whose latent LEA reads (default ``RUN_DIR/contrastive/encoder``).
    generator
        The base diffusers text-to-video folder (default ``config.cotrain.generator``); its text
        encoder gives the targets.
    batch_size
        Windows per encoder call and captions per text-encoder call.
    progress
        Show a progress bar.
    """
    problem = RidgeProblem.prepare(config, "lea", store, run_dir, encoder_dir, generator, predicts="text tokens",
                                   with_text_encoder=True)
    store, gen, encoder, samples = problem.store, problem.generator, problem.encoder, problem.samples
    if gen.text_encoder is None:
        raise BackboneError("the generator has no text_encoder/ and tokenizer/: LEA predicts its text tokens",
                            path=gen.path)
    y, y_rows, token_shape = _targets(gen, [window_caption(store, w) for _, w in samples], batch_size, store.path)
    x, mean_fmri = sample_latents(encoder, store, samples, batch_size, progress)
    ridge = problem.fit(x, y, y_rows)
    device = next(encoder.parameters()).device
    negative_latent = encoder_latent(encoder, torch.from_numpy(mean_fmri)[None].to(device)).double().cpu().numpy()
    negative = ridge.predict(negative_latent).reshape(token_shape)  # [K, C]
    target = RunLayout(problem.run_dir).model_dir(LEA)
    write_ridge_model(target, problem.info("lea", ridge, "generator text tokens of the middle frame's caption"),
                      encoder, ridge, "token_shape", token_shape,
                      extra={NEGATIVE: {"mean_fmri": mean_fmri, "tokens": negative}})
    return target


def _targets(generator, captions: list[str], batch_size: int, store_path) -> tuple[np.ndarray, np.ndarray,
                                                                                   tuple[int, int]]:
    """(float32 ``[u, K*C]`` text tokens of each distinct caption, each sample's row in it ``[N]``, (K, C)).

    Each distinct caption is encoded and held once: every training subject's response to a window
    shares its row. For Wen 2017 (two training subjects, K * C = 78,848) LEA's largest array
    falls from about 2.7 GB (a row per sample) to at most half of that.
    """
    unique = sorted(set(captions))
    if not any(c.strip() for c in unique):
        raise DataError("every training window's caption is empty: LEA regresses onto caption embeddings; "
                        "caption the videos first (`glfa caption STORE --model BLIP2_DIR`)", path=store_path)
    tokens = [generator.encode_text(unique[i:i + batch_size]).float().cpu().numpy()
              for i in range(0, len(unique), batch_size)]
    targets = np.concatenate(tokens)  # [u, K, C]
    row = {c: i for i, c in enumerate(unique)}
    return targets.reshape(len(unique), -1), np.array([row[c] for c in captions]), targets.shape[1:]


def sample_latents(encoder, store, samples: list, batch_size: int, progress: bool, features: str = "latent",
                   pool: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float64 :func:`readout_features` ``[N, D]`` of the (subject, window) samples, float32 mean window ``[n, H, W]``)."""
    from tqdm.auto import tqdm

    device = next(encoder.parameters()).device
    latents, total = [], np.zeros((store.fmri_frames, store.image_size, store.image_size))
    for start in tqdm(range(0, len(samples), batch_size), desc="lea latents", disable=not progress):
        fmri = np.stack([store.fmri(s, w) for s, w in samples[start:start + batch_size]])  # [b, n, H, W]
        total += fmri.sum(axis=0)
        latents.append(readout_features(encoder, torch.from_numpy(fmri).to(device), features, pool).double().cpu().numpy())
    return np.concatenate(latents), (total / len(samples)).astype(np.float32)


def write_ridge_model(target: Path, info: dict[str, Any], encoder, ridge: RidgeCV, shape_key: str,
                      shape: tuple[int, ...], extra: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    """Write a model folder that reads ``encoder``'s latent through ``ridge``, atomically.

    ``target`` receives ``model.json`` (``info``), ``encoder/``, ``ridge.safetensors`` (coef,
    intercept, x_mean, alpha and ``shape_key`` = ``shape``, the shape of one prediction) and one
    safetensors file per ``extra`` entry (file name -> arrays; float16 arrays stay float16, others are
    stored as float32), all written into a temporary
    folder beside ``target`` that is then moved into place.
    """
    from safetensors.torch import save_file

    from glfa.io import install_dir, write_json_atomic

    arrays = {"coef": ridge.coef_, "intercept": ridge.intercept_, "x_mean": ridge.x_mean_,
              "alpha": np.array([ridge.alpha_])}
    weights = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    weights[shape_key] = torch.tensor(shape, dtype=torch.int64)
    with install_dir(target) as tmp:
        encoder.save_pretrained(tmp / ENCODER_DIR)
        for name, tensors in (extra or {}).items():
            kept = {k: v if v.dtype == np.float16 else v.astype(np.float32) for k, v in tensors.items()}
            save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in kept.items()}, str(tmp / name))
        save_file(weights, str(tmp / RIDGE))
        write_json_atomic(tmp / MODEL_INFO, info)


# ----------------------------------------------------------------------------- decoding


def read_readout_info(model_dir: Path, kind: str, weights: dict[str, str]) -> dict[str, Any]:
    """``model.json`` of a readout model folder of ``kind``, once it and the saved encoder are there, and each
    of ``weights`` (file or folder name in ``model_dir`` -> what it holds); CheckpointError naming what is not."""
    from glfa.models.serialization import read_json_object

    info_path = model_dir / MODEL_INFO
    for path, what in ((info_path, "the model description"), *((model_dir / k, v) for k, v in weights.items()),
                       (model_dir / ENCODER_DIR / "config.json", "the saved fMRI encoder")):
        if not path.exists():
            raise CheckpointError(f"missing; expected {what} of a {kind} model folder written by `glfa train {kind}`",
                                  path=path)
    info = read_json_object(info_path)
    if info.get("kind") != kind:
        raise CheckpointError(f"kind is {info.get('kind')!r}, expected {kind!r}", path=info_path, field="kind")
    return info


class EncoderRidge:
    """fMRI windows -> a ridge prediction of shape ``shape`` from the saved encoder's latent.

    Parameters
    ----------
    encoder : FmriEncoder
    coef : ``[P, D]``, intercept : ``[P]``, x_mean : ``[D]`` (float32 tensors, see :class:`RidgeCV`)
    shape : tuple of int
        The shape of one prediction (its product is P).
    features, pool
        What it reads (:func:`readout_features`; ``model.json``'s ``features`` and ``pool``).
    """

    #: ``model.json``'s kind and the ridge file's shape tensor, set by each subclass.
    kind = ""
    shape_key = ""

    def __init__(self, encoder, coef: torch.Tensor, intercept: torch.Tensor, x_mean: torch.Tensor,
                 shape: tuple[int, ...], features: str = "latent", pool: int | None = None):
        self.encoder = encoder.eval().requires_grad_(False)
        self.coef, self.intercept, self.x_mean = coef, intercept, x_mean
        self.shape = tuple(int(v) for v in shape)
        self.features, self.pool = features, pool

    @property
    def device(self) -> torch.device:
        """Where the encoder and the ridge weights live."""
        return self.coef.device

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device | None = None):
        """Load a model folder of :attr:`kind` (written by :func:`write_ridge_model`); CheckpointError naming what is missing."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from glfa.devices import resolve_device
        from glfa.models.encoder import FmriEncoder

        model_dir = Path(model_dir)
        ridge_path = model_dir / RIDGE
        info = read_readout_info(model_dir, cls.kind, {RIDGE: "the ridge weights"})
        features, pool = info.get("features", "latent"), info.get("pool")
        try:
            tensors = load_file(ridge_path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"corrupt safetensors ({exc.__class__.__name__}: {exc})", path=ridge_path) from None
        keys = (*_RIDGE_KEYS, cls.shape_key)
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise CheckpointError(f"missing tensors {missing}; expected {list(keys)}", path=ridge_path)
        device = resolve_device(device)
        encoder = FmriEncoder.from_pretrained(model_dir / ENCODER_DIR, map_location=device)
        coef, intercept, x_mean = (tensors[k].float().to(device) for k in ("coef", "intercept", "x_mean"))
        shape = tuple(int(v) for v in tensors[cls.shape_key])
        size = int(np.prod(shape))
        per_frame = encoder.config.pte.embed_dim if features == "latent" else int(pool or 0) ** 2  # [CLS] or pooled image
        dim = encoder.num_frames * per_frame
        if coef.shape != (size, dim) or intercept.shape != (size,) or x_mean.shape != (dim,):
            raise CheckpointError(f"ridge shapes coef {list(coef.shape)}, intercept {list(intercept.shape)}, x_mean "
                                  f"{list(x_mean.shape)} do not fit predictions {list(shape)} from {features} "
                                  f"features of width {dim}", path=ridge_path)
        return cls(encoder, coef, intercept, x_mean, shape, features, pool)

    @torch.no_grad()
    def predict(self, fmri: torch.Tensor) -> torch.Tensor:
        """fMRI ``[B, n, H, W]`` -> float32 predictions ``[B, *shape]`` on :attr:`device`."""
        latent = readout_features(self.encoder, torch.as_tensor(fmri).float().to(self.device), self.features,
                                  self.pool)  # [b, d]
        flat = (latent - self.x_mean) @ self.coef.T + self.intercept  # [b, prod(shape)]
        return flat.reshape(len(flat), *self.shape)


class LeaDecoder(EncoderRidge):
    """fMRI windows -> predicted text tokens ``[B, K, C]`` (``RUN/lea/model``, written by :func:`fit_lea`)."""

    kind = "lea"
    shape_key = "token_shape"

    @property
    def token_shape(self) -> tuple[int, int]:
        """(K, C)."""
        return self.shape

    def tokens(self, fmri: torch.Tensor) -> torch.Tensor:
        """fMRI ``[B, n, H, W]`` -> float32 tokens ``[B, K, C]`` on :attr:`device`."""
        return self.predict(fmri)
