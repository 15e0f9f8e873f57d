"""The low-level ("blurry") decoder: fMRI -> the generator's VAE latents of the window's frames.

NeuroClips-style structure from the brain: a readout from fMRI features to the scaled VAE
latents of the window's stored frames (the stage-2 cache, :func:`glfa.data.features.vae_latents`),
``[c, m, h/s, w/s]``. The features (``blurry.features``) are the GLFA-aligned flat images
of the stage-2 GLFA encoder (``RUN/cotrain-glfa/model/encoder``) average-pooled to ``blurry.pool``
pixels a side (:func:`glfa.baselines.lea.aligned_images`: the coarse retinotopic layout, aligned
across subjects), or the stage-1 encoder's pooled latent as LEA reads it
(:func:`glfa.baselines.lea.encoder_latent`, semantic). It is fitted like LEA on every training
subject's response to every training window (held-out subjects and test windows are never read),
each window's latents held once and shared by every subject. Two kinds (``blurry.kind``):

- ``ridge``: a linear map from the flattened features to the flattened latents,
  :class:`~glfa.baselines.lea.RidgeCV` with folds split by stimulus (:class:`BlurryDecoder`);
- ``conv``: a small network from the pooled aligned images: a linear readout into a coarse map,
  then convolutions up to the latent grid, trained with MSE, keeping the step of the lowest
  MSE on held-out training stimuli (:class:`ConvLatentDecoder`, :class:`ConvBlurryDecoder`);
- ``retrieval``: a ridge from the features to the window's CLIP image embedding (stage 1's CLIP,
  the mean of its frames' embeddings), then the mean latents of the ``blurry.retrieval_k``
  training windows whose embeddings are closest to the prediction (cosine)
  (:class:`RetrievalBlurryDecoder`). Nishimoto et al. (2011) reconstructed movies the same way,
  averaging the prior clips that best explain the response; MindEye retrieves by CLIP embedding.
  A ridge to the latents themselves predicts their average over what the fMRI cannot tell apart,
  a grey blur on which an image classifier recognises little; the retrieved latents are real
  training frames' latents of what the fMRI reads, so their decoded frames keep the detail.

Its predicted latents serve twice:

- decoded by the VAE as they are, they are the "blurry" method's clips
  (``glfa generate RUN --method blurry``);
- ``generation.init: blurry`` starts DPM-Solver from them, noised to ``generation.init_strength``,
  for any diffusion method (:meth:`glfa.pipeline.FmriToVideoPipeline.__call__`'s ``init_latents``).

:func:`load_blurry_decoder` loads either kind. The model folder, ``RUN/blurry/model/``::

    model.json         kind "blurry", method "blurry", decoder ("ridge" or "conv"), generator, store, subjects,
                       config, num_frames, image_size, features, pool, latent_shape; ridge: the chosen alpha and
                       the CV errors; conv: the training losses
    encoder/           the encoder it reads (FmriEncoder.save_pretrained)
    ridge.safetensors  ridge: coef [c*m*h'*w', D], intercept, x_mean [D], alpha [1], latent_shape [4];
                       retrieval: the same to the CLIP width E, with embedding_shape [1] instead
    library.safetensors  retrieval: embeddings [N, E] (unit rows) and latents [N, c, m, h', w'] (float16, as
                       the latent cache keeps them) of the N training windows
    conv/              conv: the ConvLatentDecoder (save_pretrained: config.json, model.safetensors)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from glfa.baselines.lea import (
    ENCODER_DIR,
    MODEL_INFO,
    EncoderRidge,
    RidgeProblem,
    aligned_images,
    read_readout_info,
    sample_latents,
    write_ridge_model,
)
from glfa.config import BlurryConfig, GlfaConfig
from glfa.errors import CheckpointError, DataError
from glfa.models.serialization import PretrainedMixin
from glfa.runs import BLURRY, RunLayout

CONV_DIR = "conv"
LIBRARY = "library.safetensors"
#: The encoder each kind of features is read from by default: that of the run's decoder of this
#: method, or (None) the stage-1 encoder.
DEFAULT_ENCODERS = {"aligned": "glfa", "latent": None}


class BlurryDecoder(EncoderRidge):
    """fMRI windows -> scaled VAE latents ``[B, c, m, h', w']`` (``RUN/blurry/model``, written by :func:`fit_blurry`)."""

    kind = "blurry"
    shape_key = "latent_shape"

    def latents(self, fmri) -> Any:
        """fMRI ``[B, n, H, W]`` -> float32 scaled latents ``[B, c, m, h', w']`` on :attr:`device`."""
        return self.predict(fmri)


class ConvLatentDecoder(PretrainedMixin, nn.Module):
    """Pooled aligned flat images ``[B, n, p, p]`` -> scaled latents ``[B, c, m, h', w']`` (readout, convolutions).

    The input is standardised with the training samples' mean image (``x_mean`` ``[n, p, p]``) and
    overall standard deviation (``x_std``). A cortical flat map does not lay the visual field out
    as the picture is laid out, so the first step is a linear readout of every pooled pixel of the
    n frames into a coarse ``channels x grid x grid`` map (with GELU); then a 3 x 3 convolution with
    GELU, a bilinear resize to the latent grid h' x w', a 3 x 3 convolution with GELU and a 3 x 3
    convolution to the c * m latent planes, plus the training latents' mean (``y_mean``
    ``[c, m, h', w']``). The last convolution starts at zero, so the untrained network predicts the mean.

    Parameters
    ----------
    frames : n, fMRI frames per window.
    pool : p, side of the pooled images.
    latent_shape : ``(c, m, h', w')``.
    channels : width of the coarse map and of the hidden convolutions.
    grid : side of the coarse map.
    """

    def __init__(self, *, frames: int, pool: int, latent_shape, channels: int, grid: int):
        super().__init__()
        self.frames, self.pool, self.channels, self.grid = int(frames), int(pool), int(channels), int(grid)
        self.latent_shape = tuple(int(v) for v in latent_shape)
        c, m, h, w = self.latent_shape
        self.readout = nn.Sequential(nn.Linear(frames * pool * pool, channels * grid * grid), nn.GELU())
        self.refine = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GELU())
        self.decode = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(channels, c * m, 3, padding=1))
        nn.init.zeros_(self.decode[-1].weight)
        nn.init.zeros_(self.decode[-1].bias)
        self.register_buffer("x_mean", torch.zeros(frames, pool, pool))
        self.register_buffer("x_std", torch.ones(()))
        self.register_buffer("y_mean", torch.zeros(c, m, h, w))

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (saved in ``config.json``)."""
        return {"frames": self.frames, "pool": self.pool, "latent_shape": list(self.latent_shape),
                "channels": self.channels, "grid": self.grid}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n, p, p]`` -> ``[B, c, m, h', w']``."""
        c, _, h, w = self.latent_shape
        coarse = self.readout(((x - self.x_mean) / self.x_std).flatten(1))  # [b, C * g * g]
        hidden = self.refine(rearrange(coarse, "b (k g1 g2) -> b k g1 g2", g1=self.grid, g2=self.grid))
        hidden = nn.functional.interpolate(hidden, size=(h, w), mode="bilinear", align_corners=False)  # [b, C, h, w]
        return rearrange(self.decode(hidden), "b (c m) h w -> b c m h w", c=c) + self.y_mean

    def saved_config(self) -> dict[str, Any]:
        """:attr:`config`, what :meth:`from_saved_config` rebuilds the network from."""
        return self.config

    @classmethod
    def from_saved_config(cls, config: dict[str, Any]) -> ConvLatentDecoder:
        """An untrained network of a :meth:`saved_config`."""
        return cls(**config)


def fit_conv_decoder(x: np.ndarray, y: torch.Tensor, y_rows: np.ndarray, groups, settings: BlurryConfig, device,
                     progress: bool = False) -> tuple[ConvLatentDecoder, list[float], dict[str, Any]]:
    """Train a :class:`ConvLatentDecoder` with MSE: sample i's images ``x[i]`` ``[n, p, p]`` -> ``y[y_rows[i]]``.

    ``y`` ``[U, c, m, h', w']`` holds each window's latents once (any float dtype; cast a batch at a
    time); ``groups`` (``[N]``) names each sample's stimulus. With ``blurry.conv_validation`` > 0
    that share of the stimuli (at least one, drawn with ``blurry.seed``) is held out, its MSE
    measured every ``blurry.conv_eval_every`` steps and after the last, and the network of the
    lowest validation MSE kept (a small network overfits a few hundred samples quickly); with 0
    every sample trains and the last step is kept. AdamW with ``blurry.conv_*``; the initial
    weights and the batches come from ``blurry.seed``.

    Returns
    -------
    (the network in eval mode on ``device``, the training loss at every step,
    ``{"stimuli", "steps", "mse", "best_step"}`` of the validation (empty without one))
    """
    from glfa.optim import adamw

    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # [N, n, p, p]
    rows = torch.from_numpy(np.asarray(y_rows, dtype=np.int64))
    groups = np.asarray(list(groups))
    names = np.unique(groups)
    count = max(1, round(settings.conv_validation * len(names))) if settings.conv_validation > 0 else 0
    held = np.random.default_rng(settings.seed).permutation(names)[:count]
    if len(held) == len(names):
        raise DataError(f"blurry.conv_validation holds out all {len(names)} training stimuli; lower it or give more "
                        "stimuli", field="blurry.conv_validation")
    val = torch.from_numpy(np.flatnonzero(np.isin(groups, held)))
    train = torch.from_numpy(np.flatnonzero(~np.isin(groups, held)))
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the global RNG untouched
        torch.manual_seed(settings.seed)
        net = ConvLatentDecoder(frames=xs.shape[1], pool=xs.shape[2], latent_shape=y.shape[1:],
                                channels=settings.conv_channels, grid=settings.conv_grid)
    counts = torch.bincount(rows[train], minlength=len(y))  # [U]: every training sample weighs its window's latents
    total = torch.zeros(y.shape[1:], dtype=torch.float64)
    for i in torch.nonzero(counts).flatten().tolist():  # a window at a time: no float64 copy of every latent
        total += int(counts[i]) * y[i].double()
    net.x_mean.copy_(xs[train].mean(0))
    net.x_std.fill_(max(float(xs[train].std()), 1e-8))
    net.y_mean.copy_(total / len(train))
    net = net.to(device).train()

    def validation_mse() -> float:
        net.eval()
        with torch.no_grad():
            summed = sum(float(nn.functional.mse_loss(net(xs[part].to(device)), y[rows[part]].to(device).float(),
                                                      reduction="sum")) for part in val.split(256))
        net.train()
        return summed / (len(val) * int(np.prod(y.shape[1:])))

    optimizer = adamw(net.parameters(), lr=settings.conv_learning_rate, weight_decay=settings.conv_weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    history, validation, best = [], {"stimuli": [str(g) for g in held], "steps": [], "mse": []}, None
    for step in tqdm(range(1, settings.conv_steps + 1), desc="blurry conv", disable=not progress, leave=False):
        idx = train[torch.randperm(len(train), generator=generator)[:settings.conv_batch_size]]
        loss = nn.functional.mse_loss(net(xs[idx].to(device)), y[rows[idx]].to(device).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if len(val) and (step % settings.conv_eval_every == 0 or step == settings.conv_steps):
            validation["steps"].append(step)
            validation["mse"].append(validation_mse())
            if best is None or validation["mse"][-1] < min(validation["mse"][:-1]):
                best = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if best is None:
        return net.eval().requires_grad_(False), history, {}
    net.load_state_dict(best)
    validation["best_step"] = validation["steps"][int(np.argmin(validation["mse"]))]
    return net.eval().requires_grad_(False), history, validation


class ConvBlurryDecoder:
    """fMRI windows -> scaled VAE latents ``[B, c, m, h', w']``: the encoder's pooled aligned images through a
    :class:`ConvLatentDecoder` (``RUN/blurry/model`` of ``blurry.kind: conv``, written by :func:`fit_blurry`)."""

    kind = "blurry"

    def __init__(self, encoder, net: ConvLatentDecoder):
        self.encoder = encoder.eval().requires_grad_(False)
        self.net = net.eval().requires_grad_(False)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(c, m, h', w')`` of one prediction."""
        return self.net.latent_shape

    @property
    def device(self) -> torch.device:
        """Where the encoder and the network live."""
        return self.net.x_mean.device

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device | None = None) -> ConvBlurryDecoder:
        """Load a conv blurry model folder; CheckpointError naming what is missing or does not fit."""
        from glfa.devices import resolve_device
        from glfa.models.encoder import FmriEncoder

        model_dir = Path(model_dir)
        info = read_readout_info(model_dir, cls.kind, {CONV_DIR: "the convolutional decoder"})
        device = resolve_device(device)
        encoder = FmriEncoder.from_pretrained(model_dir / ENCODER_DIR, map_location=device)
        net = ConvLatentDecoder.from_pretrained(model_dir / CONV_DIR, map_location=device)
        if net.frames != encoder.num_frames or net.pool != info.get("pool"):
            raise CheckpointError(f"the network reads {net.frames} frames pooled to {net.pool}, the model folder's "
                                  f"encoder {encoder.num_frames} frames pooled to {info.get('pool')}",
                                  path=model_dir / CONV_DIR)
        return cls(encoder, net)

    @torch.no_grad()
    def latents(self, fmri) -> torch.Tensor:
        """fMRI ``[B, n, H, W]`` -> float32 scaled latents ``[B, c, m, h', w']`` on :attr:`device`."""
        fmri = torch.as_tensor(fmri).float().to(self.device)
        pool = self.net.pool
        images = aligned_images(self.encoder, fmri, pool).reshape(len(fmri), -1, pool, pool)  # [b, n, p, p]
        return self.net(images)


