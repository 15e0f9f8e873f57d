"""Stage 1: contrastive learning of the fMRI encoder against frozen CLIP (paper section 3.4).

The encoder (fMRI-PTE + spatiotemporal block + heads, GLFA off: GLFA trains in stage 2) maps a
window of fMRI to CLIP space; the loss is ``(CLIP(f, img) + CLIP(f, txt)) / 2``, the symmetric
InfoNCE of :func:`glfa.losses.clip_loss` against the embedding of one random frame of the window
and its caption, with a learnable logit scale (``log(1/0.07)`` at the start, capped at
``log(100)`` as in CLIP). Frames come as one of ``contrastive.augment_views`` views (the frame or a
random crop; the caption or a word-swapped / synonym-replaced one), drawn at random per sample.

The frozen CLIP never runs in a step: every view of every frame and caption is embedded once
into the store's cache (:func:`glfa.data.features.clip_features`) when the stage is built and
moved to the training device once.

A batch holds every training subject's response to the same stimuli: an item is one training
window with all training subjects' fMRI, ``contrastive.stimuli_per_batch`` windows make a batch,
and each step picks ``contrastive.subjects_per_batch`` of the training subjects at random (all of
them when there are fewer). The loss is computed per subject (its ``B`` fMRI embeddings against
the ``B`` stimuli) and averaged, so no stimulus appears twice among a loss's negatives. The
logs hold the top-1 fMRI -> image and fMRI -> caption retrieval accuracy within the batch.

The encoder's PTE starts from ``RUN/pte`` (stage 0) when it exists, or from ``init_from``. The
token projector (the generator's condition) is not in this loss: it stays frozen until stage 2.
Held-out subjects and test windows are never read. The result, an
:meth:`~glfa.models.encoder.FmriEncoder.save_pretrained` folder, is ``RUN/contrastive/encoder/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from glfa.config import GlfaConfig, ModelConfig
from glfa.data.datasets import StimulusWindowDataset
from glfa.data.features import ClipFeatures, clip_features
from glfa.errors import DataError
from glfa.losses import clip_loss
from glfa.runs import CONTRASTIVE, RunLayout
from glfa.training.loop import StepOutput, TrainSettings, main_process_first, process_device
from glfa.training.pretrain import PTE_START
from glfa.training.stage import Start, StudyStage

#: Stage 1's output as the start of stage 2.
STAGE1_START = Start("FmriEncoder", "encoder", "stage-1 encoder", "stage1_encoder", "glfa train contrastive")


class LogitScale(nn.Module):
    """The CLIP loss's learnable log inverse temperature: one parameter, clamped to ``max_value`` when read."""

    def __init__(self, init: float = math.log(1 / 0.07), max_value: float = math.log(100.0)):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))
        self.max_value = float(max_value)

    def forward(self) -> torch.Tensor:
        """The current log scale (a scalar)."""
        return self.value.clamp(max=self.max_value)


def stage1_model_config(config: GlfaConfig) -> ModelConfig:
    """``config.model`` with GLFA off and the heads' dropout set to ``contrastive.dropout``."""
    data = config.model.model_dump(mode="json")
    data["glfa"]["enabled"] = False
    data["heads"]["dropout"] = config.contrastive.dropout
    return ModelConfig.model_validate(data)


