"""What every stage of the method shares: its config, its study store, the subject split, the ``--init`` rule,
and :func:`run_stage`, the one way to train a stage.

A :class:`StudyStage` is a :class:`~glfa.training.loop.Stage` trained on a study store. Its
constructor resolves, the same way for every stage:

- the training and held-out subjects (``config.subjects`` against the store's subjects);
- the run folder (default ``output_dir/name``);
- the weights it starts from (the ``--init`` rule): an explicit ``init_from`` folder must hold one
  of :attr:`StudyStage.init_accepts`; without one the run folder is searched for
  :attr:`StudyStage.init_defaults` in order (a later one is a fallback and is warned about); when
  none is there the stage starts from a random initialisation, or, with
  :attr:`StudyStage.init_required`, refuses to start.

Stage 0 takes an explicit FmriPTE only; stage 1 also finds ``RUN/pte``; stage 2 needs
``RUN/contrastive/encoder``, else ``RUN/pte`` (warned), else an explicit folder.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glfa.config import GlfaConfig
from glfa.errors import ConfigError, DataError
from glfa.runs import RunLayout, default_run_dir
from glfa.training.loop import Stage, TrainResult, train


@dataclass(frozen=True)
class Start:
    """A kind of saved weights a stage can start from.

    Parameters
    ----------
    saved_class : the class recorded in the folder's ``config.json`` (``FmriPTE``, ``FmriEncoder``).
    kind : the short name a stage's resolved config records (``pte``, ``encoder``).
    what : how messages name it ("fine-tuned PTE").
    layout_attr : the :class:`~glfa.runs.RunLayout` property that names it in a run folder.
    command : the command that writes it there.
    """

    saved_class: str
    kind: str
    what: str
    layout_attr: str
    command: str

    def in_run(self, run_dir: Path) -> Path:
        """Where the run folder ``run_dir`` keeps it."""
        return getattr(RunLayout(run_dir), self.layout_attr)


def saved_class(folder: Path) -> str | None:
    """The ``class`` of a glfa model folder (None when it has no ``config.json``)."""
    from glfa.models.serialization import CONFIG_NAME, read_json_object

    path = folder / CONFIG_NAME
    return read_json_object(path).get("class") if path.is_file() else None


class StudyStage(Stage):
    """A training stage on a study store: config, store, subjects, run folder and starting weights.

    Parameters
    ----------
    config
        The experiment config.
    store
        An open :class:`~glfa.data.store.StudyStore`.
    run_dir
        The run folder (default ``output_dir/name``), where default starting weights are looked up.
    init_from
        A saved model folder to start from (see the module docstring for the rule without one).
    progress
        Show progress bars while caches are built.

    Attributes
    ----------
    train_subjects, held_out : the subjects resolved against the store.
    init_from : the folder the weights start from (None: a random initialisation).
    init_kind : its :attr:`Start.kind` (None for a random initialisation).
    """

    #: What an explicit ``init_from`` may hold.
    init_accepts: tuple[Start, ...] = ()
    #: What the run folder is searched for, in order, without an explicit ``init_from``.
    init_defaults: tuple[Start, ...] = ()
    #: Refuse to start from a random initialisation.
    init_required: bool = False

    def __init__(self, config: GlfaConfig, store, *, run_dir: str | Path | None = None,
                 init_from: str | Path | None = None, progress: bool = True):
        self.config, self.store, self.source, self.progress = config, store, config.source, progress
        self.train_subjects, self.held_out = config.check_subjects(store.subjects)
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
        self.init_from, self.init_kind = self._resolve_init(init_from)

    def _resolve_init(self, init_from: str | Path | None) -> tuple[Path | None, str | None]:
        """(folder, kind) of the weights the stage starts from, or (None, None) for a random initialisation."""
        if init_from is not None:
            folder = Path(init_from)
            found = saved_class(folder)
            for start in self.init_accepts:
                if found == start.saved_class:
                    return folder, start.kind
            expected = " or ".join(f"{s.saved_class} ({s.what})" for s in self.init_accepts)
            raise ConfigError(f"expected a saved {expected} folder", path=folder, field="init_from")
        for i, start in enumerate(self.init_defaults):
            folder = start.in_run(self.run_dir)
            if not folder.is_dir():
                continue
            if saved_class(folder) != start.saved_class:
                raise ConfigError(f"expected the {start.what} ({start.saved_class}) written by `{start.command}`",
                                  path=folder, field="init_from")
            if i:
                first = self.init_defaults[0]
                warnings.warn(f"no {first.what} at {first.in_run(self.run_dir)}: {self.name} starts from the "
                              f"{start.what} at {folder} (run `{first.command}` first for the paper's recipe)",
                              stacklevel=4)
            return folder, start.kind
        if self.init_required:
            missing = " and no ".join(f"{s.what} ({s.in_run(self.run_dir)})" for s in self.init_defaults)
            commands = "".join(f" (or `{s.command}`)" for s in self.init_defaults[1:])
            raise ConfigError(f"no {missing} to start from; run `{self.init_defaults[0].command}`{commands} first, "
                              "or pass init_from",
                              path=self.run_dir, field="init_from")
        return None, None

    def cortex_mask(self) -> torch.Tensor:
        """The store's cortex mask, bool ``[H, W]``; DataError when it selects no pixel."""
        mask = self.store.mask  # [H, W] bool
        if not mask.any():
            raise DataError("the store's cortex mask selects no pixel", path=self.store.path, field="mask")
        return torch.from_numpy(mask)

    def check_patch_size(self, patch_size: int) -> None:
        """ConfigError on ``model.pte.patch_size`` when it does not tile the store's images."""
        if self.store.image_size % patch_size:
            raise ConfigError(f"patch_size {patch_size} does not divide the store's image size {self.store.image_size}",
                              path=self.source, field="model.pte.patch_size")

    def fingerprint(self) -> dict[str, Any]:
        """Subjects, store, dataset size and initial weights: a resumed run must share them (stages add theirs)."""
        # The store by its creation stamp, not its path: a moved store still resumes, a rebuilt one does not.
        return {"train_subjects": self.train_subjects, "store_created": self.store.manifest.get("created"),
                "dataset_size": len(self.dataset()),
                "init_from": str(self.init_from.resolve()) if self.init_from else None}

    def resolved_config(self) -> dict[str, Any]:
        """The full config plus what was resolved against the store and the run folder (stages add theirs)."""
        return {"config": self.config.to_dict(), "stage": self.name, "store": str(Path(self.store.path).resolve()),
                "train_subjects": self.train_subjects, "held_out": self.held_out,
                "init_from": str(self.init_from) if self.init_from else None, "init_kind": self.init_kind}


def run_stage(stage: type[StudyStage], config: GlfaConfig, store, run_dir: str | Path | None = None, *,
              resume: bool = False, progress: bool = True, **options: Any) -> TrainResult:
    """Train one stage of the method on ``store``'s training split, in ``run_dir``.

    Parameters
    ----------
    stage
        The stage class (:class:`~glfa.training.pretrain.PretrainStage`,
        :class:`~glfa.training.contrastive.ContrastiveStage`, :class:`~glfa.training.cotrain.CotrainStage`).
    config
        The experiment config.
    store
        A store folder or an open :class:`~glfa.data.store.StudyStore`.
    run_dir
        The run folder (default ``output_dir/name``).
    resume
        Continue from the newest checkpoint of the stage's folder in ``run_dir``.
    progress
        Show progress bars.
    **options
        The stage's own keyword arguments (``init_from``; ``clip``; ``method``, ``glfa``, ``generator``).
    """

    if isinstance(store, (str, Path)):
        from glfa.data.store import StudyStore

        store = StudyStore.open(store)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    built = stage(config, store, run_dir=run_dir, progress=progress, **options)
    return train(built, run_dir, resume=resume, device=config.device, progress=progress)