class EmbeddingReadout(EncoderRidge):
    """fMRI windows -> the ridge prediction of the window's CLIP image embedding ``[B, E]`` (a retrieval model's)."""

    kind = "blurry"
    shape_key = "embedding_shape"


class RetrievalBlurryDecoder:
    """fMRI windows -> scaled VAE latents ``[B, c, m, h', w']``: the mean latents of the ``k`` training windows whose
    CLIP image embeddings are closest (cosine) to the ridge-predicted one (``blurry.kind: retrieval``).

    Parameters
    ----------
    readout : EmbeddingReadout
    embeddings : ``[N, E]`` unit rows, the training windows' CLIP image embeddings.
    latents : ``[N, c, m, h', w']`` their scaled VAE latents.
    k : int
        How many of the nearest are averaged (at most N).
    """

    kind = "blurry"

    def __init__(self, readout: EmbeddingReadout, embeddings: torch.Tensor, latents: torch.Tensor, k: int):
        self.readout = readout
        self.embeddings, self.library_latents = embeddings, latents
        self.k = min(int(k), len(embeddings))

    @property
    def shape(self) -> tuple[int, ...]:
        """``(c, m, h', w')`` of one prediction."""
        return tuple(int(v) for v in self.library_latents.shape[1:])

    @property
    def device(self) -> torch.device:
        """Where the encoder, the ridge and the library live."""
        return self.readout.device

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device | None = None) -> RetrievalBlurryDecoder:
        """Load a retrieval blurry model folder; CheckpointError naming what is missing or does not fit."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        info = read_readout_info(model_dir, cls.kind, {LIBRARY: "the training windows' embeddings and latents"})
        readout = EmbeddingReadout.load(model_dir, device)
        path = model_dir / LIBRARY
        try:
            library = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"corrupt safetensors ({exc.__class__.__name__}: {exc})", path=path) from None
        embeddings, latents = library.get("embeddings"), library.get("latents")
        if embeddings is None or latents is None:
            raise CheckpointError(f"holds {sorted(library)}; expected embeddings and latents", path=path)
        if embeddings.shape != (len(latents), *readout.shape) or latents.dim() != 5:
            raise CheckpointError(f"embeddings {list(embeddings.shape)} and latents {list(latents.shape)} do not fit "
                                  f"{len(latents)} windows of predictions of width {readout.shape}", path=path)
        k = info.get("retrieval_k")
        if not isinstance(k, int) or k < 1:
            raise CheckpointError(f"retrieval_k is {k!r}, expected a positive integer", path=model_dir / MODEL_INFO,
                                  field="retrieval_k")
        return cls(readout, embeddings.float().to(readout.device), latents.float().to(readout.device), k)

    @torch.no_grad()
    def latents(self, fmri) -> torch.Tensor:
        """fMRI ``[B, n, H, W]`` -> float32 scaled latents ``[B, c, m, h', w']`` on :attr:`device`."""
        query = torch.nn.functional.normalize(self.readout.predict(fmri), dim=-1)  # [b, E]
        nearest = (query @ self.embeddings.T).topk(self.k, dim=-1).indices  # [b, k]
        return self.library_latents[nearest].mean(dim=1)


def window_embeddings(store, features, windows) -> np.ndarray:
    """``[N, E]`` float64: the mean CLIP image embedding (view 0) of each window's stored frames."""
    image = features.image[:, 0].float().numpy()  # [F, E]
    return image[store.frame_rows(windows)].mean(axis=1).astype(np.float64)  # [N, m, E] -> [N, E]


