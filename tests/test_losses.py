"""Losses against hand computations in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glfa.errors import DataError
from glfa.losses import clip_loss, glfa_loss, masked_mse


def _np_masked_mse(p, t, m):
    return float(((p - t) ** 2)[..., m].mean())


def test_masked_mse_by_hand():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 5, 4))
    m = rng.random((5, 4)) > 0.5
    got = masked_mse(torch.from_numpy(p), torch.from_numpy(t), torch.from_numpy(m))
    assert math.isclose(got.item(), _np_masked_mse(p, t, m), rel_tol=1e-12)
    assert math.isclose(masked_mse(torch.from_numpy(p), torch.from_numpy(t)).item(), float(((p - t) ** 2).mean()),
                        rel_tol=1e-12)
    # a tiny explicit case: two masked pixels with errors 1 and 3 -> (1 + 9) / 2
    pred = torch.tensor([[1.0, 3.0], [100.0, 0.0]])
    mask = torch.tensor([[True, True], [False, False]])
    assert masked_mse(pred, torch.zeros(2, 2), mask).item() == 5.0


def test_glfa_loss_by_hand_three_subjects():
    """The authors' weighting: mean over pairs of alignment MSEs + lambda * mean over subjects of consistency MSEs."""
    rng = np.random.default_rng(1)
    s, b, n, h, w = 3, 2, 4, 6, 5
    aligned, original = rng.normal(size=(s, b, n, h, w)), rng.normal(size=(s, b, n, h, w))
    m = rng.random((h, w)) > 0.3
    lam = 0.5
    align = np.mean([_np_masked_mse(aligned[a], aligned[c], m) for a in range(s) for c in range(a + 1, s)])
    const = np.mean([_np_masked_mse(aligned[a], original[a], m) for a in range(s)])
    got = glfa_loss(torch.from_numpy(aligned), torch.from_numpy(original), torch.from_numpy(m), lam)
    assert math.isclose(got.item(), align + lam * const, rel_tol=1e-12)
    # [S, B, H, W] works too, and lambda is honoured
    got2 = glfa_loss(torch.from_numpy(aligned[:, :, 0]), torch.from_numpy(original[:, :, 0]), None, 2.0)
    a0, a1, a2 = aligned[:, :, 0]
    o0, o1, o2 = original[:, :, 0]
    mse = lambda u, v: float(((u - v) ** 2).mean())  # noqa: E731
    exp2 = (mse(a0, a1) + mse(a0, a2) + mse(a1, a2)) / 3 + 2.0 * (mse(a0, o0) + mse(a1, o1) + mse(a2, o2)) / 3
    assert math.isclose(got2.item(), exp2, rel_tol=1e-12)


def test_glfa_loss_two_subjects_weighs_consistency_as_their_code():
    """Two subjects, reg_scale 0.5, align_scale 1: loss = MSE(A1, A2) + 0.5 * (MSE(A1, x1) + MSE(A2, x2)) / 2."""
    a = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 5.0]]]])  # [S=2, B=1, 1, 2]
    x = torch.tensor([[[[0.0, 2.0]]], [[[3.0, 1.0]]]])
    align = ((1 - 3) ** 2 + (2 - 5) ** 2) / 2  # 6.5
    const = (((1 - 0) ** 2 + 0) / 2 + (0 + (5 - 1) ** 2) / 2) / 2  # (0.5 + 8) / 2
    assert glfa_loss(a, x, None, 0.5).item() == pytest.approx(align + 0.5 * const, rel=1e-12)


def test_glfa_loss_zero_when_identical_and_unchanged():
    x = torch.randn(2, 3, 4, 4)
    assert glfa_loss(torch.stack([x[0], x[0]]), torch.stack([x[0], x[0]]), None).item() == 0.0


def test_glfa_loss_bad_input():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(DataError, match="at least 2 subjects"):
        glfa_loss(x, x, None)
    with pytest.raises(DataError, match="differ in shape"):
        glfa_loss(torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4), None)
    with pytest.raises(DataError, match="mask"):
        glfa_loss(torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4), torch.ones(3, 3, dtype=torch.bool))


def test_clip_loss_by_hand():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    scale = math.log(1 / 0.07)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = np.exp(scale) * an @ bn.T

    def ce(lg):
        lg = lg - lg.max(axis=1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(logp))

    expected = (ce(logits) + ce(logits.T)) / 2
    got = clip_loss(torch.from_numpy(a), torch.from_numpy(b), torch.tensor(scale, dtype=torch.float64))
    assert math.isclose(got.item(), expected, rel_tol=1e-10)
    assert math.isclose(clip_loss(torch.from_numpy(a), torch.from_numpy(b), scale).item(), expected, rel_tol=1e-10)
    # perfectly matched, well-separated pairs give a small loss
    eye = torch.eye(4, dtype=torch.float64)
    assert clip_loss(eye, eye, math.log(100.0)).item() < 1e-10 + 4 * math.exp(-100) * 2


def test_clip_loss_gradient_reaches_logit_scale_and_bad_shape():
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    clip_loss(torch.randn(5, 8), torch.randn(5, 8), scale).backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)
    with pytest.raises(DataError):
        clip_loss(torch.randn(5, 8), torch.randn(4, 8), scale)
