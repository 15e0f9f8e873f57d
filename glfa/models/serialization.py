"""save_pretrained / from_pretrained for glfa models: safetensors weights + a JSON config, atomic.

A saved model is a folder holding ``model.safetensors`` and ``config.json``. The weights are
written first and the config last (each through a temporary file and ``os.replace``); the
config records the class, a format version and the byte size of the weights, so a folder whose
write was interrupted, or whose files were truncated or swapped, is refused with a
:class:`~glfa.errors.CheckpointError` naming it. No pickle is ever read.

:class:`PretrainedMixin` gives a glfa ``nn.Module`` (FmriPTE, FmriEncoder) these as
``save_pretrained`` / ``from_pretrained``, and one switch for the gradient checkpointing of its blocks.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, Self

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from glfa.errors import CheckpointError
from glfa.io import atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    with atomic_path(path) as tmp:
        write(str(tmp))


def save_model(directory: str | Path, class_name: str, config: dict[str, Any],
               state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``state_dict`` (safetensors) and ``config`` (JSON) into ``directory`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    weights = directory / WEIGHTS_NAME
    _atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"class": class_name}))
    meta = {"class": class_name, "format_version": FORMAT_VERSION, "weights_bytes": weights.stat().st_size,
            "config": config}

    def write_json(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
            fh.write("\n")

    _atomic_write(directory / CONFIG_NAME, write_json)
    return directory


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; CheckpointError naming the file if it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"not valid JSON ({exc.__class__.__name__}: {exc})", path=path) from None
    if not isinstance(data, dict):
        raise CheckpointError("expected a JSON object", path=path)
    return data


def read_config(directory: str | Path, class_name: str) -> dict[str, Any]:
    """The ``config`` section of a saved ``class_name``; CheckpointError for a missing or foreign folder."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"no saved model here (missing {CONFIG_NAME})", path=directory)
    meta = read_json_object(cfg_path)
    if "config" not in meta or "class" not in meta:
        raise CheckpointError("not a glfa model config (expected keys 'class' and 'config')", path=cfg_path)
    if meta["class"] != class_name:
        raise CheckpointError(f"holds a {meta['class']}, expected a {class_name}", path=directory, field="class")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"written by a newer glfa (format {meta['format_version']} > {FORMAT_VERSION})",
                              path=cfg_path, field="format_version")
    return meta


def load_weights(directory: str | Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Read the safetensors weights of a saved model, checking them against its config."""
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"missing {WEIGHTS_NAME}", path=directory)
    size = weights.stat().st_size
    if size != meta.get("weights_bytes"):
        raise CheckpointError(f"weights are {size} bytes, the config expects {meta.get('weights_bytes')} "
                              "(half-written or replaced)", path=weights)
    try:
        return load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt weights ({exc.__class__.__name__}: {exc})", path=weights) from None


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``module.load_state_dict(state, strict=True)``, turning mismatches into a CheckpointError."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"weights do not fit the model: {' '.join(first[:3])}", path=path) from None


class PretrainedMixin(abc.ABC):
    """``save_pretrained`` / ``from_pretrained`` and gradient checkpointing for a glfa ``nn.Module``.

    A subclass says how its constructor arguments become the saved ``config`` (:meth:`saved_config`)
    and back (:meth:`from_saved_config`); the folder's class is the subclass's name. Gradient
    checkpointing switches every submodule that has a boolean ``gradient_checkpointing``
    attribute (the transformer stacks, which pass it to :func:`glfa.models.layers.run_blocks`).
    """

    @abc.abstractmethod
    def saved_config(self) -> dict[str, Any]:
        """The JSON ``config`` that :meth:`from_saved_config` rebuilds this model (untrained) from."""

    @classmethod
    @abc.abstractmethod
    def from_saved_config(cls, config: dict[str, Any]) -> Self:
        """A freshly initialised model from a :meth:`saved_config`."""

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into ``directory`` (atomic)."""
        return save_model(directory, type(self).__name__, self.saved_config(), self.state_dict())

    @classmethod
    def read_saved_config(cls, directory: str | Path) -> dict[str, Any]:
        """The saved ``config`` of a folder written by :meth:`save_pretrained` of this class."""
        return dict(read_config(directory, cls.__name__)["config"])

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, map_location: str | torch.device = "cpu") -> Self:
        """Load a model written by :meth:`save_pretrained`; CheckpointError naming a bad folder."""
        meta = read_config(directory, cls.__name__)
        try:
            model = cls.from_saved_config(meta["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid model config ({exc.__class__.__name__}: {exc})".splitlines()[0],
                                  path=Path(directory) / CONFIG_NAME) from None
        load_state(model, load_weights(directory, meta), directory)
        return model.to(map_location)

    def _checkpointable(self) -> list[torch.nn.Module]:
        """The submodules with a boolean ``gradient_checkpointing`` switch."""
        return [m for m in self.modules()
                if m is not self and isinstance(getattr(m, "gradient_checkpointing", None), bool)]

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the blocks' activations in backward (saves memory, costs one more forward)."""
        for module in self._checkpointable():
            module.gradient_checkpointing = enabled

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether the blocks' activations are recomputed in backward."""
        return all(module.gradient_checkpointing for module in self._checkpointable())