def load_blurry_decoder(model_dir: str | Path, device: str | torch.device | None = None):
    """The blurry decoder of ``RUN/blurry/model`` of any kind (model.json's ``decoder``, ridge when absent):
    a :class:`BlurryDecoder`, :class:`ConvBlurryDecoder` or :class:`RetrievalBlurryDecoder`, each with
    ``latents(fmri)``, ``shape`` and ``device``."""
    from glfa.models.serialization import read_json_object

    info_path = Path(model_dir) / MODEL_INFO
    if not info_path.is_file():
        raise CheckpointError("missing; expected the model description of a blurry model folder written by "
                              "`glfa train blurry`", path=info_path)
    decoder = read_json_object(info_path).get("decoder", "ridge")
    classes = {"ridge": BlurryDecoder, "conv": ConvBlurryDecoder, "retrieval": RetrievalBlurryDecoder}
    if decoder not in classes:
        raise CheckpointError(f"decoder is {decoder!r}, expected one of {list(classes)}", path=info_path,
                              field="decoder")
    return classes[decoder].load(model_dir, device)


def fit_blurry(config: GlfaConfig, store, run_dir: str | Path | None = None, *,
               encoder_dir: str | Path | None = None, generator: str | Path | None = None, batch_size: int = 16,
               progress: bool = True) -> Path:
    """Fit the blurry decoder on the training subjects' training windows; write ``RUN_DIR/blurry/model/``.

    Parameters
    ----------
    config
        The experiment config (``subjects``, ``blurry`` (kind, features, pool, ridge's alphas and
        cv_folds, conv's settings), ``device``).
    store
        A store folder or an open :class:`~glfa.data.store.StudyStore`.
    run_dir
        The run folder (default ``output_dir/name``).
    encoder_dir
        The saved FmriEncoder it reads (default :data:`DEFAULT_ENCODERS` of ``blurry.features``:
        ``RUN_DIR/cotrain-glfa/model/encoder`` or ``RUN_DIR/contrastive/encoder``).
    generator
        The base diffusers text-to-video folder (default ``config.cotrain.generator``): its VAE
        gives the targets and decodes the predictions.
    batch_size
        Windows per encoder call.
    progress
        Show progress bars.
    """
    from glfa.data.features import vae_latents
    from glfa.io import install_dir, write_json_atomic

    settings = config.blurry
    problem = RidgeProblem.prepare(config, "blurry", store, run_dir, encoder_dir, generator, predicts="VAE latents",
                                   with_text_encoder=False, default_encoder=DEFAULT_ENCODERS[settings.features])
    cache = vae_latents(problem.store, problem.generator, split="train", progress=progress)  # [N, c, m, h', w']
    latent_shape = tuple(int(v) for v in cache.latents.shape[1:])
    rows = {w: i for i, w in enumerate(cache.window_indices)}
    y_rows = np.array([rows[w.index] for _, w in problem.samples])  # every subject's sample of a window shares its row
    x, _ = sample_latents(problem.encoder, problem.store, problem.samples, batch_size, progress, settings.features,
                          settings.pool)
    read = (f"GLFA-aligned flat images average-pooled to {settings.pool} x {settings.pool}"
            if settings.features == "aligned" else "clip_head input: LayerNorm(mean of the spatiotemporal tokens)")
    target = RunLayout(problem.run_dir).model_dir(BLURRY)
    y = cache.latents.reshape(len(cache.latents), -1).numpy()  # [N, c*m*h'*w'] (float16)
    shared = {"decoder": settings.kind, "features": settings.features, "pool": settings.pool,
              "latent_shape": list(latent_shape), "target_variance": float(np.var(y.astype(np.float64), axis=0).mean())}
    target_text = "scaled VAE latents of the window's stored frames"
    if settings.kind == "ridge":
        ridge = problem.fit(x, y, y_rows)  # fitted in float64
        write_ridge_model(target, {**problem.info("blurry", ridge, target_text, read), **shared}, problem.encoder,
                          ridge, "latent_shape", latent_shape)
        return target
    if settings.kind == "retrieval":
        from glfa.data.features import clip_features

        features = clip_features(problem.store, config.contrastive.clip_model, config=config, progress=progress)
        by_index = {w.index: w for w in problem.store.windows("train")}
        embeddings = window_embeddings(problem.store, features, [by_index[i] for i in cache.window_indices])
        ridge = problem.fit(x, embeddings, y_rows)
        library = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)  # retrieval ranks by cosine
        info = {**problem.info("blurry", ridge, "the CLIP image embedding of the window's stored frames (mean, "
                               f"unit norm; contrastive.clip_model), then the mean latents of the {settings.retrieval_k} "
                               "nearest training windows", read), **shared,
                "retrieval_k": settings.retrieval_k, "library_windows": len(embeddings)}
        write_ridge_model(target, info, problem.encoder, ridge, "embedding_shape", (embeddings.shape[1],),
                          extra={LIBRARY: {"embeddings": library, "latents": cache.latents.numpy()}})
        return target
    images = x.reshape(len(x), problem.store.fmri_frames, settings.pool, settings.pool)  # [N, n, p, p]
    net, losses, validation = fit_conv_decoder(images, cache.latents, y_rows, problem.groups, settings,
                                               next(problem.encoder.parameters()).device, progress)
    info = {**problem.info("blurry", None, target_text, read), **shared, "loss_first": losses[0],
            "loss_last": losses[-1], "validation": validation}
    with install_dir(target) as tmp:
        problem.encoder.save_pretrained(tmp / ENCODER_DIR)
        net.save_pretrained(tmp / CONV_DIR)
        write_json_atomic(tmp / MODEL_INFO, info)
    return target
