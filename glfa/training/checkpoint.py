"""Training checkpoints: safetensors + JSON, written atomically, validated before use.

A checkpoint is a folder ``checkpoint-<step>`` inside a run's checkpoint root::

    checkpoint-<step>/
      model-<name>.safetensors   weights of every trained model, one file each
      optimizer.safetensors      the optimizer's state tensors, flattened ("state.<param>.<key>")
      optimizer.json             the optimizer's non-tensor state (param groups, scalars)
      state.json                 step, scheduler, RNG states, data position, file sizes and hashes
    latest                       text file naming the newest checkpoint, written last

It is written into a hidden temporary folder, every file fsynced, ``state.json`` last, then
swapped into place (:func:`glfa.io.replace_dir`); older checkpoints are pruned (the last ``keep``
stay). Nothing is ever unpickled: tensors come from safetensors, everything else from JSON.
A truncated file, a missing ``state.json`` or one without its required keys is refused with a
:class:`~glfa.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from glfa.errors import CheckpointError
from glfa.io import fsync_dir, remove_dir, remove_stale_temporaries, replace_dir, temporary_name, write_bytes_atomic
from glfa.models.serialization import read_json_object

FORMAT = "glfa-checkpoint"
VERSION = 1
STATE_FILE = "state.json"
LATEST_FILE = "latest"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
# Keys every state.json must hold; a file without one of them is refused.
REQUIRED_KEYS = ("format", "version", "stage", "step", "files", "scheduler", "rng", "data")

_NAME = re.compile(r"^checkpoint-(\d+)$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_]+$")


# ----------------------------------------------------------------------------- atomic files


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- optimizer state


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a torch optimizer ``state_dict`` into safetensors tensors and JSON-able data."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(param_id), {})[key] = _jsonable(value, f"optimizer state {key}")
    groups = [{k: _jsonable(v, f"param group {k}") for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild a torch optimizer ``state_dict`` from :func:`flatten_optimizer_state`'s parts."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entry in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(entry)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any, what: str) -> Any:
    """``value`` as plain JSON data (tuples become lists, 0-d tensors numbers); else an error."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, what) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{what}: {type(value).__name__} cannot be stored as JSON")


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The JSON-able part of an LR scheduler's ``state_dict`` (callables are rebuilt by the stage)."""
    out = {}
    for key, value in scheduler.state_dict().items():
        try:
            out[key] = _jsonable(value, f"scheduler {key}")
        except TypeError:
            continue
    return out


