"""Import the authors' published checkpoints (``.pth``) as glfa models.

Three kinds of checkpoint exist (``official-weights.md`` of the project):

- ``pte``: the fMRI-PTE autoencoder (``transformer.*``; NeuroPictor's UK Biobank
  ``checkpoint_120000.pth`` and GLFA's ``pretrained-fmri-encoder.pth``) -> :class:`FmriPTE`;
- ``stage1``: the encoder after fMRI -> CLIP training (``fmri_encoder.transformer.*``,
  ``fmri_encoder_proj.*``, ``fmri2clip.*``, ``logit_scale``) -> :class:`FmriEncoder`;
- ``stage2``: the co-trained encoder (``func_align_layer.*`` when GLFA is on, no ``fmri2clip``)
  -> :class:`FmriEncoder`; its CLIP head is not in the file and keeps its initial weights.

A file is read with ``torch.load(weights_only=True)`` only: tensors and plain containers, never
arbitrary pickled objects (which could run code). The ``{'model': state}`` container and the
``module.`` prefix of DDP are unwrapped; float16 tensors become float32. The architecture is read
off the keys and shapes (depth, window n, GLFA on or off, the CLIP head variant, ...); the head
count is not in any shape and is taken as D / 64 (the authors' 1024 / 16) unless given.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from glfa.config import ModelConfig
from glfa.errors import CheckpointError, GlfaError
from glfa.models.encoder import FmriEncoder
from glfa.models.pte import FmriPTE

KINDS = ("pte", "stage1", "stage2")
_AUTHOR_HEAD_DIM = 64
_PTE = "transformer."
_ENCODER = "fmri_encoder.transformer."
# The authors' names -> glfa's, by prefix, in the order tried (first match wins).
_PTE_NAMES = [
    ("pred.", "decoder.to_bottleneck."), ("decoder_embed.", "decoder.from_bottleneck."),
    ("mask_token", "decoder.mask_token"), ("decoder_pos_embed", "decoder.pos_embed"),
    ("decoder_blocks.", "decoder.blocks."), ("decoder_norm.", "decoder.norm."), ("decoder_pred.", "decoder.pred."),
    ("patch_embed.proj.", "encoder.patch_embed."), ("", "encoder."),
]
_ENCODER_NAMES = [
    (_ENCODER + "patch_embed.proj.", "pte.patch_embed."), (_ENCODER, "pte."),
    ("fmri_encoder_proj.attn.norm1.", "temporal.layers.0.norm_spatial."),
    ("fmri_encoder_proj.attn.attn.", "temporal.layers.0.spatial."),
    ("fmri_encoder_proj.attn.norm_temp.", "temporal.layers.0.norm_temporal."),
    ("fmri_encoder_proj.attn.attn_temp.", "temporal.layers.0.temporal."),
    ("fmri_encoder_proj.attn.norm2.", "temporal.layers.0.norm_mlp."),
    ("fmri_encoder_proj.attn.mlp.", "temporal.layers.0.mlp."),
    ("fmri_encoder_proj.cond_state_transform.", "token_head."),
    ("fmri2clip.1.", "clip_head.proj."), ("fmri2clip.", "clip_head."),
]
# Stage-1 keys glfa keeps elsewhere: the contrastive stage learns its own temperature.
_DROPPED = ("logit_scale",)


#: Every published fMRI-PTE and GLFA model saw the authors' flat images (``data.geometry: fmri-pte``):
#: an imported model records it, so a store of other images is refused before decoding.
PUBLISHED_GEOMETRY = "fmri-pte"


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an authors' ``.pth``: unwrapped, ``module.`` stripped, float32.

    Raises CheckpointError naming the file when it needs more than tensors to load, is
    truncated or corrupt, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such checkpoint file", path=path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError("refused: the file holds pickled objects besides tensors, and loading those could "
                                  "run arbitrary code (glfa reads checkpoints with torch.load(weights_only=True) only)",
                                  path=path) from None
        raise CheckpointError(f"not a readable torch checkpoint (truncated or corrupt: {exc})", path=path) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(f"not a readable torch checkpoint (truncated or corrupt: {detail})", path=path) from None
    state = data.get("model", data) if isinstance(data, dict) else data
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"expected a state dict or {{'model': state_dict}}, got {type(state).__name__}",
                              path=path, field="model")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"expected tensors, got {type(value).__name__}", path=path, field=str(key))
        out[str(key).removeprefix("module.")] = value.float() if value.is_floating_point() else value
    return out


def infer_kind(state: dict[str, torch.Tensor], path: str | Path = "<checkpoint>") -> str:
    """``pte``, ``stage1`` or ``stage2`` from the keys; CheckpointError for keys of another model."""
    if _PTE + "cls_token" in state and _PTE + "decoder_pred.weight" in state:
        return "pte"
    if _ENCODER + "cls_token" in state and "fmri_encoder_proj.cond_state_transform.projection.weight" in state:
        return "stage1" if any(k.startswith("fmri2clip.") for k in state) else "stage2"
    sample = sorted(state)[:4]
    raise CheckpointError(f"keys of an unknown model (e.g. {sample}); expected the authors' fMRI-PTE "
                          f"({_PTE}cls_token, {_PTE}decoder_pred.weight, ...) or fMRI encoder "
                          f"({_ENCODER}cls_token, fmri_encoder_proj.*, ...)", path=path)


def _shape(state: dict[str, torch.Tensor], key: str, ndim: int, path) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError("missing key", path=path, field=key)
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"expected a {ndim}-D tensor, got shape {list(shape)}", path=path, field=key)
    return shape


def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _pte_fields(state, prefix: str, path, num_heads: int | None) -> tuple[dict[str, Any], int]:
    """(PteConfig fields, image size) of the PTE encoder under ``prefix``."""
    dim = _shape(state, prefix + "cls_token", 3, path)[-1]
    patch = _shape(state, prefix + "patch_embed.proj.weight", 4, path)[-1]
    tokens = _shape(state, prefix + "pos_embed", 3, path)[1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise CheckpointError(f"expected 1 + a square number of tokens, got {tokens}", path=path,
                              field=prefix + "pos_embed")
    depth = _depth(state, prefix + "blocks.")
    if depth == 0:
        raise CheckpointError("no transformer block", path=path, field=prefix + "blocks.0.norm1.weight")
    hidden = _shape(state, prefix + "blocks.0.mlp.fc1.weight", 2, path)[0]
    heads = num_heads if num_heads is not None else max(1, dim // _AUTHOR_HEAD_DIM)
    return {"patch_size": patch, "embed_dim": dim, "depth": depth, "num_heads": heads,
            "mlp_ratio": hidden / dim}, grid * patch


def infer_config(state: dict[str, torch.Tensor], kind: str, *, path: str | Path = "<checkpoint>",
                 num_heads: int | None = None) -> dict[str, Any]:
    """The glfa constructor arguments of a checkpoint of ``kind``.

    ``pte``: ``{"pte": FmriPTE kwargs}``; ``stage1``/``stage2``: ``{"model": ModelConfig data,
    "image_size": int, "num_frames": int}``.
    """
    if kind == "pte":
        pte, image = _pte_fields(state, _PTE, path, num_heads)
        width = _shape(state, _PTE + "decoder_embed.weight", 2, path)[0]
        if width != pte["embed_dim"]:
            raise CheckpointError(f"the decoder is {width} wide, the encoder {pte['embed_dim']}: glfa's decoder has "
                                  "the encoder's width", path=path, field=_PTE + "decoder_embed.weight")
        pte.update(decoder_depth=_depth(state, _PTE + "decoder_blocks."), decoder_num_heads=pte["num_heads"],
                   bottleneck_dim=_shape(state, _PTE + "pred.weight", 2, path)[0])
        return {"pte": {"image_size": image, **pte}}
    pte, image = _pte_fields(state, _ENCODER, path, num_heads)
    mapper = "fmri_encoder_proj.cond_state_transform.channel_mapper."
    num_tokens, hidden = _shape(state, mapper + "1.weight", 2, path)
    per_frame = _shape(state, _ENCODER + "pos_embed", 3, path)[1]
    total = _shape(state, mapper + "0.weight", 2, path)[1]
    if total % per_frame:
        raise CheckpointError(f"{total} input tokens are not a whole number of frames of {per_frame} tokens",
                              path=path, field=mapper + "0.weight")
    frames = total // per_frame
    token_dim = _shape(state, "fmri_encoder_proj.cond_state_transform.projection.weight", 2, path)[0]
    temporal = {"depth": 0, "num_heads": pte["num_heads"]}
    if "fmri_encoder_proj.attn.norm1.weight" in state:
        ratio = _shape(state, "fmri_encoder_proj.attn.mlp.fc1.weight", 2, path)[0] / pte["embed_dim"]
        temporal.update(depth=1, mlp_ratio=ratio)
    heads = {"num_tokens": num_tokens, "token_dim": token_dim, "clip_dim": token_dim, "clip_head": "fmri2clip"}
    if "fmri2clip.1.weight" in state:
        heads.update(clip_head="linear", clip_dim=_shape(state, "fmri2clip.1.weight", 2, path)[0])
    elif "fmri2clip.dim_mapper.weight" in state:
        heads.update(clip_dim=_shape(state, "fmri2clip.dim_mapper.weight", 2, path)[0])
    glfa: dict[str, Any] = {"enabled": "func_align_layer.weight" in state}
    if glfa["enabled"]:
        local = _shape(state, "func_align_layer.weight", 6, path)
        if "func_align_layer.global_align_weight" not in state:
            raise CheckpointError("GLFA's local step without its global step (global_align: False) is not a glfa "
                                  "model", path=path, field="func_align_layer.global_align_weight")
        parcels = _shape(state, "func_align_layer.global_align_weight", 4, path)[-1]
        kernel, parcel = math.isqrt(local[-1]), math.isqrt(image * image // parcels)
        if local[3:5] != (image, image) or kernel * kernel != local[-1] or parcel * parcel * parcels != image * image:
            raise CheckpointError(f"expected [1, 1, 1, {image}, {image}, k*k] and {image} x {image} images in square "
                                  f"parcels, got {list(local)} and {parcels} parcels", path=path,
                                  field="func_align_layer.weight")
        glfa.update(kernel_size=kernel, parcel_size=parcel)
    model = {"preset": "full", "pte": pte, "temporal": temporal, "heads": heads, "glfa": glfa}
    return {"model": model, "image_size": image, "num_frames": frames}


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for theirs, ours in rules:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return None


def convert_state(state: dict[str, torch.Tensor],
                  kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(glfa state dict, glfa name -> the authors' name, the authors' keys left out on purpose).

    Keys that match no rule keep their own names, so that loading reports them as unexpected.
    """
    out, origin, dropped = {}, {}, []
    for key, value in state.items():
        if kind == "pte":
            new = _rename(key.removeprefix(_PTE), _PTE_NAMES) if key.startswith(_PTE) else None
        elif key in _DROPPED:
            dropped.append(key)
            continue
        elif key == "func_align_layer.weight":  # [1, 1, 1, H, W, k*k] -> [k*k, H, W]
            new, value = "glfa.local.weight", value.reshape(value.shape[3:]).permute(2, 0, 1)
        elif key == "func_align_layer.global_align_weight":  # [1, 1, P, P] -> [P, P]
            new, value = "glfa.global_map.weight", value.reshape(value.shape[2:])
        else:
            new = _rename(key, _ENCODER_NAMES)
        new = new if new is not None else key
        out[new], origin[new] = value.contiguous(), key
    return out, origin, dropped


