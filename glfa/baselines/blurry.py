"""The low-level ("blurry") decoder: fMRI -> the generator's VAE latents of the window's frames.

NeuroClips-style structure from the brain: a linear map from fMRI features to the scaled VAE
latents of the window's stored frames (the stage-2 cache, :func:`glfa.data.features.vae_latents`),
``[c, m, h/s, w/s]`` flattened. The features (``blurry.features``) are the GLFA-aligned flat images
of the stage-2 GLFA encoder (``RUN/cotrain-glfa/model/encoder``) average-pooled to ``blurry.pool``
pixels a side (:func:`glfa.baselines.lea.aligned_images`: the coarse retinotopic layout, aligned
across subjects), or the stage-1 encoder's pooled latent as LEA reads it
(:func:`glfa.baselines.lea.encoder_latent`, semantic). It is fitted like LEA: every training subject's response to every
training window (held-out subjects and test windows are never read), :class:`~glfa.baselines.lea.RidgeCV`
with folds split by stimulus, each window's latents held once and shared by every subject.

Its predicted latents serve twice:

- decoded by the VAE as they are, they are the "blurry" method's clips
  (``glfa generate RUN --method blurry``);
- ``generation.init: blurry`` starts DPM-Solver from them, noised to ``generation.init_strength``,
  for any diffusion method (:meth:`glfa.pipeline.FmriToVideoPipeline.__call__`'s ``init_latents``).

The model folder, ``RUN/blurry/model/``::

    model.json         kind "blurry", method "blurry", generator, store, subjects, config, num_frames,
                       image_size, features, pool, latent_shape, the chosen alpha and the CV errors
    encoder/           the encoder it reads (FmriEncoder.save_pretrained)
    ridge.safetensors  coef [c*m*h'*w', D], intercept, x_mean [D], alpha [1], latent_shape [4]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from glfa.baselines.lea import EncoderRidge, RidgeProblem, sample_latents, write_ridge_model
from glfa.config import GlfaConfig
from glfa.runs import BLURRY, RunLayout

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


def fit_blurry(config: GlfaConfig, store, run_dir: str | Path | None = None, *,
               encoder_dir: str | Path | None = None, generator: str | Path | None = None, batch_size: int = 16,
               progress: bool = True) -> Path:
    """Fit the blurry decoder on the training subjects' training windows; write ``RUN_DIR/blurry/model/``.

    Parameters
    ----------
    config
        The experiment config (``subjects``, ``blurry`` (features, pool, alphas, cv_folds), ``device``).
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

    settings = config.blurry
    problem = RidgeProblem.prepare(config, "blurry", store, run_dir, encoder_dir, generator, predicts="VAE latents",
                                   with_text_encoder=False, default_encoder=DEFAULT_ENCODERS[settings.features])
    cache = vae_latents(problem.store, problem.generator, split="train", progress=progress)  # [N, c, m, h', w']
    latent_shape = tuple(int(v) for v in cache.latents.shape[1:])
    y = cache.latents.reshape(len(cache.latents), -1).numpy()  # [N, c*m*h'*w'] (float16; fitted in float64)
    rows = {w: i for i, w in enumerate(cache.window_indices)}
    y_rows = np.array([rows[w.index] for _, w in problem.samples])  # every subject's sample of a window shares its row
    x, _ = sample_latents(problem.encoder, problem.store, problem.samples, batch_size, progress, settings.features,
                          settings.pool)
    ridge = problem.fit(x, y, y_rows)
    read = (f"GLFA-aligned flat images average-pooled to {settings.pool} x {settings.pool}"
            if settings.features == "aligned" else "clip_head input: LayerNorm(mean of the spatiotemporal tokens)")
    info = {**problem.info("blurry", ridge, "scaled VAE latents of the window's stored frames", read),
            "features": settings.features, "pool": settings.pool, "latent_shape": list(latent_shape),
            "target_variance": float(np.var(y.astype(np.float64), axis=0).mean())}
    target = RunLayout(problem.run_dir).model_dir(BLURRY)
    write_ridge_model(target, info, problem.encoder, ridge, "latent_shape", latent_shape)
    return target
