"""Training losses: masked reconstruction MSE, L_GLFA (paper eq. 3), the symmetric CLIP loss and L_denoise (eq. 5)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from glfa.errors import DataError


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the pixels inside ``mask``.

    Parameters
    ----------
    pred, target : tensors of the same shape [..., H, W].
    mask : [H, W] (bool or 0/1), broadcast over the leading axes; None = every pixel.

    Returns
    -------
    Scalar: sum over leading axes and masked pixels of (pred - target)^2, divided by
    (number of masked pixels) * (product of the leading sizes).
    """
    if pred.shape != target.shape:
        raise DataError(f"pred {list(pred.shape)} and target {list(target.shape)} differ in shape", field="target")
    sq = (pred - target).square()
    if mask is None:
        return sq.mean()
    if mask.shape != pred.shape[-2:]:
        raise DataError(f"expected a mask of shape {list(pred.shape[-2:])}, got {list(mask.shape)}", field="mask")
    m = mask.to(device=sq.device, dtype=sq.dtype)
    count = m.sum() * (sq.numel() // m.numel())
    if count == 0:
        raise DataError("the mask selects no pixel", field="mask")
    return (sq * m).sum() / count


def glfa_loss(aligned: torch.Tensor, original: torch.Tensor, mask: torch.Tensor | None,
              consistency_weight: float = 0.5) -> torch.Tensor:
    """L_GLFA as the authors' training code weighs it: alignment + lambda * consistency.

    alignment = the mean over the S(S-1)/2 subject pairs a < b of MSE(A_a, A_b);
    consistency = the mean over the S subjects of MSE(A_s, x_s). With the released config
    (align_scale 1, reg_scale = lambda = 1/2) this is their objective; reading paper Eq. 3 as a sum
    over pairs of align + lambda * (const_a + const_b) would weigh consistency (S - 1) times more.

    Parameters
    ----------
    aligned : [S, B, ...H, W] GLFA outputs A_s of S subjects' responses to the same B windows
        (for instance [S, B, n, H, W] or [S, B, H, W]).
    original : the inputs x_s, same shape as ``aligned``.
    mask : [H, W] visual-cortex mask (every MSE is over its pixels) or None.
    consistency_weight : lambda, the authors' reg_scale (1/2).
    """
    if aligned.shape != original.shape:
        raise DataError(f"aligned {list(aligned.shape)} and original {list(original.shape)} differ in shape",
                        field="original")
    if aligned.dim() < 4:
        raise DataError(f"expected [S, B, ..., H, W] (at least 4 axes), got {list(aligned.shape)}", field="aligned")
    s = aligned.shape[0]
    if s < 2:
        raise DataError(f"L_GLFA needs the responses of at least 2 subjects, got {s}", field="aligned")
    consistency = sum(masked_mse(aligned[i], original[i], mask) for i in range(s)) / s
    alignment = sum(masked_mse(aligned[a], aligned[b], mask) for a in range(s) for b in range(a + 1, s))
    return alignment / (s * (s - 1) // 2) + consistency_weight * consistency


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE: (CE(s * a @ b.T, arange) + CE(s * b @ a.T, arange)) / 2 with s = exp(logit_scale).

    ``a`` and ``b`` ([B, C], row i of each paired) are L2-normalised here, so callers may pass raw
    embeddings. ``logit_scale`` is the log of the temperature's inverse (log(1/0.07) in CLIP).
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise DataError(f"expected two [B, C] tensors of the same shape, got {list(a.shape)} and {list(b.shape)}",
                        field="b")
    scale = logit_scale.exp() if isinstance(logit_scale, torch.Tensor) else math.exp(logit_scale)
    logits = scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T  # [B, B]
    targets = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def denoising_loss(unet, scheduler, latents: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """L_denoise (paper eq. 5): noise the latents at uniform random timesteps, MSE of the UNet's prediction.

    Draws ``noise ~ N(0, I)`` like ``latents`` and then timesteps uniform in
    ``[0, scheduler.config.num_train_timesteps)`` (one per sample) from the global torch RNG, in
    that order; noises with ``scheduler.add_noise``; the target is the noise (``epsilon``
    prediction, zeroscope / ModelScope), ``scheduler.get_velocity`` (``v_prediction``) or the
    latents (``sample``), as the scheduler's ``prediction_type`` says.

    Parameters
    ----------
    unet : a diffusers ``UNet3DConditionModel`` (or a module with its call signature).
    scheduler : a diffusers DDPM-style scheduler.
    latents : [b, c, f, h, w] clean scaled latents.
    condition : [b, k, d] conditioning tokens (``encoder_hidden_states``).
    """
    if latents.dim() != 5 or condition.dim() != 3 or condition.shape[0] != latents.shape[0]:
        raise DataError(f"expected latents [b, c, f, h, w] and condition [b, k, d] with the same b, got "
                        f"{list(latents.shape)} and {list(condition.shape)}", field="condition")
    noise = torch.randn_like(latents)
    t = torch.randint(0, int(scheduler.config.num_train_timesteps), (latents.shape[0],), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, t)  # [b, c, f, h, w]
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    elif kind == "sample":
        target = latents
    else:
        raise DataError(f"unknown prediction_type {kind!r}; expected epsilon, v_prediction or sample",
                        field="scheduler.prediction_type")
    pred = unet(noisy, t, encoder_hidden_states=condition, return_dict=False)[0]  # [b, c, f, h, w]
    return F.mse_loss(pred.float(), target.float())