# ----------------------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, Any]:
    """The RNG states of python, numpy and torch (CPU and every CUDA device) as JSON data."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "cuda": [],
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the python, numpy and torch RNGs to a state from :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        cuda = [_bytes_tensor(s) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


# ----------------------------------------------------------------------------- write


@dataclass
class Checkpoint:
    """A validated checkpoint read back from disk."""

    path: Path
    step: int
    state: dict[str, Any]  # the parsed state.json
    models: dict[str, dict[str, torch.Tensor]]  # name -> state dict
    optimizer: dict[str, Any]  # a torch optimizer state_dict


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    models: dict[str, dict[str, torch.Tensor]],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``checkpoint-<step>`` under ``root`` atomically, point ``latest`` at it, prune old ones.

    Parameters
    ----------
    root
        The checkpoint root folder (created if needed).
    step
        The optimizer step the checkpoint holds.
    models
        Model name -> state dict (tensors); names are ``[A-Za-z0-9_]+``.
    optimizer
        A torch optimizer ``state_dict``.
    state
        JSON data: must hold ``stage``, ``scheduler``, ``rng`` and ``data``; ``step``, ``format``,
        ``version`` and ``files`` are filled in here.
    keep
        How many of the newest checkpoints stay after this one is written.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    tmp = temporary_name(final)
    tmp.mkdir()
    files: dict[str, dict[str, Any]] = {}

    def _put(name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        path = tmp / name
        save_file(tensors, str(path), metadata=metadata)
        _fsync_file(path)
        files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}

    for name, weights in models.items():
        if not _MODEL_NAME.match(name):
            raise ValueError(f"model name {name!r} must match [A-Za-z0-9_]+")
        owned = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}  # one copy each
        _put(f"model-{name}.safetensors", owned)
    opt_tensors, opt_meta = flatten_optimizer_state(optimizer)
    _put(OPTIMIZER_TENSORS, opt_tensors)
    opt_json = tmp / OPTIMIZER_JSON
    opt_json.write_text(json.dumps(opt_meta, sort_keys=True))
    _fsync_file(opt_json)
    files[OPTIMIZER_JSON] = {"bytes": opt_json.stat().st_size, "sha256": _sha256(opt_json)}

    full = dict(state)
    full.update({"format": FORMAT, "version": VERSION, "step": int(step), "files": files,
                 "models": sorted(models)})
    missing = [k for k in REQUIRED_KEYS if k not in full]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    state_path = tmp / STATE_FILE
    state_path.write_text(json.dumps(full, sort_keys=True))
    _fsync_file(state_path)
    fsync_dir(tmp)

    replace_dir(tmp, final)  # a step written again (the end of a resumed run) replaces the old folder whole
    write_bytes_atomic(root / LATEST_FILE, f"{final.name}\n".encode())
    prune_checkpoints(root, keep=keep)
    return final


def prune_checkpoints(root: str | Path, *, keep: int = 2) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (renamed aside first, so none is left half-deleted)."""
    removed = []
    for _, path in list_checkpoints(root)[:-keep] if keep > 0 else list_checkpoints(root):
        remove_dir(path)
        removed.append(path)
    return removed


def clean_partial(root: str | Path) -> list[Path]:
    """Remove the temporary checkpoint folders of killed writes in ``root`` (never a living run's)."""
    return remove_stale_temporaries(Path(root) / "checkpoint-*")


# ----------------------------------------------------------------------------- read


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``checkpoint-<step>`` folder under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest ``checkpoint-<step>`` under ``root`` (None when there is none).

    The folders themselves are the truth: a ``latest`` pointer can lag one checkpoint behind when a
    run is killed between the rename and the pointer write, so the highest step wins.
    """
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def read_state(path: str | Path) -> dict[str, Any]:
    """Parse and check a checkpoint's ``state.json``; refuse a missing, unreadable or incomplete one."""
    path = Path(path)
    state_path = path / STATE_FILE
    if not path.is_dir():
        raise CheckpointError("checkpoint folder not found", path=path)
    if not state_path.is_file():
        raise CheckpointError(f"missing {STATE_FILE}: the checkpoint is half-written or damaged", path=state_path)
    state = read_json_object(state_path)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"missing required key(s) {missing}", path=state_path)
    if state["format"] != FORMAT:
        raise CheckpointError(f"expected format {FORMAT!r}, got {state['format']!r}", path=state_path, field="format")
    if not isinstance(state["version"], int) or state["version"] > VERSION:
        raise CheckpointError(
            f"written by a newer checkpoint format (version {state['version']!r}); this glfa reads up to {VERSION}",
            path=state_path, field="version",
        )
    if not isinstance(state["files"], dict) or not state["files"]:
        raise CheckpointError("expected a non-empty mapping of files", path=state_path, field="files")
    _check_state_types(state, state_path)
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_rng(rng: Any) -> str | None:
    """What is wrong with one :func:`capture_rng` state, or None when it can be restored."""
    if not isinstance(rng, dict):
        return f"a mapping of RNG states, got {type(rng).__name__}"
    python, numpy_state, cpu = rng.get("python"), rng.get("numpy"), rng.get("torch")
    if not (isinstance(python, list) and len(python) == 3 and _is_int(python[0]) and isinstance(python[1], list)
            and all(_is_int(v) for v in python[1]) and (python[2] is None or isinstance(python[2], float))):
        return "'python': [version, [state ints], gauss]"
    if not (isinstance(numpy_state, list) and len(numpy_state) == 5 and isinstance(numpy_state[0], str)
            and isinstance(numpy_state[1], list) and all(_is_int(v) for v in numpy_state[1])
            and all(_is_int(v) for v in numpy_state[2:4]) and isinstance(numpy_state[4], (int, float))):
        return "'numpy': [kind, [keys], pos, has_gauss, cached]"
    if not isinstance(cpu, str) or not all(isinstance(c, str) for c in rng.get("cuda", [])):
        return "'torch' and 'cuda' as base64 text"
    try:
        for text in [cpu, *rng.get("cuda", [])]:
            base64.b64decode(text, validate=True)
    except ValueError:
        return "'torch' and 'cuda' as base64 text"
    return None


