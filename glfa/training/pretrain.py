"""Stage 0: reconstruction fine-tuning of fMRI-PTE on the store's training split.

Single fMRI frames of the training subjects' training windows (every distinct frame once per
epoch) go through the PTE autoencoder; the loss is the MSE on the cortex-mask pixels. Batch size,
learning rate, weight decay and steps come from ``config.pretrain`` (the paper: 64, 1e-4, 0.01,
2000). Test-split windows and held-out subjects are never read. The result is saved with
``FmriPTE.save_pretrained`` into ``RUN_DIR/pte/``, where the later stages load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from glfa.config import GlfaConfig
from glfa.errors import ConfigError, DataError, StoreError
from glfa.runs import PRETRAIN, RunLayout
from glfa.training.loop import StepOutput, TrainSettings
from glfa.training.stage import Start, StudyStage

#: Stage 0's output as the start of a later stage (or the UK Biobank fMRI-PTE as stage 0's own start).
PTE_START = Start("FmriPTE", "pte", "fine-tuned PTE", "pte", "glfa train pretrain")


class TrainingFrames(Dataset):
    """Every distinct fMRI frame of ``subjects``' training windows, one item each: {"fmri": [1, H, W]}.

    Windows overlap when their stride is shorter than their fMRI span, so a frame is keyed by
    (subject, stimulus, frame index in the stored response) and listed once. Items depend only
    on their index; the store reopens its HDF5 file in each DataLoader worker.
    """

    def __init__(self, store, subjects: list[str]):
        n = store.fmri_frames
        self.store = store
        self.subjects = list(subjects)
        self.windows = {}
        self.items: list[tuple[str, int, int]] = []  # (subject, window index, frame within the window)
        seen: set[tuple[str, str, int]] = set()
        for window in store.windows("train"):
            if window.split != "train":
                raise StoreError(f"window {window.index} listed as training has split {window.split!r}",
                                 path=store.path)
            self.windows[window.index] = window
        for subject in self.subjects:
            for window in self.windows.values():
                if not store.has(subject, window.stimulus_id):
                    continue
                for j in range(n):
                    key = (subject, window.stimulus_id, window.fmri_start + j)
                    if key not in seen:
                        seen.add(key)
                        self.items.append((subject, window.index, j))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        subject, window_index, j = self.items[i]
        frames = self.store.fmri(subject, self.windows[window_index])  # [n, H, W]
        return {"fmri": torch.from_numpy(frames[j][None].copy())}  # [1, H, W]


class PretrainStage(StudyStage):
    """Stage 0 plugged into :func:`~glfa.training.loop.train`: FmriPTE, masked reconstruction MSE.

    Parameters
    ----------
    config
        The experiment config (``model`` for the PTE preset, ``pretrain`` for the hyperparameters,
        ``subjects`` for who trains).
    store
        An open :class:`~glfa.data.store.StudyStore`.
    run_dir, progress
        As :class:`~glfa.training.stage.StudyStage`.
    init_from
        A folder written by ``FmriPTE.save_pretrained`` (e.g. converted UK Biobank fMRI-PTE
        weights) to fine-tune; None starts from a random initialisation.
    """

    name = PRETRAIN
    init_accepts = (PTE_START,)

    def __init__(self, config: GlfaConfig, store, *, run_dir: str | Path | None = None,
                 init_from: str | Path | None = None, progress: bool = True):
        super().__init__(config, store, run_dir=run_dir, init_from=init_from, progress=progress)
        self.settings = TrainSettings.from_config(config.pretrain)
        self.check_patch_size(config.model.pte.patch_size)
        self.mask = self.cortex_mask()
        self._frames: TrainingFrames | None = None

    def _expected_config(self) -> dict[str, Any]:
        """FmriPTE constructor arguments from ``config.model.pte`` at the store's image size."""
        pte = self.config.model.pte
        return {"image_size": self.store.image_size, "patch_size": pte.patch_size, "embed_dim": pte.embed_dim,
                "depth": pte.depth, "num_heads": pte.num_heads, "mlp_ratio": float(pte.mlp_ratio),
                "decoder_depth": pte.decoder_depth, "decoder_num_heads": pte.decoder_num_heads,
                "bottleneck_dim": pte.bottleneck_dim}

    def build_models(self) -> dict[str, nn.Module]:
        """The PTE autoencoder of ``config.model`` at the store's image size (or the ``init_from`` weights)."""
        from glfa.models.pte import FmriPTE

        expected = self._expected_config()
        if self.init_from is None:
            return {"pte": FmriPTE(**expected, geometry=self.store.geometry)}
        saved = FmriPTE.read_saved_config(self.init_from)
        self.store.check_geometry(saved.get("geometry"), self.init_from)
        differ = sorted(k for k in expected if saved.get(k) != expected[k])
        if differ:
            detail = ", ".join(f"{k}: config {expected[k]!r}, saved {saved.get(k)!r}" for k in differ)
            raise ConfigError(f"the PTE in {self.init_from} does not match model.pte and the store ({detail})",
                              path=self.source, field="model.pte")
        pte = FmriPTE.from_pretrained(self.init_from)
        pte.geometry = self.store.geometry  # fine-tuned on the store's images from here on
        return {"pte": pte}

    def dataset(self) -> TrainingFrames:
        """Single frames of the training split of the training subjects."""
        if self._frames is None:
            self._frames = TrainingFrames(self.store, self.train_subjects)
            if len(self._frames) == 0:
                raise DataError(f"no training-split fMRI frame for subjects {self.train_subjects}",
                                path=self.store.path)
        return self._frames

    def step(self, models: dict[str, nn.Module], batch: dict[str, torch.Tensor]) -> StepOutput:
        """Masked MSE between the reconstruction and the input frames."""
        from glfa.losses import masked_mse

        x = batch["fmri"].float()  # [b, 1, H, W]
        recon = models["pte"](x)  # [b, 1, H, W]
        return StepOutput(loss=masked_mse(recon.float(), x, self.mask.to(x.device)))

    def finish(self, models: dict[str, nn.Module], run_dir: Path) -> dict[str, str]:
        """Save the fine-tuned PTE into ``RUN_DIR/pte/``."""
        path = models["pte"].save_pretrained(RunLayout(run_dir).pte)
        return {"pte": str(path)}

    def fingerprint(self) -> dict[str, Any]:
        """The model besides what every stage's resumed run must share."""
        return {**super().fingerprint(), "model": self._expected_config()}

    def resolved_config(self) -> dict[str, Any]:
        """What every stage records, plus the training frames and the image size."""
        return {**super().resolved_config(), "training_frames": len(self.dataset()),
                "image_size": self.store.image_size}


