"""The run folder: every path of one experiment's outputs, named in one place (:class:`RunLayout`).

A run folder (``OUTPUT_DIR/NAME`` of the config, :func:`default_run_dir`, or ``--out``) holds::

    pte/                                   stage 0's fine-tuned fMRI-PTE
    pretrain/                              stage 0's stage folder (see below)
    contrastive/                           stage 1's stage folder, and encoder/: its encoder in CLIP space
    cotrain-<method>/                      a stage-2 stage folder, and model/: the decoder (glfa adapt writes
                                           its models here too, without stage files)
    lea/model/, blurry/model/              the ridge decoders (LEA, the blurry decoder)
    within-<subject>/                      a run folder of its own: stage 1 on that subject alone
    generations/<method>/<subject>-<split>/          glfa generate, from the decoder's own store
    generations/<method>/<subject>-<split>@<store>/  ... from another store (cross-dataset)
    evaluation/                            glfa evaluate: video.json, video.md, adaptation-<subject>.json, .md
    alignment/                             glfa evaluate alignment's default output
    report.html                            glfa report

A stage folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (the training
curve), ``metrics.json`` (the summary) and ``checkpoints/``.

The generations of a store other than the one the decoder was trained on carry the store's
tag (:func:`store_tag`), so two stores with the same subjects (the Fudan WebVid and FCVID
parts) never overwrite each other's clips, nor the run's own. A store is known by its content:
a copy of the training store is the same store and gets no tag.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunLayout", "default_run_dir", "same_store", "store_tag", "PRETRAIN", "CONTRASTIVE", "LEA", "BLURRY",
           "OWN_FOLDER", "GENERATIONS_INDEX"]

#: Stage folders (and config sections) of stages 0 and 1.
PRETRAIN = "pretrain"
CONTRASTIVE = "contrastive"
#: Methods whose decoder lives in ``RUN/<method>/model``; every other method's in ``RUN/cotrain-<method>/model``.
LEA = "lea"
BLURRY = "blurry"
OWN_FOLDER = (LEA, BLURRY)
_COTRAIN = "cotrain-"
_MODEL = "model"
_METRICS_LOG = "metrics.jsonl"
#: The file a finished generations folder is known by (glfa generate writes it last).
GENERATIONS_INDEX = "index.json"
#: Characters kept from a store folder's name in a generations folder's tag.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_run_dir(config) -> Path:
    """``output_dir/name`` of a :class:`~glfa.config.GlfaConfig`: the run folder of one experiment's stages."""
    return Path(config.output_dir) / config.name


def same_store(trained: Mapping[str, Any], decoded: Mapping[str, Any]) -> bool:
    """Whether two store records (``store`` path, optional ``store_identity``) name the same study.

    Stores are compared by the identity of their content, so a copied or moved store is the same
    study; records made before stores had an identity fall back to comparing paths.
    """
    a, b = trained.get("store_identity"), decoded.get("store_identity")
    if a and b:
        return a == b
    return Path(trained["store"]).resolve() == Path(decoded["store"]).resolve()


def store_tag(path: str | Path, identity: str | None) -> str:
    """A store's readable, content-stable tag: ``<folder name>-<8 hex digits of its identity>``.

    A copy of the store keeps the digits; a store without an identity (written before stores
    had one) gets those of its resolved path.
    """
    path = Path(path)
    digest = identity if identity else hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    return f"{_UNSAFE.sub('_', path.name) or 'store'}-{digest[:8]}"


