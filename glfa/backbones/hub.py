"""Where a backbone's files come from: a local folder, or a hub id already in the local cache.

Nothing is ever downloaded: every load passes ``local_files_only=True`` (importing glfa sets no
environment variable; the loaders themselves never reach the network). A hub id is looked up in the
local Hugging Face cache only; a missing folder, a hub id that is not cached, or a folder of the
wrong kind raises :class:`~glfa.errors.BackboneError` saying what is expected there. Weights are
read from safetensors files only, unless ``allow_pickle=True`` is passed for checkpoints that ship
``.bin``. Every loader of the package goes through :func:`resolve_pretrained`, :func:`check_kind`,
:func:`weights_kwargs` and :func:`checked_load`, and freezes what it loaded with :func:`frozen`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from glfa.errors import BackboneError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
    "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_pretrained(path_or_id: str | Path, *, expected: str, required: tuple[str, ...] = ()) -> Path:
    """The local folder of a backbone: ``path_or_id`` itself, or the cached snapshot of a hub id.

    Parameters
    ----------
    path_or_id : str or Path
        A local folder, or a hub id (``owner/name``) already in the local Hugging Face cache.
    expected : str
        What the folder should hold, for the error message.
    required : tuple of str
        Paths inside the folder that must exist.

    Raises
    ------
    BackboneError
        When the folder does not exist, the hub id is not cached, or a required file is missing.
    """
    text = str(path_or_id)
    folder = Path(text).expanduser()
    if not folder.is_dir():
        if folder.exists():
            raise BackboneError(f"is a file; expected a folder: {expected}", path=text)
        if not _HUB_ID.match(text):
            raise BackboneError(f"folder not found; expected {expected}", path=text)
        folder = _cached_snapshot(text, expected)
    missing = [name for name in required if not (folder / name).exists()]
    if missing:
        raise BackboneError(f"missing {', '.join(missing)}; expected {expected}", path=folder)
    return folder


def _cached_snapshot(repo_id: str, expected: str) -> Path:
    """The local-cache snapshot folder of ``repo_id``; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE  # read now: the constant is fixed at import
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except Exception as exc:  # huggingface_hub raises several types for "not cached"
        raise BackboneError(
            f"not a local folder and not in the local Hugging Face cache ({cache}; "
            f"{exc.__class__.__name__}); glfa never downloads: fetch it on a machine with network "
            f"(`hf download {repo_id}`) or pass the folder. Expected {expected}",
            path=repo_id,
        ) from None


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``dtype`` as a torch dtype (names like ``"bf16"`` or ``"float16"`` accepted); float32 by default."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in _DTYPES:
        raise BackboneError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}", field="dtype")
    return _DTYPES[str(dtype)]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; BackboneError when unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot read JSON ({exc.__class__.__name__}: {exc})", path=path) from None
    if not isinstance(data, dict):
        raise BackboneError("expected a JSON object", path=path)
    return data


def check_kind(config_path: Path, key: str, allowed: tuple[str, ...], expected: str) -> dict[str, Any]:
    """The config at ``config_path`` after checking that its ``key`` is one of ``allowed``."""
    config = read_json(config_path)
    if config.get(key) not in allowed:
        raise BackboneError(
            f"{key} is {config.get(key)!r}, expected {' or '.join(map(repr, allowed))}: {expected}",
            path=config_path,
        )
    return config


def weights_kwargs(folder: Path, allow_pickle: bool) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments: offline, safetensors unless allowed, fp16 variant if only that."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    suffixes = (".safetensors", ".safetensors.index.json")
    if allow_pickle:
        suffixes += (".bin", ".bin.index.json")
    plain = [n for n in names if n.endswith(suffixes) and ".fp16." not in n]
    fp16 = [n for n in names if n.endswith(suffixes) and ".fp16." in n]
    kwargs: dict[str, Any] = {"local_files_only": True}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if not plain and fp16:
        kwargs["variant"] = "fp16"
    if not plain and not fp16:
        only = "safetensors" if not allow_pickle else "safetensors or .bin"
        raise BackboneError(
            f"no weights ({only}) found"
            + ("" if allow_pickle else "; pickled .bin weights are refused unless allow_pickle=True"),
            path=folder,
        )
    return kwargs


def checked_load(what: str, folder: Path, loader, *args, **kwargs):
    """``loader(*args, **kwargs)`` with any loading failure turned into a BackboneError naming ``folder``."""
    try:
        return loader(*args, **kwargs)
    except BackboneError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BackboneError(f"cannot load the {what} ({exc.__class__.__name__}: {first})", path=folder) from None


def image_norm(folder: Path, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple, tuple]:
    """(mean, std) from ``preprocessor_config.json`` when present, else the given defaults."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return mean, std
    config = read_json(path)
    return tuple(config.get("image_mean", mean)), tuple(config.get("image_std", std))


def frozen(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``model`` in eval mode, on ``device`` (and ``dtype``), with gradients off."""
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model
