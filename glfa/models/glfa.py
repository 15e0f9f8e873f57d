"""Global-Local Functional Alignment (paper section 3.5).

GLFA is one module shared by every subject: a global parcel map that mixes the parcels of the
flat cortical image, then a locally connected layer that gives every pixel its own
non-negative, normalised k x k kernel; after each step the result is multiplied by the
step's input != 0 (the authors' ``LocallyConnected2d``). Both parts start as the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.autograd.function import once_differentiable

from glfa.errors import ConfigError, DataError
from glfa.models.layers import normal_parameter


def _as_frames(x: torch.Tensor, height: int, width: int, name: str) -> tuple[torch.Tensor, bool]:
    """[n, 1, h, w] or [n, h, w] -> ([n, h, w], had_channel); loud error for anything else."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"expected a torch.Tensor, got {type(x).__name__}", field=name)
    if x.dim() == 4 and x.shape[1] == 1:
        frames, had_channel = x[:, 0], True
    elif x.dim() == 3:
        frames, had_channel = x, False
    else:
        raise DataError(f"expected shape [N, 1, {height}, {width}] or [N, {height}, {width}], got {list(x.shape)}",
                        field=name)
    if frames.shape[-2:] != (height, width):
        raise DataError(f"expected images of {height} x {width}, got {frames.shape[-2]} x {frames.shape[-1]}",
                        field=name)
    return frames, had_channel