@dataclass(frozen=True)
class RunLayout:
    """Every path of one run folder (module docstring); only names paths, never touches the disk but to list.

    Parameters
    ----------
    root
        The run folder.

    Examples
    --------
    >>> run = RunLayout("runs/demo")
    >>> run.model_dir("glfa").as_posix(), run.model_dir("lea").as_posix()
    ('runs/demo/cotrain-glfa/model', 'runs/demo/lea/model')
    >>> run.generations("glfa", "03", "test", store="fcvid-1a2b3c4d").as_posix()
    'runs/demo/generations/glfa/03-test@fcvid-1a2b3c4d'
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------------- training stages

    def stage(self, name: str) -> Path:
        """A stage's folder (``pretrain``, ``contrastive``, :meth:`cotrain_stage`)."""
        return self.root / name

    def stage_config(self, name: str) -> Path:
        """The resolved config a stage ran with."""
        return self.stage(name) / "config.json"

    def checkpoints(self, name: str) -> Path:
        """A stage's checkpoint folder (``checkpoint-<step>/`` and ``latest``)."""
        return self.stage(name) / "checkpoints"

    def metrics_log(self, name: str) -> Path:
        """A stage's training curve, one JSON line per logged step."""
        return self.stage(name) / _METRICS_LOG

    def metrics(self, name: str) -> Path:
        """A stage's summary, written when it finished."""
        return self.stage(name) / "metrics.json"

    def metrics_logs(self) -> list[Path]:
        """Every stage's training curve in this run folder, in sorted order."""
        return sorted(self.root.glob(f"*/{_METRICS_LOG}"))

    @staticmethod
    def cotrain_stage(method: str) -> str:
        """The stage folder name of stage 2 for ``method``: ``cotrain-<method>``."""
        return _COTRAIN + method

    @property
    def pte(self) -> Path:
        """Stage 0's fine-tuned fMRI-PTE."""
        return self.root / "pte"

    @property
    def stage1_encoder(self) -> Path:
        """Stage 1's encoder in CLIP space (GLFA off)."""
        return self.stage(CONTRASTIVE) / "encoder"

    def cotrain_model(self, method: str) -> Path:
        """The stage-2 decoder ``RUN/cotrain-<method>/model`` (whatever the method's name)."""
        return self.stage(self.cotrain_stage(method)) / _MODEL

    def model_dir(self, method: str) -> Path:
        """A method's decoder: ``RUN/lea/model``, ``RUN/blurry/model``, else :meth:`cotrain_model`."""
        return self.root / method / _MODEL if method in OWN_FOLDER else self.cotrain_model(method)

    def method_of(self, model_dir: str | Path) -> str:
        """The method whose decoder :meth:`model_dir` is ``model_dir`` (its inverse)."""
        stage = Path(model_dir).parent.name
        return stage if stage in OWN_FOLDER else stage.removeprefix(_COTRAIN)

    def decoder_methods(self) -> list[str]:
        """The methods with a decoder folder in this run: ``cotrain-<method>/model`` names, then ``lea``, ``blurry``."""
        cotrain = sorted(self.method_of(p) for p in self.root.glob(f"{_COTRAIN}*/{_MODEL}") if p.is_dir())
        return cotrain + [m for m in OWN_FOLDER if self.model_dir(m).is_dir()]

    @staticmethod
    def within_method(subject: str) -> str:
        """``within-<subject>``: the name of ``subject``'s within-subject decoder and of its stage-1 run folder."""
        return f"within-{subject}"

    def within(self, subject: str) -> RunLayout:
        """The run folder of ``subject``'s own stage 1 (the within-subject protocol), inside this one."""
        return RunLayout(self.root / self.within_method(subject))

    # ------------------------------------------------------------------------- outputs

    @property
    def generations_root(self) -> Path:
        """Where every method's decoded clips live."""
        return self.root / "generations"

    def generations(self, method: str, subject: str, split: str, store: str | None = None) -> Path:
        """The clips of ``method`` decoding ``subject``'s ``split`` windows.

        ``store`` is the :func:`store_tag` of the store decoded when it is not the one the
        decoder was trained on, None for that one.
        """
        name = f"{subject}-{split}" if store is None else f"{subject}-{split}@{store}"
        return self.generations_root / method / name

    def generations_folders(self) -> list[tuple[str, Path]]:
        """``(method, folder)`` of every finished generations folder, in sorted order."""
        found = sorted(p.parent for p in self.generations_root.glob(f"*/*/{GENERATIONS_INDEX}"))
        return [(p.parent.name, p) for p in found]

    @property
    def evaluation(self) -> Path:
        """``glfa evaluate``'s folder."""
        return self.root / "evaluation"

    @property
    def video_evaluation(self) -> Path:
        """Everything ``glfa evaluate RUN`` measured (beside it ``video.md``, the tables)."""
        return self.evaluation / "video.json"

    def adaptation_sweeps(self) -> list[Path]:
        """Every ``glfa evaluate adaptation`` result (``adaptation-<subject>.json``), in sorted order."""
        return sorted(self.evaluation.glob("adaptation-*.json"))

    @property
    def alignment(self) -> Path:
        """``glfa evaluate alignment``'s default folder."""
        return self.root / "alignment"

    @property
    def report(self) -> Path:
        """``glfa report``'s page."""
        return self.root / "report.html"
