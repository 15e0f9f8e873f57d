"""One accelerate training loop; every stage plugs in its models, data and step function.

A :class:`Stage` says *what* is trained (named models, optimizer parameter groups, a dataset and
its collate function, a step function returning the loss and logs, the final outputs); :func:`train`
does the rest the same way for every stage: the :class:`accelerate.Accelerator` (mixed precision,
gradient accumulation, CPU/CUDA, several GPUs under ``accelerate launch`` through DDP), a seeded
and resumable data order (:class:`IndexStream`, never ``DataLoader(shuffle=True)``), gradient
checkpointing, a tqdm progress bar, a JSONL metrics log, the resolved config, and atomic
checkpoints from which ``resume=True`` continues exactly (same weights as an uninterrupted run on CPU).

Run folder layout (``RUN_DIR`` is shared by the stages of one experiment)::

    RUN_DIR/<stage>/config.json        resolved config (written atomically at the start)
    RUN_DIR/<stage>/metrics.jsonl      one line per ``log_every`` steps: step, loss, lr, seconds, logs
    RUN_DIR/<stage>/metrics.json       summary at the end
    RUN_DIR/<stage>/checkpoints/       checkpoint-<step>/ folders + ``latest`` (see checkpoint.py)
    RUN_DIR/...                        the stage's final outputs (e.g. RUN_DIR/pte/)
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from glfa.config import TrainCommon
from glfa.errors import CheckpointError, ConfigError, DataError
from glfa.optim import adamw
from glfa.runs import RunLayout
from glfa.training.checkpoint import (
    Checkpoint,
    capture_rng,
    clean_partial,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    scheduler_state,
)
from glfa.io import write_bytes_atomic, write_json_atomic

# ----------------------------------------------------------------------------- processes under accelerate launch


def process_device(device: str | None) -> torch.device:
    """This process's device for frozen models and caches: the CPU when asked for or without CUDA, else
    this process's GPU (``LOCAL_RANK`` under ``accelerate launch``, the first GPU otherwise)."""
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def main_process_first(device: str | None) -> Iterator[bool]:
    """Run the block in the main process before the others; yields whether this is the main process.

    Under ``accelerate launch`` (``WORLD_SIZE`` > 1) the others wait at a barrier until the main
    process has left the block, so a store cache built inside it is computed once and then read
    by every process. A single process just runs the block. ``device`` is the config's device:
    processes on the CPU meet through gloo, as the training loop's Accelerator will.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield True
        return
    from accelerate import PartialState

    state = PartialState(cpu=process_device(device).type == "cpu")
    with state.main_process_first():
        yield state.is_main_process


class Processes:
    """This process's place under ``accelerate launch`` (``WORLD_SIZE`` > 1): its rank among ``count``.

    Outside it, one process of rank 0. ``device`` is the device asked for (a config's device or
    None): processes on the CPU meet through gloo. Inference commands (``glfa generate``, the
    classifier pass of ``glfa evaluate``) use it to share their batches out.
    """

    def __init__(self, device: str | None):
        self.state, self.rank, self.count = None, 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=process_device(device).type == "cpu")
            self.rank, self.count = self.state.process_index, self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str | None) -> str | None:
        """The device this process decodes on: its own GPU (``LOCAL_RANK``) when several share a machine."""
        if self.count == 1 or device not in (None, "auto", "cuda"):
            return device
        return str(process_device(device))

    def wait(self) -> None:
        """Every process waits here until all have arrived."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def main_value(self, value: Any) -> Any:
        """The main process's ``value``, in every process."""
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, in every process."""
        if self.state is None:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])


# ----------------------------------------------------------------------------- settings and the stage interface


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters the loop needs; built from a config section with :meth:`from_config`."""

    steps: int
    batch_size: int  # per process and per micro-batch
    learning_rate: float
    weight_decay: float = 0.0
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    log_every: int = 10
    num_workers: int = 0
    keep_checkpoints: int = 2

    @classmethod
    def from_config(cls, section: TrainCommon, **values: Any) -> TrainSettings:
        """Settings from a stage's config section; ``values`` give or override fields (e.g. batch_size)."""
        data = {
            "seed": section.seed,
            "mixed_precision": section.mixed_precision,
            "gradient_accumulation_steps": section.gradient_accumulation_steps,
            "gradient_checkpointing": section.gradient_checkpointing,
            "checkpoint_every": section.checkpoint_every,
            "log_every": section.log_every,
            "num_workers": section.num_workers,
        }
        for name in ("steps", "batch_size", "learning_rate", "weight_decay"):
            if hasattr(section, name):
                data[name] = getattr(section, name)
        data.update(values)
        return cls(**data)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (not steps, logging or workers)."""
        return {
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "mixed_precision": self.mixed_precision,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }


@dataclass
class StepOutput:
    """What a stage's step returns: the loss to minimise and extra scalars to log."""

    loss: torch.Tensor  # scalar
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


