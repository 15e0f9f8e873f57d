"""GLFA layer: identity at init, parameter counts, masks, and the memory-efficient local layer
against a plain unfold reference (outputs and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glfa.errors import ConfigError, DataError
from glfa.models.glfa import GLFA, GlobalParcelMap, LocallyConnected2d, local_conv


def unfold_reference(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Plain locally connected layer: materialise every k x k neighbourhood with F.unfold."""
    n, h, w = x.shape
    k = int(round(kernel.shape[0] ** 0.5))
    cols = F.unfold(x[:, None], k, padding=k // 2)  # [n, k*k, h*w]
    return (cols * kernel.reshape(k * k, h * w)).sum(1).reshape(n, h, w)


def _compare(n: int, h: int, w: int, k: int, dtype: torch.dtype, tol: float) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + h + k)
    x = torch.randn(n, h, w, generator=gen, dtype=dtype)
    kernel = torch.rand(k * k, h, w, generator=gen, dtype=dtype)
    grad_out = torch.randn(n, h, w, generator=gen, dtype=dtype)
    outs, grads = [], []
    for fn in (local_conv, unfold_reference):
        xi = x.clone().requires_grad_(True)
        ki = kernel.clone().requires_grad_(True)
        out = fn(xi, ki)
        out.backward(grad_out)
        outs.append(out.detach())
        grads.append((xi.grad, ki.grad))
    torch.testing.assert_close(outs[0], outs[1], atol=tol, rtol=tol)
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=tol, rtol=tol)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=tol, rtol=tol)


@pytest.mark.parametrize("n,h,w,k", [(2, 7, 9, 3), (3, 12, 10, 5), (1, 6, 6, 7)])
def test_local_conv_matches_unfold_float64(n, h, w, k):
    _compare(n, h, w, k, torch.float64, 1e-10)


def test_local_conv_matches_unfold_64x64_k13_float32():
    _compare(2, 64, 64, 13, torch.float32, 1e-5)


