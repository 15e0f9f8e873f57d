"""Training: one accelerate loop (:func:`train`) into which each stage plugs its :class:`Stage`.

- :mod:`glfa.training.loop`: :class:`Stage`, :class:`StepOutput`, :class:`TrainSettings`, :func:`train`,
  :class:`IndexStream` (the seeded, resumable data order).
- :mod:`glfa.training.checkpoint`: atomic safetensors + JSON checkpoints, validated before use.
- :mod:`glfa.training.stage`: :class:`StudyStage` (config, store, subjects, the ``--init`` rule) and
  :func:`run_stage`, which trains any of the three stages below.
- :mod:`glfa.training.pretrain`: stage 0, reconstruction fine-tuning of fMRI-PTE (``glfa train pretrain``).
- :mod:`glfa.training.contrastive`: stage 1, fMRI -> CLIP space on cached embeddings (``glfa train contrastive``).
- :mod:`glfa.training.cotrain`: stage 2, encoder + GLFA + UNet attention/temporal layers (``glfa train cotrain``).
"""

from glfa.training.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from glfa.training.loop import IndexStream, Stage, StepOutput, TrainResult, TrainSettings, train
from glfa.training.pretrain import PretrainStage, TrainingFrames
from glfa.training.stage import StudyStage, run_stage

__all__ = [
    "Checkpoint",
    "IndexStream",
    "PretrainStage",
    "Stage",
    "StepOutput",
    "StudyStage",
    "TrainResult",
    "TrainSettings",
    "TrainingFrames",
    "latest_checkpoint",
    "load_checkpoint",
    "run_stage",
    "save_checkpoint",
    "train",
]