def _constant_lr(step: int) -> float:
    return 1.0


class Stage(abc.ABC):
    """A training stage: what :func:`train` trains and how one step computes its loss.

    Subclasses set ``name`` (the run sub-folder and the config section, e.g. ``"pretrain"``) and
    ``settings`` (a :class:`TrainSettings`), and implement :meth:`build_models`, :meth:`dataset`,
    :meth:`step` and :meth:`finish`. The loop calls them in this order: seed -> ``build_models`` ->
    ``param_groups`` -> ``scheduler`` -> ``dataset`` -> (``collate`` + ``step``) per micro-batch ->
    ``finish`` on the main process.

    Rules that keep runs resumable: dataset items are a deterministic function of their index (put
    randomness in :meth:`step`, which draws from the global torch RNG that checkpoints restore);
    frozen modules (CLIP, VAE) live on the stage, not in :meth:`build_models`, which returns only
    trained modules.
    """

    name: str = "stage"
    settings: TrainSettings
    source: str = "<config>"  # the config file, for error messages
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step

    @abc.abstractmethod
    def build_models(self) -> dict[str, nn.Module]:
        """The trained modules by name (``[A-Za-z0-9_]+``); called after seeding."""

    def param_groups(self, models: dict[str, nn.Module]) -> list[dict[str, Any]]:
        """Optimizer parameter groups: weight decay on matrices, none on biases, norms and scalars."""
        decay, no_decay = [], []
        for model in models.values():
            for param in model.parameters():
                if param.requires_grad:
                    (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": self.settings.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule (constant by default, as in the paper); stepped once per optimizer step."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _constant_lr)

    @abc.abstractmethod
    def dataset(self) -> Dataset:
        """A map-style dataset whose items depend only on their index."""

    def collate(self, items: list[Any]) -> Any:
        """Turn a list of dataset items into a batch (torch's default collate unless overridden)."""
        return default_collate(items)

    @abc.abstractmethod
    def step(self, models: dict[str, nn.Module], batch: Any) -> StepOutput:
        """Forward one micro-batch (already on the device) and return the loss; the loop does backward."""

    @abc.abstractmethod
    def finish(self, models: dict[str, nn.Module], run_dir: Path) -> dict[str, str]:
        """Write the final outputs (main process only, unwrapped models); return name -> path."""

    def fingerprint(self) -> dict[str, Any]:
        """JSON data a resumed run must share with its checkpoint (model config, subjects, ...)."""
        return {}

    def resolved_config(self) -> dict[str, Any]:
        """The configuration written to ``RUN_DIR/<stage>/config.json``."""
        return {}


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    stage_dir: Path
    step: int
    outputs: dict[str, str]  # from Stage.finish
    metrics: dict[str, Any]  # the summary written to metrics.json
    history: list[dict[str, Any]]  # the metrics lines logged in this session
    checkpoint: Path | None  # the final checkpoint
    resumed_from: Path | None


# ----------------------------------------------------------------------------- data order


