"""Image preprocessing in plain torch (no torchvision, no PIL), and batched inference.

Frames are ``[n, h, w, 3]`` uint8 (or float in [0, 1]), resized with antialiasing, centre-cropped
and normalised as each model's ``preprocessor_config.json`` says (the model family's defaults
below where there is none).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from glfa.errors import DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)  # ViT-B/16 and EfficientNet-Lite (TF-lite 127/128 convention)
HALF_STD = (0.5, 0.5, 0.5)


def frames_to_tensor(frames: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``[n, h, w, 3]`` uint8 (or float in [0, 1]) frames -> float32 ``[n, 3, h, w]`` in [0, 1]."""
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"expected frames [n, h, w, 3], got shape {tuple(x.shape)}", field="frames")
    x = x.to(device) if device is not None else x
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.permute(0, 3, 1, 2).contiguous()  # [n, 3, h, w]


def resize(x: torch.Tensor, height: int, width: int, mode: str = "bicubic") -> torch.Tensor:
    """``[n, 3, h, w]`` -> ``[n, 3, height, width]`` with antialiasing, clipped to [0, 1]."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode=mode, align_corners=False, antialias=True).clamp(0, 1)


def resize_center_crop(x: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize the shortest side of ``[n, 3, h, w]`` to ``size``, then centre-crop ``size x size``."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    x = resize(x, nh, nw, mode)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size]


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` of ``[..., 3, h, w]``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def in_batches(fn, items, size: int) -> torch.Tensor:
    """``fn`` over consecutive slices of ``items`` of at most ``size`` items, outputs concatenated on dim 0."""
    return torch.cat([fn(items[start:start + size]) for start in range(0, len(items), size)])
