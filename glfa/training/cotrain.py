"""Stage 2: co-training of the fMRI encoder (with GLFA) and the text-to-video UNet (paper section 3.6).

The fMRI tokens take the place of the text tokens as the UNet's ``encoder_hidden_states``; the
loss is ``L_denoise + L_GLFA`` (paper eq. 6). Trained: the whole :class:`FmriEncoder` (GLFA, PTE,
spatiotemporal block, token head; the CLIP head gets no gradient in stage 2 and stays frozen) and
the UNet parameters whose names contain one of ``cotrain.trainable_unet_patterns`` (attn1, attn2,
temp_conv: self attention, cross attention, temporal convolution); the rest of the UNet, the VAE
and the text encoder are frozen. The VAE never runs in a step: the training windows' latents come
from the store's cache (:func:`glfa.data.features.vae_latents`), computed once.

A batch holds every training subject's response to the same windows: an item is one training
window (the fMRI of all S training subjects and the window's latents), and
``cotrain.batch_size`` counts samples (subject x window), so a step takes
``max(1, cotrain.batch_size // S)`` windows, i.e. ``S`` times that many samples.

The encoder starts from stage 1 (``RUN/contrastive/encoder``; GLFA starts as the identity), or,
when there is none, from the fine-tuned PTE of stage 0 (``RUN/pte``) with a warning. The result::

    RUN/cotrain-<method>/model/
      model.json                  kind "cotrain", method, generator, store, subjects, config, ...
      negative.safetensors        mean_fmri [n, H, W] (training subjects x training windows), tokens [K, C]
      encoder/                    the co-trained FmriEncoder (save_pretrained)
      unet_trainable.safetensors  the trained UNet parameters by their unet.named_parameters() names

written into a temporary folder and renamed into place.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat
from safetensors.torch import save_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Dataset

from glfa.config import GlfaConfig
from glfa.errors import ConfigError, DataError, StoreError
from glfa.io import install_dir, write_json_atomic
from glfa.runs import OWN_FOLDER, RunLayout
from glfa.training.contrastive import STAGE1_START
from glfa.training.loop import StepOutput, TrainSettings, main_process_first, process_device
from glfa.training.pretrain import PTE_START
from glfa.training.stage import StudyStage

_METHOD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def trainable_unet_parameters(unet: nn.Module, patterns: list[str], *, source: str = "<config>") -> list[str]:
    """Names (as ``unet.named_parameters()``) of the UNet parameters that contain one of ``patterns``.

    Raises a :class:`ConfigError` on ``cotrain.trainable_unet_patterns`` when nothing matches.
    """
    names = [name for name, _ in unet.named_parameters() if any(p in name for p in patterns)]
    if not names:
        sample = [name for name, _ in unet.named_parameters()][:3]
        raise ConfigError(f"no parameter of the UNet ({type(unet).__name__}) has a name containing any of "
                          f"{list(patterns)} (names look like {sample})", path=source,
                          field="cotrain.trainable_unet_patterns")
    return names


def _checkpointed(forward):
    """``forward`` recomputed in backward (non-reentrant torch checkpoint) whenever gradients are on."""

    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


class TrainableUNet(nn.Module):
    """The generator's UNet with only the named parameters trained.

    Calls go straight to the UNet. Its ``state_dict`` holds only the trained parameters (by their
    ``unet.named_parameters()`` names): checkpoints and the saved model carry those, and the frozen
    rest comes from the generator folder. :meth:`enable_gradient_checkpointing` recomputes every
    resnet, temporal convolution and (temporal) transformer of the UNet in backward
    (diffusers' ``UNet3DConditionModel`` has no switch of its own).
    """

    def __init__(self, unet: nn.Module, names: list[str]):
        super().__init__()
        self.unet = unet
        self.names = list(names)
        params = dict(unet.named_parameters())
        unknown = [n for n in self.names if n not in params]
        if unknown:
            raise ConfigError(f"the UNet has no parameter(s) {unknown}", field="cotrain.trainable_unet_patterns")
        unet.requires_grad_(False)
        for name in self.names:
            params[name].requires_grad_(True)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                **kwargs):
        """The UNet's forward (same arguments and output)."""
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)

    def store_frozen_weights_in(self, dtype: torch.dtype) -> None:
        """Keep the frozen weights of linear and convolution layers in ``dtype``.

        Under mixed precision autocast runs these layers in half precision and casts their weights
        at every call; frozen weights stored in it take half the memory (zeroscope: about 0.9 B
        frozen parameters, 1.9 GB less on the GPU) and are not cast again. Norm layers, which
        autocast runs in float32, and the trained parameters (float32 for the optimizer) keep theirs.
        """
        for module in self.unet.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                for param in module.parameters(recurse=False):
                    if not param.requires_grad:
                        param.data = param.data.to(dtype)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UNet's resnets, temporal convolutions and transformers in backward."""
        from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
        from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

        kinds = (ResnetBlock2D, TemporalConvLayer, Transformer2DModel, TransformerTemporalModel)
        for module in self.unet.modules():
            if isinstance(module, kinds) and not getattr(module, "_glfa_checkpointed", False):
                module.forward = _checkpointed(module.forward)
                module._glfa_checkpointed = True

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        """The trained parameters only, by their names in the UNet."""
        out = OrderedDict() if destination is None else destination
        params = dict(self.unet.named_parameters())
        for name in self.names:
            out[prefix + name] = params[name] if keep_vars else params[name].detach()
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Copy trained parameters in; with ``strict``, exactly the trained names must be given."""
        missing = [n for n in self.names if n not in state_dict]
        unexpected = sorted(set(state_dict) - set(self.names))
        if strict and (missing or unexpected):
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        params = dict(self.unet.named_parameters())
        with torch.no_grad():
            for name in self.names:
                if name in state_dict:
                    params[name].copy_(state_dict[name])
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


def cotrain_step(encoder: nn.Module, unet: nn.Module, scheduler, fmri: torch.Tensor, latents: torch.Tensor, *,
                 mask: torch.Tensor | None = None, consistency_weight: float = 0.5, align: bool = True) -> StepOutput:
    """The stage-2 loss of one batch: L_denoise + L_GLFA (the latter when ``align``).

    Parameters
    ----------
    encoder : FmriEncoder.
    unet : the UNet (or :class:`TrainableUNet`).
    scheduler : the generator's DDPM scheduler.
    fmri : [B, S, n, H, W] every subject's response to each of the B windows.
    latents : [B, c, m, h, w] the windows' scaled VAE latents (repeated for each subject).
    mask : [H, W] cortex mask of L_GLFA's MSEs.
    consistency_weight : lambda of L_GLFA.
    align : add L_GLFA over the S subjects (needs S >= 2).
    """
    from glfa.losses import denoising_loss, glfa_loss

    s = fmri.shape[1]
    x = rearrange(fmri.float(), "b s n h w -> (s b) n h w")
    out = encoder(x, heads=("tokens",))  # tokens [(s b), K, C], aligned [(s b), n, H, W]
    z0 = repeat(latents.float(), "b c m h w -> (s b) c m h w", s=s)
    denoise = denoising_loss(unet, scheduler, z0, out["tokens"])
    logs: dict[str, torch.Tensor] = {"denoise": denoise.detach()}
    if not align:
        return StepOutput(loss=denoise, logs=logs)
    aligned = rearrange(out["aligned"].float(), "(s b) n h w -> s b n h w", s=s)
    l_glfa = glfa_loss(aligned, rearrange(x, "(s b) n h w -> s b n h w", s=s), mask, consistency_weight)
    logs["glfa"] = l_glfa.detach()
    return StepOutput(loss=denoise + l_glfa, logs=logs)


class CotrainWindows(Dataset):
    """Every training window that all training subjects saw, one item each.

    Items: ``{"fmri": float16 [S, n, H, W] (the subjects in order), "latents": [c, m, h', w']
    (the window's cached VAE latents), "window": int}``; they depend only on their index.
    """

    def __init__(self, store, subjects: list[str], latents):
        from glfa.data.datasets import StimulusWindowDataset

        self.responses = StimulusWindowDataset(store, subjects, split="train", with_video=False, dtype=torch.float16)
        self.latents = latents
        missing = [w.index for w in self.responses.windows if w.index not in latents.windows]
        if missing:
            raise StoreError(f"the latents cache lacks {len(missing)} training window(s) (e.g. {missing[:5]})",
                             path=store.path)

    @property
    def windows(self):
        """The windows, in item order."""
        return self.responses.windows

    def __len__(self) -> int:
        return len(self.responses)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.responses[i]
        return {"fmri": item["fmri"], "latents": self.latents.get(item["window"]), "window": item["window"]}


def mean_training_fmri(store, subjects: list[str]) -> np.ndarray:
    """float32 [n, H, W]: the mean fMRI window over ``subjects`` x the training windows all of them saw.

    The negative condition of generation is the encoder's tokens for it. Windows are read one at a time.
    """
    from glfa.data.datasets import StimulusWindowDataset

    windows = StimulusWindowDataset(store, subjects, split="train", with_video=False).windows
    if not windows:
        raise DataError(f"no training window that all of {subjects} saw", path=store.path, field="subjects")
    size, n = store.image_size, store.fmri_frames
    total = np.zeros((n, size, size), np.float64)
    buffer = np.empty((n, size, size), store.fmri_dtype)
    for window in windows:
        for subject in subjects:
            total += store.fmri(subject, window, out=buffer)
    return (total / (len(windows) * len(subjects))).astype(np.float32)


def save_decoder_model(target: str | Path, *, encoder: nn.Module, unet_state: dict[str, torch.Tensor],
                       mean_fmri: np.ndarray, info: dict[str, Any]) -> Path:
    """Write a stage-2 decoder model folder atomically (see the module docstring for its files).

    ``info`` holds ``model.json``'s keys besides kind, num_frames, image_size and geometry (taken from
    the encoder); the negative condition is the encoder's tokens for ``mean_fmri`` [n, H, W].
    """
    target = Path(target)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        tokens = encoder(torch.from_numpy(mean_fmri)[None].to(device), heads=("tokens",))["tokens"][0]  # [K, C]
    encoder.train(was_training)
    with install_dir(target) as tmp:
        encoder.save_pretrained(tmp / "encoder")
        save_file({"mean_fmri": torch.from_numpy(mean_fmri), "tokens": tokens.float().cpu().contiguous()},
                  str(tmp / "negative.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in unet_state.items()},
                  str(tmp / "unet_trainable.safetensors"))
        write_json_atomic(tmp / "model.json", {"kind": "cotrain", **info, "num_frames": encoder.num_frames,
                                               "image_size": encoder.image_size, "geometry": encoder.geometry})
    return target


class CotrainStage(StudyStage):
    """Stage 2 plugged into :func:`~glfa.training.loop.train` (see the module docstring).

    Parameters
    ----------
    config
        The experiment config (``model``, ``cotrain``, ``subjects``).
    store
        An open :class:`~glfa.data.store.StudyStore`.
    method
        The run's name in ``RUN/cotrain-<method>`` (default ``glfa`` with GLFA, ``pte-v`` without).
    glfa
        Train with GLFA (default ``config.model.glfa.enabled``).
    init_from
        A saved FmriEncoder (stage 1) or FmriPTE (stage 0) folder; default ``RUN/contrastive/encoder``,
        else ``RUN/pte`` (with a warning).
    generator
        The diffusers text-to-video folder (default ``config.cotrain.generator``).
    run_dir
        The run folder (default ``output_dir/name``), where ``init_from`` is looked up.
    progress
        Show a progress bar while the latents cache is built.
    """

    init_accepts = init_defaults = (STAGE1_START, PTE_START)
    init_required = True

    def __init__(self, config: GlfaConfig, store, *, method: str | None = None, glfa: bool | None = None,
                 init_from: str | Path | None = None, generator: str | Path | None = None,
                 run_dir: str | Path | None = None, progress: bool = True):
        from glfa.backbones import load_video_generator

        self.glfa = config.model.glfa.enabled if glfa is None else bool(glfa)
        self.method = method if method is not None else ("glfa" if self.glfa else "pte-v")
        if not _METHOD.match(self.method) or self.method in OWN_FOLDER:
            raise ConfigError(f"method {self.method!r} names a folder: use letters, digits, '.', '_' or '-', and not "
                              f"one of {list(OWN_FOLDER)} (RUN/<name>/model would hide RUN/cotrain-<name>/model)",
                              field="method")
        self.name = RunLayout.cotrain_stage(self.method)
        super().__init__(config, store, run_dir=run_dir, init_from=init_from, progress=progress)
        if self.glfa and len(self.train_subjects) < 2:
            raise config.error("model.glfa.enabled", f"GLFA aligns training subjects with each other and needs at "
                               f"least 2, got {self.train_subjects}; co-train without it (--no-glfa)")
        self.model_config = config.model.model_copy(
            update={"glfa": config.model.glfa.model_copy(update={"enabled": self.glfa})})
        self.settings = TrainSettings.from_config(
            config.cotrain, batch_size=max(1, config.cotrain.batch_size // len(self.train_subjects)))
        self.mask = self.cortex_mask()

        path = generator if generator is not None else config.cotrain.generator
        if path is None:
            raise config.error("cotrain.generator", "no video generator: set cotrain.generator to a diffusers "
                               "text-to-video folder (e.g. zeroscope_v2_576w) or pass --generator DIR")
        self.generator = load_video_generator(path, device=process_device(config.device), with_text_encoder=False)
        if self.generator.cross_attention_dim != self.model_config.heads.token_dim:
            raise config.error("model.heads.token_dim",
                               f"is {self.model_config.heads.token_dim}, but the generator's UNet "
                               f"({self.generator.path}) attends to tokens of width "
                               f"{self.generator.cross_attention_dim}")
        self.trainable = trainable_unet_parameters(self.generator.unet, config.cotrain.trainable_unet_patterns,
                                                   source=self.source)
        self._latents = None
        self._windows: CotrainWindows | None = None

    @property
    def latents(self):
        """The training windows' VAE latents (the store's cache, built on first use)."""
        if self._latents is None:
            from glfa.data.features import vae_latents

            with main_process_first(self.config.device) as is_main:  # under accelerate launch: built once, then read
                self._latents = vae_latents(self.store, self.generator, split="train",
                                            progress=self.progress and is_main)
        return self._latents

    def build_models(self) -> dict[str, nn.Module]:
        """The encoder (stage-1 or PTE weights; GLFA at identity) and the UNet with its trained parameters."""
        from glfa.models.encoder import FmriEncoder

        encoder = FmriEncoder(self.model_config, self.store.image_size, self.store.fmri_frames,
                              geometry=self.store.geometry)
        if self.init_kind == "encoder":
            encoder.load_encoder_weights(self.init_from)
        else:
            encoder.load_pte(self.init_from)
        encoder.clip_head.requires_grad_(False)  # no CLIP loss in stage 2
        unet = TrainableUNet(self.generator.unet, self.trainable)
        if self.settings.mixed_precision != "no":
            from glfa.backbones import resolve_dtype

            unet.store_frozen_weights_in(resolve_dtype(self.settings.mixed_precision))
        return {"encoder": encoder, "unet": unet}

    def dataset(self) -> CotrainWindows:
        """The training windows with every training subject's fMRI and the cached latents."""
        if self._windows is None:
            self._windows = CotrainWindows(self.store, self.train_subjects, self.latents)
            if len(self._windows) == 0:
                raise DataError(f"no training window that all of {self.train_subjects} saw", path=self.store.path)
        return self._windows

    def step(self, models: dict[str, nn.Module], batch: dict[str, torch.Tensor]) -> StepOutput:
        """L_denoise over the S x B samples, plus L_GLFA over the S subjects when GLFA is on."""
        fmri = batch["fmri"]  # [B, S, n, H, W]
        return cotrain_step(models["encoder"], models["unet"], self.generator.scheduler, fmri, batch["latents"],
                            mask=self.mask.to(fmri.device),
                            consistency_weight=self.config.model.glfa.consistency_weight, align=self.glfa)

    def resolved(self) -> dict[str, Any]:
        """The config as this run resolved it (GLFA flag, generator folder)."""
        data = self.config.to_dict()
        data["model"]["glfa"]["enabled"] = self.glfa
        data["cotrain"]["generator"] = str(Path(self.generator.path).resolve())
        return data

    def finish(self, models: dict[str, nn.Module], run_dir: Path) -> dict[str, str]:
        """Write ``RUN/cotrain-<method>/model/`` (negative condition, encoder, trained UNet parameters)."""
        target = RunLayout(run_dir).cotrain_model(self.method)
        save_decoder_model(target, encoder=models["encoder"], unet_state=models["unet"].state_dict(),
                           mean_fmri=mean_training_fmri(self.store, self.train_subjects), info={
                               "method": self.method, "generator": str(Path(self.generator.path).resolve()),
                               "store": str(Path(self.store.path).resolve()), "store_identity": self.store.identity,
                               "train_subjects": self.train_subjects,
                               "held_out": self.held_out,
                               "trainable_unet_patterns": list(self.config.cotrain.trainable_unet_patterns),
                               "config": self.resolved()})
        return {"model": str(target)}

    def fingerprint(self) -> dict[str, Any]:
        """Model, method, generator, latents and trained UNet parameters besides what every stage's resumed
        run must share."""
        return {**super().fingerprint(), "model": self.model_config.model_dump(mode="json"), "method": self.method,
                "glfa": self.glfa, "generator": str(Path(self.generator.path).resolve()), "latents": self.latents.key,
                "trainable_unet_patterns": list(self.config.cotrain.trainable_unet_patterns)}

    def resolved_config(self) -> dict[str, Any]:
        """What every stage records (with the resolved config), plus method, GLFA flag and batch sizes."""
        return {**super().resolved_config(), "config": self.resolved(), "method": self.method, "glfa": self.glfa,
                "windows": len(self.dataset()), "windows_per_step": self.settings.batch_size,
                "samples_per_step": self.settings.batch_size * len(self.train_subjects),
                "trainable_unet_parameters": len(self.trainable)}
