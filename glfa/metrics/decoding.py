"""Alignment judged by decoding: inter-subject decoding of the stimulus (Bazeille et al. 2021).

fSC and ISC both reward spatial blur (Gaussian smoothing tuned on the training subjects beats
every alignment method on both), so an alignment is also judged by what it keeps of the
stimulus: a linear classifier of the stimulus (its category, or its clip id) is trained on the
trained subjects' aligned responses and applied to the held-out (or adapted) subject's aligned
responses to the same stimuli. The *mismatched* baseline scores the same predictions against the
labels of other stimuli (each stimulus given another's label, averaged over seeded
derangements): what a classifier gets without the held-out brain's stimulus information.

Samples are time points; each is standardised across voxels (zero mean, unit variance), so a
subject's overall gain does not decide the class. The classifier is scikit-learn's
``RidgeClassifierCV`` (one-vs-all ridge, the penalty chosen by efficient leave-one-out).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from glfa.errors import DataError

ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def _standardized(x: np.ndarray, mask: np.ndarray | None, field: str) -> np.ndarray:
    """``[T, ...]`` -> float64 ``[T, V]`` over the mask, each row with zero mean and unit variance."""
    x = np.asarray(x)
    flat = x.reshape(len(x), -1) if mask is None else x[:, np.asarray(mask, bool)]
    flat = flat.astype(np.float64)
    if not np.all(np.isfinite(flat)):
        raise DataError("contains NaN or infinite values", field=field)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(flat.std(axis=1, keepdims=True), 1e-12)


def inter_subject_decoding(train: Mapping[str, np.ndarray], held: np.ndarray, labels, stimuli, mask=None, *,
                           alphas=ALPHAS, derangements: int = 20, seed: int = 0) -> dict[str, float | int]:
    """Train a stimulus classifier on ``train`` subjects' responses, score it on ``held``'s.

    Parameters
    ----------
    train : {subject: ``[T, ...]``} the trained subjects' (aligned) responses to T time points.
    held : ``[T, ...]`` the held-out subject's (aligned) responses to the same time points.
    labels : ``[T]`` the class of each time point (a category, or the clip id).
    stimuli : ``[T]`` the stimulus of each time point; the mismatched baseline gives each
        stimulus's time points the label of another stimulus.
    mask : bool ``[...]`` the voxels used (all when None).
    derangements : how many seeded derangements of the stimuli the mismatched accuracy averages.

    Returns
    -------
    dict
        ``accuracy`` (held's time points classified right), ``mismatched``, ``chance`` (1 / classes),
        ``classes``, ``n`` (time points), ``alpha`` (the ridge penalty chosen).
    """
    from sklearn.linear_model import RidgeClassifierCV

    labels, stimuli = np.asarray(labels).astype(str), np.asarray(stimuli).astype(str)
    held = np.asarray(held)
    if not train:
        raise DataError("expected the responses of at least one trained subject", field="train")
    for name, x in {**{f"train[{s!r}]": v for s, v in train.items()}, "held": held}.items():
        if np.shape(x) != held.shape or held.ndim < 2:
            raise DataError(f"expected responses [T, ...] of one shape {list(held.shape)}, got {list(np.shape(x))}",
                            field=name)
    if labels.shape != (len(held),) or stimuli.shape != (len(held),):
        raise DataError(f"expected one label and one stimulus per time point ({len(held)}), got {labels.shape} and "
                        f"{stimuli.shape}", field="labels")
    names = np.unique(stimuli)
    label_of = {}
    for st, label in zip(stimuli, labels):
        if label_of.setdefault(st, label) != label:
            raise DataError(f"stimulus {st!r} has two labels ({label_of[st]!r}, {label!r})", field="labels")
    classes = np.unique(labels)
    if len(classes) < 2 or len(names) < 2:
        raise DataError(f"decoding needs at least 2 classes and 2 stimuli, got {len(classes)} and {len(names)}",
                        field="labels")
    x_train = np.concatenate([_standardized(v, mask, f"train[{s!r}]") for s, v in train.items()])  # [(s t), v]
    y_train = np.tile(labels, len(train))
    classifier = RidgeClassifierCV(alphas=alphas).fit(x_train, y_train)
    predicted = classifier.predict(_standardized(held, mask, "held"))  # [t]
    rng = np.random.default_rng(seed)
    mismatched = []
    for _ in range(derangements):
        order = rng.permutation(len(names))  # stimulus order[i] takes the label of order[i + 1]: no fixed point
        other = {names[order[i]]: label_of[names[order[(i + 1) % len(names)]]] for i in range(len(names))}
        mismatched.append(np.mean(predicted == np.array([other[st] for st in stimuli])))
    return {"accuracy": float(np.mean(predicted == labels)), "mismatched": float(np.mean(mismatched)),
            "chance": 1.0 / len(classes), "classes": int(len(classes)), "n": int(len(held)),
            "alpha": float(classifier.alpha_)}


def read_stimulus_labels(path: str | Path) -> tuple[dict[str, str], str]:
    """Stimulus id -> class label from a JSON file, and what the labels are (for tables).

    The file holds ``{stimulus: label}`` ("label"), or is a synthetic study's ``truth/clips.json``
    (``{"clips": [{"clip_id", "category_name"}, ...]}``: each clip's "category").
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("labels file not found", path=path, field="--labels")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"not readable JSON ({exc})", path=path, field="--labels") from None
    if isinstance(data, dict) and isinstance(data.get("clips"), list):
        try:
            return {str(c["clip_id"]): str(c["category_name"]) for c in data["clips"]}, "category"
        except (KeyError, TypeError):
            raise DataError("expected every entry of 'clips' to hold 'clip_id' and 'category_name'", path=path,
                            field="clips") from None
    if isinstance(data, dict) and data and all(isinstance(v, (str, int)) for v in data.values()):
        return {str(k): str(v) for k, v in data.items()}, "label"
    raise DataError("expected {stimulus id: label} or a synthetic study's truth/clips.json", path=path,
                    field="--labels")