def test_local_conv_matches_direct_loop_definition():
    # independent scalar definition: out[i, j] = sum_{a, b} K[a*k+b, i, j] * x[i+a-r, j+b-r] (zero outside)
    rng = np.random.default_rng(0)
    h, w, k = 5, 6, 3
    x = rng.normal(size=(h, w))
    kernel = rng.random((k * k, h, w))
    expected = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            for a in range(k):
                for b in range(k):
                    ii, jj = i + a - 1, j + b - 1
                    if 0 <= ii < h and 0 <= jj < w:
                        expected[i, j] += kernel[a * k + b, i, j] * x[ii, jj]
    got = local_conv(torch.from_numpy(x)[None], torch.from_numpy(kernel))[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_locally_connected_module_gradients_match_unfold_through_normalisation():
    torch.manual_seed(0)
    layer = LocallyConnected2d(height=10, width=8, kernel_size=5).double()
    with torch.no_grad():
        layer.weight.normal_(0, 0.3)
    x = torch.randn(3, 1, 10, 8, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (3, 1, 10, 8)
    loss = (out ** 2).sum()
    (gw,) = torch.autograd.grad(loss, layer.weight)
    ref = unfold_reference(x[:, 0], layer.normalized_kernel())
    torch.testing.assert_close(out[:, 0], ref)
    (gw_ref,) = torch.autograd.grad((ref ** 2).sum(), layer.weight)
    torch.testing.assert_close(gw, gw_ref)


def test_gradcheck_local_conv():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    kernel = torch.rand(9, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(local_conv, (x, kernel))


def test_normalized_kernel_is_nonnegative_and_sums_to_one():
    torch.manual_seed(1)
    layer = LocallyConnected2d(height=6, width=5, kernel_size=3)
    with torch.no_grad():
        layer.weight.normal_(0, 1.0)
    kernel = layer.normalized_kernel()
    assert kernel.shape == (9, 6, 5)
    assert torch.all(kernel >= 0)
    torch.testing.assert_close(kernel.sum(0), torch.ones(6, 5))


def test_parameter_counts_full_size():
    local = LocallyConnected2d(height=256, width=256, kernel_size=13)
    assert sum(p.numel() for p in local.parameters()) == 256 * 256 * 169 == 11_075_584
    glfa = GLFA()
    assert sum(p.numel() for p in glfa.parameters()) == 11_075_584 + 256 * 256
    assert glfa.global_map.num_parcels == 256


def test_init_statistics():
    torch.manual_seed(0)
    glfa = GLFA(height=64, width=64, parcel_size=8, kernel_size=5)
    assert abs(glfa.global_map.weight.std().item() - 1e-4 / 8) < 1e-4 / 8 * 0.1
    assert abs(glfa.local.weight.std().item() - 1e-4 / 5) < 1e-4 / 5 * 0.05


def test_glfa_starts_as_identity_on_masked_images():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mask = rng.random((32, 48)) > 0.4
    glfa = GLFA(height=32, width=48, parcel_size=8, kernel_size=13)
    x = torch.randn(4, 1, 32, 48) * torch.from_numpy(mask).float()
    out = glfa(x)
    assert out.shape == x.shape
    assert (out - x).abs().max().item() < 5e-3
    assert torch.all(out[:, :, ~torch.from_numpy(mask)] == 0)
    # with the parameters at exactly zero the layer is exactly the identity on masked images
    with torch.no_grad():
        glfa.global_map.weight.zero_()
        glfa.local.weight.zero_()
    torch.testing.assert_close(glfa(x), x, atol=0, rtol=0)
    torch.testing.assert_close(glfa(x[:, 0]), x[:, 0], atol=0, rtol=0)


def test_glfa_masks_each_step_by_its_input_nonzeros():
    """The authors' masks: the global step keeps the input's non-zeros, the local step its own input's."""
    torch.manual_seed(1)
    glfa = GLFA(height=16, width=16, parcel_size=4, kernel_size=3)
    with torch.no_grad():
        glfa.global_map.weight.normal_(0, 0.5)
        glfa.local.weight.normal_(0, 0.5)
    x = torch.randn(2, 16, 16)
    x[0, :, :5] = 0  # frame 0 is zero on the left, frame 1 nowhere: each frame has its own mask
    g = glfa.global_map(x) * (x != 0)
    expected = glfa.local(g) * (g != 0)
    out = glfa(x)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert torch.all(out[0, :, :5] == 0) and torch.all(out[1] != 0)
    assert "mask" not in glfa.state_dict()


def test_global_parcel_map_mixes_parcels_row_major():
    # planted G: parcel 1 (top-right) receives parcel 2 (bottom-left); index = row * n_cols + col
    gm = GlobalParcelMap(height=4, width=4, parcel_size=2)
    with torch.no_grad():
        gm.weight.zero_()
        gm.weight[1, 2] = 1.0
    x = torch.arange(16.0).reshape(1, 4, 4)
    expected = x.clone()
    expected[0, 0:2, 2:4] += x[0, 2:4, 0:2]
    torch.testing.assert_close(gm(x), expected)


def test_global_parcel_map_matches_matrix_definition():
    torch.manual_seed(2)
    gm = GlobalParcelMap(height=6, width=9, parcel_size=3)
    with torch.no_grad():
        gm.weight.normal_()
    x = torch.randn(2, 6, 9)
    s, gh, gw = 3, 2, 3
    # parcels as [n, P, s*s] built by hand, row-major over the parcel grid
    parcels = torch.stack([x[:, r * s:(r + 1) * s, c * s:(c + 1) * s].reshape(2, s * s)
                           for r in range(gh) for c in range(gw)], dim=1)
    mixed = torch.einsum("ij,njq->niq", torch.eye(6) + gm.weight, parcels)
    out = gm(x)
    for idx, (r, c) in enumerate((r, c) for r in range(gh) for c in range(gw)):
        torch.testing.assert_close(out[:, r * s:(r + 1) * s, c * s:(c + 1) * s].reshape(2, s * s), mixed[:, idx])


def test_bad_input():
    glfa = GLFA(height=16, width=16, parcel_size=4, kernel_size=3)
    with pytest.raises(DataError, match=r"\[N, 1, 16, 16\]"):
        glfa(torch.zeros(2, 2, 16, 16))
    with pytest.raises(DataError, match="16 x 16"):
        glfa(torch.zeros(2, 1, 16, 8))
    with pytest.raises(ConfigError, match="parcel_size"):
        GLFA(height=16, width=16, parcel_size=5)
    with pytest.raises(ConfigError, match="kernel_size"):
        LocallyConnected2d(height=8, width=8, kernel_size=4)


def test_glfa_trains_towards_a_planted_shift():
    # a one-pixel shift is inside the local layer's reach: a few Adam steps reduce the error
    torch.manual_seed(0)
    glfa = GLFA(height=16, width=16, parcel_size=4, kernel_size=3)
    x = torch.randn(8, 1, 16, 16)
    target = torch.roll(x, shifts=1, dims=-1)
    target[..., 0] = 0
    opt = torch.optim.Adam(glfa.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        loss = F.mse_loss(glfa(x), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