class IndexStream:
    """A seeded, resumable, endless order of dataset indices: one permutation per epoch.

    The stream is the concatenation of ``permutation(0), permutation(1), ...`` where epoch ``e``'s
    permutation comes from ``numpy.random.default_rng([seed, e])``. Its position is one integer
    ``offset`` (= ``epoch * size + index``), so a checkpoint stores it and a resumed run continues
    with exactly the indices that would have come next.
    """

    def __init__(self, size: int, *, seed: int, offset: int = 0):
        if size <= 0:
            raise ValueError(f"an index stream needs a non-empty dataset, got size {size}")
        self.size = int(size)
        self.seed = int(seed)
        self.offset = int(offset)
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch ``epoch``: a permutation of ``range(size)``."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    @property
    def position(self) -> dict[str, int]:
        """The data position: epoch, index within it, and the flat offset."""
        return {"epoch": self.offset // self.size, "index": self.offset % self.size, "offset": self.offset}

    def take(self, count: int) -> list[int]:
        """The next ``count`` indices (crossing epoch boundaries as needed)."""
        out: list[int] = []
        while len(out) < count:
            epoch, index = divmod(self.offset, self.size)
            if epoch != self._epoch:
                self._perm, self._epoch = self.permutation(epoch), epoch
            chunk = self._perm[index:index + count - len(out)]
            out.extend(int(i) for i in chunk)
            self.offset += len(chunk)
        return out


class _ShardedBatches:
    """Endless batch sampler: each global batch from the stream, this process's share of it."""

    def __init__(self, stream: IndexStream, global_batch: int, rank: int, world: int):
        self.stream, self.global_batch, self.rank, self.world = stream, global_batch, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            indices = self.stream.take(self.global_batch)
            yield indices[self.rank::self.world]


# ----------------------------------------------------------------------------- helpers


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def enable_gradient_checkpointing(model: nn.Module, *, name: str, source: str, field: str) -> None:
    """Turn on gradient checkpointing through the model's own switch; a ConfigError when it has none."""
    for method in ("gradient_checkpointing_enable", "enable_gradient_checkpointing"):  # transformers, diffusers/glfa
        fn = getattr(model, method, None)
        if callable(fn):
            fn()
            return
    if isinstance(getattr(model, "gradient_checkpointing", None), bool):
        model.gradient_checkpointing = True
        return
    raise ConfigError(f"model {name!r} ({type(model).__name__}) does not support gradient checkpointing",
                      path=source, field=field)


def make_accelerator(settings: TrainSettings, *, device: str = "auto", source: str = "<config>",
                     find_unused_parameters: bool = False):
    """An :class:`accelerate.Accelerator` for these settings (``device``: auto, cpu or cuda)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, GradientState, PartialState

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("expected a CUDA device, but torch sees none", path=source, field="device")
    on_cpu = device == "cpu" or not has_cuda
    if settings.mixed_precision == "fp16" and on_cpu:
        raise ConfigError("fp16 mixed precision needs a CUDA device; use 'bf16' or 'no' on CPU",
                          path=source, field="mixed_precision")
    if PartialState._shared_state and PartialState().num_processes == 1:
        # Single process: a previous stage in this process may have used other precision settings.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
    return Accelerator(
        cpu=device == "cpu",
        mixed_precision=settings.mixed_precision,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )


def _scalar(value: float | torch.Tensor) -> torch.Tensor:
    return value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else torch.tensor(float(value))


def _truncate_log(path: Path, step: int) -> None:
    """Keep only the metrics lines up to ``step`` (lines logged after the checkpoint are redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(entry, dict) and entry.get("step", step + 1) <= step:
            kept.append(line)
    write_bytes_atomic(path, "".join(f"{line}\n" for line in kept).encode())


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping with dotted keys (so a mismatch names the exact setting)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return json.loads(json.dumps(out))  # tuples become lists, as they come back from state.json


def _check_resume(stage: Stage, checkpoint: Checkpoint, fingerprint: dict[str, Any]) -> None:
    state = checkpoint.state
    if state.get("stage") != stage.name:
        raise CheckpointError(f"written by stage {state.get('stage')!r}, not {stage.name!r}", path=checkpoint.path)
    saved = state.get("fingerprint", {})
    if saved != fingerprint:
        keys = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        raise CheckpointError(
            f"the config differs from the one this checkpoint was trained with in {keys}; "
            "resume with the same config or start a new run folder",
            path=checkpoint.path,
        )
    if checkpoint.step > stage.settings.steps:
        raise ConfigError(f"the run's checkpoint is at step {checkpoint.step}, beyond {stage.settings.steps} steps; "
                          "raise the steps or start a new run folder", path=stage.source, field=f"{stage.name}.steps")


# ----------------------------------------------------------------------------- the loop


def train(stage: Stage, run_dir: str | Path, *, resume: bool = False, device: str = "auto",
          progress: bool = True) -> TrainResult:
    """Train ``stage`` in ``run_dir`` (its files go to ``run_dir/<stage.name>/``).

    Parameters
    ----------
    stage
        The stage to train.
    run_dir
        The experiment's run folder, shared by its stages.
    resume
        Continue from the newest checkpoint of this stage (start from step 0 when there is none).
        Without it, a stage folder that already has checkpoints is refused.
    device
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    progress
        Show a tqdm progress bar on the main process.
    """
    settings = stage.settings
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    stage_dir = layout.stage(stage.name)
    ckpt_root = layout.checkpoints(stage.name)
    metrics_path = layout.metrics_log(stage.name)
    accelerator = make_accelerator(settings, device=device, source=stage.source,
                                   find_unused_parameters=stage.find_unused_parameters)
    distributed = str(accelerator.distributed_type)
    if "FSDP" in distributed or "DEEPSPEED" in distributed:
        raise ConfigError(f"checkpointing supports single-device and DDP runs, not {distributed}", path=stage.source)
    main = accelerator.is_main_process
    fingerprint = _flatten({"settings": settings.fingerprint(), "stage": stage.fingerprint()})

    newest = latest_checkpoint(ckpt_root)
    if newest is not None and not resume:
        raise CheckpointError("this run already has checkpoints; pass --resume to continue it "
                              "or choose another output folder", path=ckpt_root)
    start: Checkpoint | None = None
    if resume and newest is not None:
        start = load_checkpoint(newest)
        _check_resume(stage, start, fingerprint)
    accelerator.wait_for_everyone()
    if main:
        clean_partial(ckpt_root)
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(layout.stage_config(stage.name), stage.resolved_config())
        if start is not None:
            _truncate_log(metrics_path, start.step)
        elif metrics_path.exists():
            metrics_path.unlink()

    # Everything that draws random numbers happens in the same order in a fresh and a resumed run.
    from accelerate.utils import set_seed

    set_seed(settings.seed)
    models = stage.build_models()
    names = list(models)
    if settings.gradient_checkpointing:
        for name, model in models.items():
            enable_gradient_checkpointing(model, name=name, source=stage.source,
                                          field=f"{stage.name}.gradient_checkpointing")
    optimizer = adamw(stage.param_groups(models), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = stage.scheduler(optimizer)
    dataset = stage.dataset()
    try:
        size = len(dataset)
    except TypeError:
        raise ConfigError(f"stage {stage.name!r} must give a sized (map-style) dataset", path=stage.source) from None
    if size == 0:
        raise DataError(f"stage {stage.name!r} has no training samples", path=stage.source)

    if start is not None:
        missing = sorted(set(models) - set(start.models))
        if missing:
            raise CheckpointError(f"holds no weights for model(s) {missing}", path=start.path)
        for name, model in models.items():
            try:
                model.load_state_dict(start.models[name], strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"weights of {name!r} do not fit the model ({exc})", path=start.path) from None

    prepared = accelerator.prepare(*[models[n] for n in names], optimizer)
    wrapped = dict(zip(names, prepared[:-1]))
    optimizer = prepared[-1]
    if start is not None:  # after prepare, so the state lands on the parameters' device
        try:
            optimizer.load_state_dict(start.optimizer)
            scheduler.load_state_dict(dict(start.state["scheduler"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"optimizer or scheduler state does not fit ({exc})", path=start.path) from None
    for model in wrapped.values():
        model.train()
    if start is not None and accelerator.scaler is not None and start.state.get("scaler"):
        accelerator.scaler.load_state_dict(start.state["scaler"])

    step = start.step if start is not None else 0
    offset = start.state["data"]["offset"] if start is not None else 0
    elapsed = start.state.get("seconds", 0.0) if start is not None else 0.0
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = settings.batch_size * world
    stream = IndexStream(size, seed=settings.seed, offset=offset)
    loader = DataLoader(
        dataset,
        batch_sampler=_ShardedBatches(stream, global_batch, rank, world),
        collate_fn=stage.collate,
        num_workers=settings.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(settings.seed),  # never touches the global RNG
    )
    batches = iter(loader)
    if start is not None:
        restore_rng(start.state["rng"][rank] if rank < len(start.state["rng"]) else start.state["rng"][0])

    history: list[dict[str, Any]] = []
    sums: dict[str, torch.Tensor] = {}  # running sums of the logged scalars since the last log line
    counts: dict[str, int] = {}
    last_saved = step if start is not None else -1
    last_path: Path | None = start.path if start is not None else None
    bar = tqdm(total=settings.steps, initial=step, desc=stage.name, unit="step",
               disable=not (progress and accelerator.is_local_main_process), dynamic_ncols=True)
    session_start = time.perf_counter()
    log_file = open(metrics_path, "a") if main else None  # noqa: SIM115 (closed in finally)
    try:
        while step < settings.steps:
            for _ in range(settings.gradient_accumulation_steps):
                batch = _to_device(next(batches), accelerator.device)
                offset += global_batch
                with accelerator.accumulate(*wrapped.values()):
                    with accelerator.autocast():
                        out = stage.step(wrapped, batch)
                    accelerator.backward(out.loss)
                    if accelerator.sync_gradients:
                        optimizer.step()
                        if not optimizer.step_was_skipped:
                            scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                for key, value in {"loss": out.loss, **out.logs}.items():
                    value = _scalar(value).to(accelerator.device)
                    sums[key] = sums[key] + value if key in sums else value
                    counts[key] = counts.get(key, 0) + 1
            step += 1
            bar.update(1)

            if step % settings.log_every == 0 or step == settings.steps:
                means = {k: accelerator.reduce(v / counts[k], reduction="mean").item() for k, v in sums.items()}
                if not math.isfinite(means["loss"]):
                    raise FloatingPointError(f"{stage.name}: the loss is {means['loss']} at step {step}")
                entry = {"step": step, "loss": means.pop("loss"), "lr": scheduler.get_last_lr()[0],
                         "seconds": round(elapsed + time.perf_counter() - session_start, 4), **means}
                history.append(entry)
                if log_file is not None:
                    log_file.write(json.dumps(entry) + "\n")
                    log_file.flush()
                bar.set_postfix(loss=f"{entry['loss']:.4g}")
                sums, counts = {}, {}

            if step % settings.checkpoint_every == 0 or step == settings.steps:
                last_path = _save(accelerator, stage, ckpt_root, step, wrapped, optimizer, scheduler, stream,
                                  offset, elapsed + time.perf_counter() - session_start, fingerprint, settings)
                last_saved = step
        if last_saved != step:
            last_path = _save(accelerator, stage, ckpt_root, step, wrapped, optimizer, scheduler, stream,
                              offset, elapsed + time.perf_counter() - session_start, fingerprint, settings)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        del batches  # shuts down the loader's workers

    seconds = elapsed + time.perf_counter() - session_start
    outputs: dict[str, str] = {}
    summary: dict[str, Any] = {}
    accelerator.wait_for_everyone()
    if main:
        unwrapped = {n: accelerator.unwrap_model(m) for n, m in wrapped.items()}
        for model in unwrapped.values():
            model.eval()
        outputs = stage.finish(unwrapped, run_dir)
        logged = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        summary = {
            "stage": stage.name,
            "steps": step,
            "seconds": round(seconds, 3),
            "samples": step * settings.gradient_accumulation_steps * global_batch,
            "dataset_size": size,
            "first_loss": logged[0]["loss"] if logged else None,
            "final_loss": logged[-1]["loss"] if logged else None,
            "outputs": outputs,
            "checkpoint": str(last_path) if last_path else None,
            "resumed_from": str(start.path) if start is not None else None,
            "num_processes": world,
            "device": str(accelerator.device),
        }
        write_json_atomic(layout.metrics(stage.name), summary)
    accelerator.wait_for_everyone()
    return TrainResult(run_dir=run_dir, stage_dir=stage_dir, step=step, outputs=outputs, metrics=summary,
                       history=history, checkpoint=last_path,
                       resumed_from=start.path if start is not None else None)


def _save(accelerator, stage: Stage, root: Path, step: int, wrapped: dict[str, nn.Module], optimizer,
          scheduler, stream: IndexStream, offset: int, seconds: float, fingerprint: dict[str, Any],
          settings: TrainSettings) -> Path:
    """Gather what a checkpoint needs on every process and write it from the main one."""
    from accelerate.utils import gather_object

    rng = capture_rng()
    rngs = gather_object([rng]) if accelerator.num_processes > 1 else [rng]
    weights = {n: accelerator.get_state_dict(m) for n, m in wrapped.items()}
    path = root / f"checkpoint-{step}"
    if accelerator.is_main_process:
        position = {"epoch": offset // stream.size, "index": offset % stream.size, "offset": offset,
                    "dataset_size": stream.size, "seed": stream.seed}
        state = {
            "stage": stage.name,
            "scheduler": scheduler_state(scheduler),
            "rng": rngs,
            "data": position,
            "seconds": seconds,
            "fingerprint": fingerprint,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        }
        path = save_checkpoint(root, step, models=weights, optimizer=optimizer.state_dict(), state=state,
                               keep=settings.keep_checkpoints)
    accelerator.wait_for_everyone()
    return path