def authors_name(key: str, kind: str) -> str:
    """The authors' name of glfa's weight ``key`` in a checkpoint of ``kind``."""
    if kind == "pte":
        return _PTE + _rename(key, [(ours, theirs) for theirs, ours in _PTE_NAMES])
    glfa = {"glfa.local.weight": "func_align_layer.weight",
            "glfa.global_map.weight": "func_align_layer.global_align_weight"}
    return glfa.get(key) or _rename(key, [(ours, theirs) for theirs, ours in _ENCODER_NAMES]) or key


def to_authors_state(model: FmriPTE | FmriEncoder, kind: str) -> dict[str, torch.Tensor]:
    """A glfa model's weights under the authors' names and shapes: the inverse of :func:`convert_state`.

    ``kind`` is ``pte`` for an FmriPTE, ``stage1`` (with the CLIP head and ``logit_scale`` at
    log(1/0.07)) or ``stage2`` (without them) for an FmriEncoder, whose spatiotemporal block must
    have at most one layer (their ``BlockTemp``). ``torch.save({"model": state}, path)`` then writes
    a file their code and :func:`import_checkpoint` read.
    """
    if kind not in KINDS:
        raise CheckpointError(f"expected one of {list(KINDS)}, got {kind!r}", field="kind")
    if (kind == "pte") != isinstance(model, FmriPTE):
        raise CheckpointError(f"kind {kind} does not go with a {type(model).__name__}", field="kind")
    if isinstance(model, FmriEncoder) and len(model.temporal.layers) > 1:
        raise CheckpointError(f"the authors' encoder has one spatiotemporal block, this one "
                              f"{len(model.temporal.layers)}", field="model.temporal.depth")
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        if key == "glfa.local.weight":  # [k*k, H, W] -> [1, 1, 1, H, W, k*k]
            value = value.permute(1, 2, 0)[None, None, None].contiguous()
        elif key == "glfa.global_map.weight":  # [P, P] -> [1, 1, P, P]
            value = value[None, None]
        if kind != "stage2" or not key.startswith("clip_head."):
            out[authors_name(key, kind)] = value
    if kind == "stage1":
        out["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return out


def _load_exactly(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: dict[str, str], kind: str,
                  path, *, may_miss: tuple[str, ...] = ()) -> list[str]:
    """Copy ``state`` into ``model``; CheckpointError naming unexpected, missing or mis-shaped keys.

    Keys are named as the authors' files name them (``origin``, :func:`authors_name`).
    Parameters of ``model`` under ``may_miss`` prefixes may be absent (they keep their values).
    Returns the names that kept their values.
    """
    own = model.state_dict()
    unexpected = sorted(origin[k] for k in set(state) - set(own))
    missing = sorted(authors_name(k, kind) for k in own if k not in state and not k.startswith(may_miss))
    shapes = [f"{origin[k]} {list(v.shape)} (glfa {k}: {list(own[k].shape)})" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    for what, names in (("unexpected keys", unexpected), ("missing keys", missing), ("mis-shaped keys", shapes)):
        if names:
            more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
            raise CheckpointError(f"{what} for the {type(model).__name__} its shapes describe: "
                                  f"{', '.join(names[:5])}{more}", path=path)
    kept = sorted(k for k in own if k not in state)
    model.load_state_dict({**{k: own[k] for k in kept}, **state}, strict=True)
    return kept


def import_checkpoint(path: str | Path, *, kind: str = "auto",
                      num_heads: int | None = None) -> tuple[FmriPTE | FmriEncoder, dict[str, Any]]:
    """Build the glfa model of an authors' checkpoint: (FmriPTE or FmriEncoder, report).

    ``report``: ``{"kind", "source", "kept_initial": [...], "dropped": [...]}``; ``kept_initial``
    names the glfa weights the file does not have (a stage-2 file's CLIP head).
    """
    if kind not in ("auto", *KINDS):
        raise CheckpointError(f"expected one of {['auto', *KINDS]}, got {kind!r}", path=path, field="kind")
    state = read_checkpoint(path)
    found = infer_kind(state, path)
    if kind != "auto" and kind != found:
        raise CheckpointError(f"--kind {kind} was asked for, but the keys are those of a {found} checkpoint",
                              path=path, field="kind")
    config = infer_config(state, found, path=path, num_heads=num_heads)
    converted, origin, dropped = convert_state(state, found)
    torch.manual_seed(0)  # weights the file lacks start from a reproducible initialisation
    try:
        if found == "pte":
            model: FmriPTE | FmriEncoder = FmriPTE(**config["pte"], geometry=PUBLISHED_GEOMETRY)
        else:
            model = FmriEncoder(ModelConfig.model_validate(config["model"]), config["image_size"],
                                config["num_frames"], geometry=PUBLISHED_GEOMETRY)
    except (ValueError, GlfaError) as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"the shapes describe no valid glfa model ({' '.join(first[:3])})", path=path,
                              field="num_heads") from None
    kept = _load_exactly(model, converted, origin, found, path, may_miss=("clip_head.",) if found == "stage2" else ())
    return model.eval(), {"kind": found, "source": str(Path(path).resolve()), "kept_initial": kept,
                          "dropped": dropped}


def import_weights(checkpoint: str | Path, out: str | Path, *, kind: str = "auto", num_heads: int | None = None,
                   pipeline: str | Path | None = None, store=None, config=None,
                   method: str | None = None) -> dict[str, Any]:
    """``glfa import-weights``: write an authors' checkpoint as a glfa model folder ``out``.

    Without ``pipeline``: ``FmriPTE.save_pretrained`` (pte) or ``FmriEncoder.save_pretrained``
    (stage1, stage2), for ``glfa train ... --init``. With ``pipeline`` (the diffusers folder
    released beside a stage-2 checkpoint, its UNet the trained one), ``out`` becomes a complete
    stage-2 decoder model folder as ``glfa train cotrain`` writes it, which ``glfa generate``
    decodes with: ``store`` (a StudyStore or its path) and ``config`` (a GlfaConfig: subjects,
    generation settings, ``cotrain.trainable_unet_patterns``) are then required. The negative
    condition is the encoder's tokens for the mean fMRI window of the config's training subjects
    over the store's training windows, as for a model glfa trains.

    Returns the import report (see :func:`import_checkpoint`) with ``"out"`` added.
    """
    model, report = import_checkpoint(checkpoint, kind=kind, num_heads=num_heads)
    out = Path(out)
    if pipeline is None:
        model.save_pretrained(out)
        return {**report, "out": str(out)}
    if report["kind"] != "stage2":
        raise CheckpointError(f"--pipeline goes with a stage-2 checkpoint, this one is {report['kind']}",
                              path=checkpoint, field="pipeline")
    if store is None or config is None:
        raise CheckpointError("--pipeline also needs --store (for the negative condition) and -c CONFIG (subjects "
                              "and generation settings)", path=checkpoint, field="store")
    _write_decoder(model, report, out, Path(pipeline), store, config, method)
    return {**report, "out": str(out)}


def _write_decoder(encoder: FmriEncoder, report: dict[str, Any], out: Path, pipeline: Path, store, config,
                   method: str | None) -> None:
    """Write ``out`` as a stage-2 decoder model folder (see :func:`import_weights`)."""
    from glfa.backbones import load_video_generator
    from glfa.data.store import StudyStore
    from glfa.errors import DataError
    from glfa.training.cotrain import mean_training_fmri, save_decoder_model, trainable_unet_parameters

    lora = sorted((pipeline / "lora").glob("*.pt"))
    if lora:  # their inference injects these when present; glfa does not, so refuse rather than decode otherwise
        raise CheckpointError(f"holds LoRA weights ({lora[0].name}, ...), which glfa does not apply", path=pipeline,
                              field="lora")
    store = store if isinstance(store, StudyStore) else StudyStore.open(store)
    for field, theirs, ours in (("num_frames", encoder.num_frames, store.fmri_frames),
                                ("image_size", encoder.image_size, store.image_size)):
        if theirs != ours:
            raise DataError(f"the checkpoint's encoder reads {field} {theirs} (its window or image), the store "
                            f"holds {ours}: prepare the store with the release config", path=store.path, field=field)
    train, held = config.check_subjects(store.subjects)
    generator = load_video_generator(pipeline, device="cpu", with_text_encoder=False)
    if generator.cross_attention_dim != encoder.config.heads.token_dim:
        raise CheckpointError(f"the UNet attends to tokens of width {generator.cross_attention_dim}, the encoder "
                              f"makes {encoder.config.heads.token_dim}", path=pipeline, field="cross_attention_dim")
    patterns = list(config.cotrain.trainable_unet_patterns)
    params = dict(generator.unet.named_parameters())
    trained = {name: params[name] for name in trainable_unet_parameters(generator.unet, patterns, source=config.source)}
    resolved = config.to_dict()
    resolved["model"] = encoder.config.model_dump(mode="json")
    resolved["cotrain"]["generator"] = str(pipeline.resolve())
    glfa = encoder.glfa is not None
    save_decoder_model(out, encoder=encoder, unet_state=trained, mean_fmri=mean_training_fmri(store, train), info={
        "method": method or ("glfa" if glfa else "pte-v"), "generator": str(pipeline.resolve()),
        "store": str(Path(store.path).resolve()), "store_identity": store.identity, "train_subjects": train,
        "held_out": held,
        "trainable_unet_patterns": patterns, "config": resolved, "imported_from": report["source"]})