class ContrastiveStage(StudyStage):
    """Stage 1 plugged into :func:`~glfa.training.loop.train`: FmriEncoder vs cached frozen CLIP embeddings.

    Parameters
    ----------
    config
        The experiment config (``model``, ``contrastive``, ``subjects``).
    store
        An open :class:`~glfa.data.store.StudyStore` with captions.
    run_dir
        The run folder (default ``output_dir/name``).
    init_from
        A folder written by ``FmriPTE.save_pretrained`` whose encoder weights start the PTE;
        None: ``RUN/pte`` when it exists, else a random initialisation.
    clip
        The frozen CLIP: a loaded backbone, or a folder / hub id / None (stand-in), loaded only when
        the store's embedding cache must be built (default ``contrastive.clip_model``).
    progress
        Show a progress bar while building the embedding cache.
    """

    name = CONTRASTIVE
    init_accepts = init_defaults = (PTE_START,)

    def __init__(self, config: GlfaConfig, store, *, run_dir: str | Path | None = None,
                 init_from: str | Path | None = None, clip: Any = None, progress: bool = True):
        super().__init__(config, store, run_dir=run_dir, init_from=init_from, progress=progress)
        section = config.contrastive
        self.settings = TrainSettings.from_config(section, batch_size=section.stimuli_per_batch)
        self.model_config = stage1_model_config(config)
        self.check_patch_size(self.model_config.pte.patch_size)
        self.windows = StimulusWindowDataset(store, self.train_subjects, split="train", with_video=False,
                                             dtype=torch.float16)
        if len(self.windows) == 0:
            raise DataError(f"no training window that every training subject {self.train_subjects} has",
                            path=store.path)
        # first frame-table row of each training window, by window index (-1: not a training window)
        self.frame_start = torch.full((len(store.windows()),), -1, dtype=torch.long)
        for window in self.windows.windows:
            self.frame_start[window.index] = store.frame_index(window)
        self.features = self._clip_features(clip if clip is not None else section.clip_model, progress)
        self._on_device: tuple[torch.Tensor, torch.Tensor] | None = None

    def _clip_features(self, clip: Any, progress: bool) -> ClipFeatures:
        """The cached embeddings; under ``accelerate launch`` the main process builds them first."""
        with main_process_first(self.config.device) as is_main:
            return clip_features(self.store, clip, config=self.config, device=process_device(self.config.device),
                                 progress=progress and is_main)

    def build_models(self) -> dict[str, nn.Module]:
        """The encoder (GLFA off, heads' dropout from the config, PTE from ``init_from``) and the logit scale.

        With the linear CLIP head the spatiotemporal block and the token head are frozen.
        """
        from glfa.models.encoder import FmriEncoder

        encoder = FmriEncoder(self.model_config, self.store.image_size, self.store.fmri_frames,
                              geometry=self.store.geometry)
        if self.init_from is not None:
            encoder.load_pte(self.init_from)
        if encoder.clip_head.kind == "linear":  # it reads the PTE's [CLS] tokens: what follows the PTE gets no
            encoder.temporal.requires_grad_(False)  # gradient in stage 1 (stage 2 trains it); DDP needs it frozen
            encoder.token_head.requires_grad_(False)
        return {"encoder": encoder, "logit_scale": LogitScale()}

    def dataset(self) -> StimulusWindowDataset:
        """The training windows, each with every training subject's fMRI (float16)."""
        return self.windows

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``{"fmri": float16 [B, S, n, H, W], "window": [B]}``."""
        return {"fmri": torch.stack([it["fmri"] for it in items]),
                "window": torch.tensor([it["window"] for it in items], dtype=torch.long)}

    def targets(self, rows: torch.Tensor, image_view: torch.Tensor, text_view: torch.Tensor,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached image and caption embeddings of frame-table ``rows`` in the given views: float32 ``[B, D]`` each."""
        if self._on_device is None or self._on_device[0].device != device:
            self._on_device = (self.features.image.to(device), self.features.text.to(device))
        image, text = self._on_device  # [F, V, D] float16
        rows = rows.to(device)
        return image[rows, image_view.to(device)].float(), text[rows, text_view.to(device)].float()

    def step(self, models: dict[str, nn.Module], batch: dict[str, torch.Tensor]) -> StepOutput:
        """Per chosen subject: (CLIP(f, image) + CLIP(f, caption)) / 2 over the batch's stimuli; the mean."""
        fmri = batch["fmri"]  # [b, s, n, h, w] float16
        b, s = fmri.shape[:2]
        k = min(self.config.contrastive.subjects_per_batch, s)
        # every draw on the CPU from the global torch RNG (restored by checkpoints)
        chosen = torch.randperm(s)[:k]
        frame = torch.randint(self.store.video_frames, (b,))
        image_view = torch.randint(self.features.views, (b,))
        text_view = torch.randint(self.features.views, (b,))
        rows = self.frame_start[batch["window"].cpu()] + frame
        image, text = self.targets(rows, image_view, text_view, fmri.device)  # [b, d] each
        x = rearrange(fmri[:, chosen.to(fmri.device)].float(), "b s n h w -> (s b) n h w")
        f = rearrange(models["encoder"](x, heads=("clip",))["clip"].float(), "(s b) d -> s b d", s=k)
        scale = models["logit_scale"]()
        loss = torch.stack([(clip_loss(f[i], image, scale) + clip_loss(f[i], text, scale)) / 2
                            for i in range(k)]).mean()
        with torch.no_grad():
            target = torch.arange(b, device=f.device)
            image_hits = ((f @ image.T).argmax(-1) == target).float().mean()  # f rows are unit vectors
            text_hits = ((f @ text.T).argmax(-1) == target).float().mean()
        return StepOutput(loss=loss, logs={"retrieval_image": image_hits, "retrieval_text": text_hits,
                                           "logit_scale": scale.detach().exp()})

    def finish(self, models: dict[str, nn.Module], run_dir: Path) -> dict[str, str]:
        """Save the encoder into ``RUN_DIR/contrastive/encoder/``."""
        path = models["encoder"].save_pretrained(RunLayout(run_dir).stage1_encoder)
        return {"encoder": str(path)}

    def fingerprint(self) -> dict[str, Any]:
        """The embedding cache, model and subjects per batch besides what every stage's resumed run must share."""
        return {**super().fingerprint(), "clip_cache": self.features.key,
                "model": self.model_config.model_dump(mode="json"),
                "subjects_per_batch": self.config.contrastive.subjects_per_batch}

    def resolved_config(self) -> dict[str, Any]:
        """What every stage records, plus the stage-1 model, the embedding cache and the training windows."""
        return {**super().resolved_config(), "model": self.model_config.model_dump(mode="json"),
                "clip_cache": str(self.features.folder), "training_windows": len(self.windows),
                "image_size": self.store.image_size}
