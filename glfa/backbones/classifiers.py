"""The classifiers of the N-way top-K metrics: ImageNet frames (ViT-B/16, or the offline
EfficientNet-Lite0 for ``None``) and Kinetics-400 videos (VideoMAE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from glfa.backbones.clip import ClipBackbone, StandInClip
from glfa.backbones.efficientnet import efficientnet_lite0
from glfa.backbones.hub import check_kind, checked_load, frozen, image_norm, resolve_pretrained, weights_kwargs
from glfa.backbones.image import (
    HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, frames_to_tensor, in_batches, normalize, resize,
    resize_center_crop,
)
from glfa.devices import resolve_device


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

        return in_batches(classify, frames, batch_size).numpy()


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

        return in_batches(classify, videos, batch_size).numpy()


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
        out = in_batches(both, frames, batch_size).numpy()
    classes = classifier.model._fc.out_features
    return out[:, :classes], out[:, classes:]


def load_frame_classifier(
    path_or_id: str | Path | None, device: str | torch.device | None = None, *, allow_pickle: bool = False
) -> FrameClassifier:
    """ImageNet frame classifier: a transformers ViTForImageClassification folder, or EfficientNet-Lite0 for None."""
    device = resolve_device(device)
    if path_or_id is None:
        return FrameClassifier(model=frozen(efficientnet_lite0(), device), size=224, mean=HALF_MEAN,
                               std=HALF_STD, crop=True)
    from transformers import ViTForImageClassification

    expected = "a transformers ViTForImageClassification folder (config.json with model_type 'vit'), e.g. google/vit-base-patch16-224"
    folder = resolve_pretrained(path_or_id, expected=expected, required=("config.json",))
    config = check_kind(folder / "config.json", "model_type", ("vit",), expected)
    model = checked_load("ViTForImageClassification", folder, ViTForImageClassification.from_pretrained, folder,
                         **weights_kwargs(folder, allow_pickle))
    mean, std = image_norm(folder, HALF_MEAN, HALF_STD)
    return FrameClassifier(model=frozen(model, device), size=config.get("image_size", 224), mean=mean, std=std,
                           crop=False, path=folder)


def load_video_classifier(
    path_or_id: str | Path, device: str | torch.device | None = None, *, allow_pickle: bool = False
) -> VideoClassifier:
    """Kinetics-400 video classifier from a transformers VideoMAEForVideoClassification folder."""
    from transformers import VideoMAEForVideoClassification

    expected = ("a transformers VideoMAEForVideoClassification folder (config.json with model_type 'videomae'), "
                "e.g. MCG-NJU/videomae-base-finetuned-kinetics")
    folder = resolve_pretrained(path_or_id, expected=expected, required=("config.json",))
    check_kind(folder / "config.json", "model_type", ("videomae",), expected)
    model = checked_load("VideoMAEForVideoClassification", folder, VideoMAEForVideoClassification.from_pretrained,
                         folder, **weights_kwargs(folder, allow_pickle))
    mean, std = image_norm(folder, IMAGENET_MEAN, IMAGENET_STD)
    return VideoClassifier(model=frozen(model, resolve_device(device)), mean=mean, std=std, path=folder)