class GlobalParcelMap(nn.Module):
    """Global alignment: x_p <- (I + G) x_p across the P parcels, for every pixel position p in a parcel.

    The image is cut into P = (H / s) * (W / s) parcels of s x s pixels, numbered row-major
    (as MAE's patchify). ``G`` ([P, P]) starts at N(0, (1e-4 / s)^2), so the map starts near I.
    """

    def __init__(self, *, height: int, width: int, parcel_size: int = 16):
        super().__init__()
        if parcel_size <= 0 or height % parcel_size or width % parcel_size:
            raise ConfigError(f"image {height} x {width} must be divisible by parcel_size {parcel_size}",
                              field="parcel_size")
        self.height, self.width, self.parcel_size = height, width, parcel_size
        self.num_parcels = (height // parcel_size) * (width // parcel_size)
        self.weight = normal_parameter(self.num_parcels, self.num_parcels, std=1e-4 / parcel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] or [N, H, W] -> same shape (unmasked)."""
        frames, had_channel = _as_frames(x, self.height, self.width, "x")
        s = self.parcel_size
        parcels = rearrange(frames, "n (gh p1) (gw p2) -> n (p1 p2) (gh gw)", p1=s, p2=s)  # [n, s*s, P]
        mixed = parcels + parcels @ self.weight.to(parcels.dtype).T  # x_p (I + G)^T  -> [n, s*s, P]
        out = rearrange(mixed, "n (p1 p2) (gh gw) -> n (gh p1) (gw p2)", p1=s, p2=s, gh=self.height // s)
        return out[:, None] if had_channel else out


class _LocalConv(torch.autograd.Function):
    """out[n, i, j] = sum_o kernel[o, i, j] * xpad[n, i + a_o, j + b_o], looping over the k*k offsets.

    Neither pass materialises [N, H, W, k*k]: every term is one [N, H, W] slice of the padded
    input, so the extra memory is O(N * H * W) beyond the kernel.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, k: int) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x, kernel)
        ctx.k = k
        n, h, w = x.shape
        xpad = F.pad(x, (k // 2,) * 4)  # [n, h+2r, w+2r]
        out = torch.zeros_like(x)
        for o in range(k * k):
            a, b = divmod(o, k)
            out.addcmul_(xpad[:, a:a + h, b:b + w], kernel[o])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        x, kernel = ctx.saved_tensors
        k = ctx.k
        r = k // 2
        n, h, w = x.shape
        grad_out = grad_out.contiguous()
        grad_x = grad_kernel = None
        if ctx.needs_input_grad[0]:
            gpad = grad_out.new_zeros(n, h + 2 * r, w + 2 * r)  # [n, h+2r, w+2r]
            for o in range(k * k):
                a, b = divmod(o, k)
                gpad[:, a:a + h, b:b + w].addcmul_(grad_out, kernel[o])
            grad_x = gpad[:, r:r + h, r:r + w].contiguous()
        if ctx.needs_input_grad[1]:
            xpad = F.pad(x, (r,) * 4)
            grad_kernel = torch.empty_like(kernel)  # [k*k, h, w]
            prod = torch.empty_like(x)  # [n, h, w], reused for every offset
            for o in range(k * k):
                a, b = divmod(o, k)
                torch.mul(xpad[:, a:a + h, b:b + w], grad_out, out=prod)
                torch.sum(prod, dim=0, out=grad_kernel[o])
        return grad_x, grad_kernel, None


def local_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Apply per-pixel kernels ``kernel`` [k*k, H, W] to ``x`` [N, H, W] (zero padding k//2, stride 1)."""
    kk = kernel.shape[0]
    k = int(round(kk ** 0.5))
    if k * k != kk or k % 2 == 0:
        raise DataError(f"expected kernel of shape [k*k, H, W] with k odd, got {list(kernel.shape)}", field="kernel")
    if x.dim() != 3 or x.shape[1:] != kernel.shape[1:]:
        raise DataError(f"expected x of shape [N, {kernel.shape[1]}, {kernel.shape[2]}], got {list(x.shape)}",
                        field="x")
    dtype = torch.promote_types(x.dtype, kernel.dtype)
    return _LocalConv.apply(x.to(dtype).contiguous(), kernel.to(dtype).contiguous(), k)


class LocallyConnected2d(nn.Module):
    """Local alignment: every pixel has its own k x k kernel (unshared weights), stride 1, zero padding k//2.

    The applied kernel is |w_p + delta| / sum |w_p + delta| (non-negative, sums to one; delta is
    one at the centre), with w ~ N(0, (1e-4 / k)^2), so the layer starts near the identity.
    ``weight`` is stored offset-major, [k*k, H, W] (offset o = row * k + col of the kernel).
    Forward and backward loop over the k*k offsets and never build an [N, H, W, k*k] tensor.
    """

    def __init__(self, *, height: int, width: int, kernel_size: int = 13):
        super().__init__()
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be a positive odd integer, got {kernel_size}", field="kernel_size")
        self.height, self.width, self.kernel_size = height, width, kernel_size
        kk = kernel_size * kernel_size
        self.weight = normal_parameter(kk, height, width, std=1e-4 / kernel_size)
        delta = torch.zeros(kk, 1, 1)
        delta[kk // 2] = 1.0
        self.register_buffer("delta", delta, persistent=False)

    def normalized_kernel(self) -> torch.Tensor:
        """The applied kernels |w + delta| / sum |w + delta|: [k*k, H, W], non-negative, summing to one."""
        kernel = (self.weight + self.delta).abs()  # [k*k, h, w]
        return kernel / kernel.sum(dim=0, keepdim=True).clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] or [N, H, W] -> same shape (unmasked)."""
        frames, had_channel = _as_frames(x, self.height, self.width, "x")
        out = local_conv(frames, self.normalized_kernel())
        return out[:, None] if had_channel else out


class GLFA(nn.Module):
    """Global parcel map, then the locally connected layer, each masked by its input's non-zeros.

    As the authors compute it: ``g = global(x) * (x != 0)``, then ``local(g) * (g != 0)``. Frames
    are zero outside the cortex the flat image shows, so these data masks are the visual-cortex
    mask of the store; nothing is stored besides the weights. Starts as the identity.
    """

    def __init__(self, *, height: int = 256, width: int = 256, parcel_size: int = 16, kernel_size: int = 13):
        super().__init__()
        self.height, self.width = height, width
        self.parcel_size, self.kernel_size = parcel_size, kernel_size
        self.global_map = GlobalParcelMap(height=height, width=width, parcel_size=parcel_size)
        self.local = LocallyConnected2d(height=height, width=width, kernel_size=kernel_size)

    @classmethod
    def from_config(cls, config, *, height: int, width: int) -> GLFA:
        """Build from a :class:`~glfa.config.GlfaLayerConfig`."""
        return cls(height=height, width=width, parcel_size=config.parcel_size, kernel_size=config.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] or [N, H, W] -> same shape, zero wherever the input is zero."""
        frames, had_channel = _as_frames(x, self.height, self.width, "x")
        out = self.global_map(frames) * (frames != 0)  # [n, h, w]
        out = self.local(out) * (out != 0)
        return out[:, None] if had_channel else out