def _check_state_types(state: dict[str, Any], state_path: Path) -> None:
    """Refuse a state.json whose values have the wrong types, before anything is loaded from it."""
    def refuse(field: str, expected: str, got: Any) -> CheckpointError:
        return CheckpointError(f"expected {expected}, got {got!r}", path=state_path, field=field)

    if not _is_int(state["step"]) or state["step"] < 0:
        raise refuse("step", "a non-negative integer", state["step"])
    data = state["data"]
    if not isinstance(data, dict) or not _is_int(data.get("offset")) or data["offset"] < 0:
        raise refuse("data", "a mapping with a non-negative integer 'offset'", data)
    seconds = state.get("seconds", 0.0)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds >= 0:
        raise refuse("seconds", "a non-negative number", seconds)
    if not isinstance(state["scheduler"], dict):
        raise refuse("scheduler", "a mapping (the scheduler's state_dict)", state["scheduler"])
    if state.get("scaler") is not None and not isinstance(state["scaler"], dict):
        raise refuse("scaler", "a mapping or null", state["scaler"])
    rngs = state["rng"]
    if not isinstance(rngs, list) or not rngs:
        raise refuse("rng", "a non-empty list of RNG states (one per process)", rngs)
    for i, rng in enumerate(rngs):
        problem = _check_rng(rng)
        if problem:
            raise CheckpointError(f"expected {problem}", path=state_path, field=f"rng[{i}]")
    names = state.get("models", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and _MODEL_NAME.match(n) for n in names):
        raise refuse("models", "a list of model names", names)


def _check_file(folder: Path, name: str, expected: dict[str, Any]) -> Path:
    path = folder / name
    if not path.is_file():
        raise CheckpointError("file listed in state.json is missing", path=path)
    size = path.stat().st_size
    if size != expected.get("bytes"):
        raise CheckpointError(f"expected {expected.get('bytes')} bytes, found {size} (truncated or overwritten)",
                              path=path)
    if _sha256(path) != expected.get("sha256"):
        raise CheckpointError("contents do not match the sha256 recorded in state.json (corrupt)", path=path)
    return path


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"not a readable safetensors file ({exc})", path=path) from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint folder (sizes, hashes, safetensors headers, JSON keys)."""
    path = Path(path)
    state = read_state(path)
    files = state["files"]
    for name, expected in files.items():
        _check_file(path, name, expected if isinstance(expected, dict) else {})
    names = state.get("models", [])
    models = {}
    for name in names:
        fname = f"model-{name}.safetensors"
        if fname not in files:
            raise CheckpointError(f"model {name!r} has no weights file", path=path / STATE_FILE, field="files")
        models[name] = _load_tensors(path / fname)
    for needed in (OPTIMIZER_TENSORS, OPTIMIZER_JSON):
        if needed not in files:
            raise CheckpointError(f"{needed} is not listed", path=path / STATE_FILE, field="files")
    try:
        opt_meta = json.loads((path / OPTIMIZER_JSON).read_text())
        optimizer = unflatten_optimizer_state(_load_tensors(path / OPTIMIZER_TENSORS), opt_meta)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"optimizer state is malformed ({exc})", path=path / OPTIMIZER_JSON) from None
    return Checkpoint(path=path, step=state["step"], state=state, models=models, optimizer=optimizer)
