"""Where computations run: the device by name, and CPU denormal flushing for small-update loops."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["resolve_device", "flush_denormals"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available and CPU otherwise (``None`` or ``"auto"``)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on CPU inside the block (restored to the default, off, after).

    Fitting on real responses drives some optimiser statistics into the denormal range, where
    CPU arithmetic is ten or more times slower; flushing them costs no accuracy that matters here.
    """
    enabled = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)
