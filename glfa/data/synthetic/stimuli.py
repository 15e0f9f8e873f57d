"""Stimulus clips of the synthetic study: camera motions over real photographs.

The photographs ship inside installed packages (scikit-image's sample images, one of
matplotlib's), so nothing is downloaded. Each semantic category is one photograph; each clip
is a crop of it seen through a moving camera (pan, zoom or rotation), captioned from its
category and motion ("a cat, the camera zooms in").
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from glfa.errors import ConfigError, DataError

__all__ = ["Category", "CATEGORIES", "MOTIONS", "Clip", "load_photo", "make_clips", "render_clip"]

#: Longest side of a photograph after loading (pixels); crops are taken from this version.
PHOTO_SIDE = 384


@dataclass(frozen=True)
class Category:
    """One semantic category: a name, the noun of its captions and the photograph it comes from."""

    name: str
    noun: str
    source: str  # "skimage:<function>" or "matplotlib:<sample file>"


#: The catalogue; a study with ``n_categories = k`` uses the first k. It is ordered so that the first
#: photographs are those the frame classifier of the N-way metrics tells apart best: a frame of one ranks
#: that photograph's own top-3 ImageNet classes far above a random class, the other photographs' less
#: (``benchmarks/stimulus_distinctness.py``: the mean gap of the first 8 is 0.244, of the first 12 0.206,
#: where the former order, from the cat to the clock, gave its first 12 0.171). A photograph the classifier
#: sees as generic texture (gravel, a clock face at 64 x 64) leaves the frame N-way metrics little to tell.
CATEGORIES: tuple[Category, ...] = (
    Category("motorcycle", "a motorcycle", "skimage:stereo_motorcycle"),
    Category("portrait", "a portrait of a woman in uniform", "matplotlib:grace_hopper.jpg"),
    Category("cells", "stained cells under a microscope", "skimage:immunohistochemistry"),
    Category("photographer", "a man with a camera", "skimage:camera"),
    Category("cat", "a cat", "skimage:chelsea"),
    Category("coffee", "a cup of coffee", "skimage:coffee"),
    Category("bricks", "a brick wall", "skimage:brick"),
    Category("eye", "the retina of an eye", "skimage:retina"),
    Category("rocket", "a rocket on its launch pad", "skimage:rocket"),
    Category("grass", "a lawn of grass", "skimage:grass"),
    Category("astronaut", "an astronaut", "skimage:astronaut"),
    Category("moon", "the surface of the moon", "skimage:moon"),
    Category("text", "a page of printed text", "skimage:page"),
    Category("coins", "old coins on a table", "skimage:coins"),
    Category("galaxies", "galaxies in the night sky", "skimage:hubble_deep_field"),
    Category("colours", "a wheel of colours", "skimage:colorwheel"),
    Category("gravel", "gravel on the ground", "skimage:gravel"),
    Category("clock", "a clock", "skimage:clock"),
)

#: Camera motions: name -> caption phrase.
MOTIONS: dict[str, str] = {
    "pan_left": "the camera pans left",
    "pan_right": "the camera pans right",
    "pan_up": "the camera pans up",
    "pan_down": "the camera pans down",
    "zoom_in": "the camera zooms in",
    "zoom_out": "the camera zooms out",
    "rotate_cw": "the camera rotates clockwise",
    "rotate_ccw": "the camera rotates anticlockwise",
}


@dataclass(frozen=True)
class Clip:
    """One stimulus clip: which photograph, which crop and which camera motion.

    ``centre`` (row, col) and ``size`` (side of the square crop) are in pixels of the loaded
    photograph (longest side :data:`PHOTO_SIDE`); ``travel`` is the pan distance as a fraction
    of ``size``, the zoom factor's log, or the rotation in degrees, depending on ``motion``.
    """

    clip_id: str
    category: int
    split: str
    motion: str
    centre: tuple[float, float]
    size: float
    travel: float
    caption: str

    def to_dict(self) -> dict:
        """Plain JSON-able description (for truth/clips.json)."""
        return asdict(self)


@functools.lru_cache(maxsize=32)
def load_photo(source: str) -> np.ndarray:
    """The photograph ``source`` as float32 RGB in [0, 1], longest side at most :data:`PHOTO_SIDE`, ``[h, w, 3]``."""
    from PIL import Image

    kind, _, name = source.partition(":")
    try:
        if kind == "skimage":
            import skimage.data

            image = getattr(skimage.data, name)()
            if isinstance(image, tuple):  # stereo pairs
                image = image[0]
        elif kind == "matplotlib":  # found without importing matplotlib (slow)
            spec = importlib.util.find_spec("matplotlib")
            if spec is None or spec.origin is None:
                raise ImportError("matplotlib is not installed")
            path = Path(spec.origin).parent / "mpl-data" / "sample_data" / name
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        else:
            raise ValueError(f"unknown photo source kind {kind!r}")
    except (ValueError, OSError, AttributeError, ImportError) as exc:
        raise DataError(f"cannot load the sample photograph ({exc})", path=source) from None
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = image.astype(np.float64)
        image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
        image = np.rint(image * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    pil = Image.fromarray(np.ascontiguousarray(image[:, :, :3]))
    scale = PHOTO_SIDE / max(pil.size)
    if scale < 1:  # antialiased shrink
        pil = pil.resize((round(pil.size[0] * scale), round(pil.size[1] * scale)), Image.Resampling.LANCZOS)
    return np.asarray(pil, dtype=np.float32) / 255.0


def make_clips(
    n_categories: int, n_train: int, n_test: int, rng: np.random.Generator
) -> list[Clip]:
    """Draw ``n_train + n_test`` distinct clips per category (crop, motion); test clips come last."""
    if n_categories > len(CATEGORIES):
        raise ConfigError(
            f"expected at most {len(CATEGORIES)} categories (the photographs available), got {n_categories}",
            field="simulation.n_categories",
        )
    motions = list(MOTIONS)
    clips: list[Clip] = []
    for c, category in enumerate(CATEGORIES[:n_categories]):
        h, w = load_photo(category.source).shape[:2]
        order = rng.permutation(len(motions))
        for k in range(n_train + n_test):
            split = "train" if k < n_train else "test"
            motion = motions[order[k % len(motions)]]
            size = float(rng.uniform(0.45, 0.7) * min(h, w))
            margin = size * 0.75  # room for the motion and the rotated corners
            centre = (
                float(rng.uniform(min(margin, h / 2), max(h - margin, h / 2))),
                float(rng.uniform(min(margin, w / 2), max(w - margin, w / 2))),
            )
            if motion.startswith("pan"):
                travel = float(rng.uniform(0.25, 0.45))
            elif motion.startswith("zoom"):
                travel = float(rng.uniform(0.4, 0.7))
            else:
                travel = float(rng.uniform(30.0, 60.0))
            index = k if split == "train" else k - n_train
            clip_id = f"{category.name}_{split}{index + 1:02d}"
            caption = f"{category.noun}, {MOTIONS[motion]}"
            clips.append(Clip(clip_id, c, split, motion, centre, size, travel, caption))
    return clips


def _camera(clip: Clip, u: float) -> tuple[tuple[float, float], float, float]:
    """Camera (centre (row, col), crop side, rotation in radians) at progress ``u`` in [0, 1]."""
    (r, c), size, s = clip.centre, clip.size, u - 0.5
    angle = 0.0
    if clip.motion == "pan_left":
        c -= s * clip.travel * size
    elif clip.motion == "pan_right":
        c += s * clip.travel * size
    elif clip.motion == "pan_up":
        r -= s * clip.travel * size
    elif clip.motion == "pan_down":
        r += s * clip.travel * size
    elif clip.motion == "zoom_in":
        size *= float(np.exp(-s * clip.travel))
    elif clip.motion == "zoom_out":
        size *= float(np.exp(s * clip.travel))
    elif clip.motion == "rotate_cw":
        angle = np.deg2rad(s * clip.travel)
    elif clip.motion == "rotate_ccw":
        angle = -np.deg2rad(s * clip.travel)
    return (r, c), size, float(angle)


def render_clip(clip: Clip, n_frames: int, frame_size: int) -> np.ndarray:
    """Render ``clip`` as uint8 frames ``[n_frames, frame_size, frame_size, 3]`` (bilinear sampling).

    Single-threaded and in float64 (scipy), so the frames are the same bit for bit on every run.
    """
    from scipy.ndimage import map_coordinates

    photo = load_photo(CATEGORIES[clip.category].source)  # [h, w, 3]
    zoom = frame_size / clip.size  # output pixels per photo pixel (about)
    if zoom < 0.8:  # shrink once, with antialiasing, so that sampling does not alias
        from PIL import Image

        factor = zoom * 1.25
        pil = Image.fromarray(np.rint(photo * 255).astype(np.uint8))
        size = (max(2, round(pil.size[0] * factor)), max(2, round(pil.size[1] * factor)))
        photo = np.asarray(pil.resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
        factor = (size[1] / pil.size[1], size[0] / pil.size[0])  # (rows, cols)
    else:
        factor = (1.0, 1.0)
    grid = (np.arange(frame_size, dtype=np.float64) + 0.5) / frame_size - 0.5  # [-0.5, 0.5)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")  # [s, s] each
    coords = np.empty((3, n_frames, frame_size, frame_size, 3))  # (row, col, channel) to sample
    for i in range(n_frames):
        (r, c), size, angle = _camera(clip, i / max(n_frames - 1, 1))
        cos, sin = np.cos(angle), np.sin(angle)
        coords[0, i] = ((r + size * (cos * gy - sin * gx)) * factor[0] - 0.5)[:, :, None]  # photo pixel centres
        coords[1, i] = ((c + size * (sin * gy + cos * gx)) * factor[1] - 0.5)[:, :, None]
    coords[2] = np.arange(3)
    frames = map_coordinates(photo.astype(np.float64), coords, order=1, mode="mirror")  # [f, s, s, 3]
    return np.ascontiguousarray(np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8))
