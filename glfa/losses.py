"""Training losses: masked reconstruction MSE, L_GLFA (paper eq. 3) and the symmetric CLIP loss."""

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
    """L_GLFA: mean over subject pairs a < b of MSE(A_a, A_b) + lambda * (MSE(A_a, x_a) + MSE(A_b, x_b)).

    Parameters
    ----------
    aligned : [S, B, ...H, W] GLFA outputs A_s of S subjects' responses to the same B windows
        (for instance [S, B, n, H, W] or [S, B, H, W]).
    original : the inputs x_s, same shape as ``aligned``.
    mask : [H, W] visual-cortex mask (every MSE is over its pixels) or None.
    consistency_weight : lambda (1/2 in the paper).
    """
    if aligned.shape != original.shape:
        raise DataError(f"aligned {list(aligned.shape)} and original {list(original.shape)} differ in shape",
                        field="original")
    if aligned.dim() < 4:
        raise DataError(f"expected [S, B, ..., H, W] (at least 4 axes), got {list(aligned.shape)}", field="aligned")
    s = aligned.shape[0]
    if s < 2:
        raise DataError(f"L_GLFA needs the responses of at least 2 subjects, got {s}", field="aligned")
    consistency = [masked_mse(aligned[i], original[i], mask) for i in range(s)]
    total = aligned.new_zeros(())
    for a in range(s):
        for b in range(a + 1, s):
            total = total + masked_mse(aligned[a], aligned[b], mask) + consistency_weight * (consistency[a] + consistency[b])
    return total / (s * (s - 1) // 2)


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
