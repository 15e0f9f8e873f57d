"""FlatMapProjector(geometry="fmri-pte") against an independent computation of the authors' image steps.

The reference below follows their tools step by step, in their own terms: pycortex's
``make_flatmap_image`` (its boundary-edge dictionary, its outline walk, Pillow's polygon fill,
``numpy.mgrid``, a k-d tree), the cortex crop of their conversion script, NeuroPictor's
visual-cortex box and OpenCV's ``cv2.resize`` itself (opencv-python-headless, in the ``dev``
extra). The projector must give the same mask and the same pixels on random vertex data.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import scipy.sparse as sp

from glfa.errors import DataError
from glfa.surface import FlatMapProjector, visual_roi
from glfa.surface.atlas import hcp_data_dir
from glfa.surface.fmripte import resize_weights

SIZE = 256
N = 32492


def _boundary_edges(polys):
    """pycortex: the edges that belong to one face only."""
    edges = {}
    for i, poly in enumerate(np.sort(polys)):
        for a, b in ((0, 1), (1, 2), (0, 2)):
            edges.setdefault((poly[a], poly[b]), []).append(i)
    return np.array([e for e, f in edges.items() if len(f) == 1])


def _trace_poly(edges):
    """pycortex: walk the boundary edges into closed loops; the two longest."""
    conn = {e: [] for e in np.unique(edges.ravel())}
    for a, b in edges:
        conn[a].append(b)
        conn[b].append(a)
    components = []
    while conn:
        poly = [next(iter(conn))]
        while (len(poly) == 1 or poly[0] != poly[-1]) and conn[poly[-1]]:
            nvert = conn[poly[-1]][0]
            conn[nvert].remove(poly[-1])
            conn[poly[-1]].remove(nvert)
            if not conn[nvert]:
                del conn[nvert]
            if not conn[poly[-1]]:
                del conn[poly[-1]]
            poly.append(nvert)
        components.append(poly)
    order = np.argsort([len(c) for c in components])
    return components[order[-1]], components[order[-2]]


def _flatmap_image(pts, polys, data, height=1024):
    """pycortex's make_flatmap_image of vertex data ``data`` [2N] on the merged flat mesh; 0 outside."""
    from PIL import Image, ImageDraw
    from scipy.spatial import cKDTree

    left, right = _trace_poly(_boundary_edges(polys))
    aspect = height / (pts.max(0) - pts.min(0))[1]
    im = Image.new("L", (int(aspect * (pts.max(0) - pts.min(0))[0]), height))
    draw = ImageDraw.Draw(im)
    for loop in (left, right):
        draw.polygon(((pts[loop] - pts.min(0)) * aspect)[:, :2].ravel().tolist(), fill=255)
    mask = np.array(im).T > 0
    valid = np.unique(polys)
    fmax, fmin = pts.max(0), pts.min(0)
    size = fmax - fmin
    width = int(size[0] / size[1] * height)
    assert mask.shape == (width, height)
    grid = np.mgrid[fmin[0]:fmax[0]:width * 1j, fmin[1]:fmax[1]:height * 1j].reshape(2, -1)
    vert = cKDTree(pts[valid, :2]).query(grid.T[mask.ravel()])[1]
    pixmap = sp.csr_matrix((np.ones(len(vert)), (np.arange(len(vert)), valid[vert])), shape=(mask.sum(), len(pts)))
    img = np.full(mask.shape, np.nan)
    img[mask] = pixmap @ data
    img = img.T[::-1]
    img[np.isnan(img)] = 0
    return img


def _authors_images(data: np.ndarray, labels: np.ndarray):
    """(image [256, 256], mask [256, 256]) of vertex data [2N] through every step of the authors' pipeline."""
    import cv2

    surfaces = [nib.load(hcp_data_dir() / f"S1200.{h}.flat.32k_fs_LR.surf.gii").agg_data() for h in "LR"]
    (lpts, lpolys), (rpts, rpolys) = surfaces
    lpts[:, 0] -= lpts.max(0)[0]
    rpts[:, 0] -= rpts.min(0)[0]
    pts = np.vstack([lpts, rpts])
    polys = np.vstack([lpolys, rpolys + len(lpts)])
    label_img = _flatmap_image(pts, polys, labels.astype(np.float64))
    img = _flatmap_image(pts, polys, data)
    idx = np.where(label_img != 0)
    crop = (slice(idx[0].min(), idx[0].max()), slice(idx[1].min(), idx[1].max()))
    label_img, img = label_img[crop], img[crop].astype(np.float32)
    # NeuroPictor's convert_brain.py: the box around the visual cortex
    h, w = label_img.shape
    vc = label_img == 1
    xx, yy = np.meshgrid(np.linspace(0, w - 1, w), np.linspace(0, h - 1, h))
    g = np.stack([xx, yy]) * vc[None]
    x1, y1 = min(int(g[0].max()) + 1, w), min(int(g[1].max()) + 10, h)
    g[g == 0] = 1e6
    x0, y0 = max(int(g[0].min() - 1), 0), max(int(g[1].min() - 10), 0)
    cmask = cv2.resize(vc[y0:y1 + 1, x0:x1 + 1] * 1.0, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
    image = cv2.resize(img[y0:y1 + 1, x0:x1 + 1], (SIZE, SIZE))
    image[cmask == 0] = 0
    return image, cmask > 0


def _labels() -> np.ndarray:
    """1 on the 31 reference areas, -1 on other cortex, 0 on the medial wall, over both meshes [2N]."""
    with np.load(hcp_data_dir() / "fMRI_vertex_info_32k.npz") as npz:
        gray = np.concatenate([npz["grayl"], npz["grayr"] + N])
    roi = visual_roi("reference")
    labels = np.zeros(2 * N)
    labels[gray] = -1
    labels[np.concatenate([roi.left, roi.right + N])] = 1
    return labels


@pytest.fixture(scope="module")
def proj() -> FlatMapProjector:
    return FlatMapProjector(rois="reference", height=SIZE, width=SIZE, geometry="fmri-pte")


@pytest.fixture(scope="module")
def authors():
    """Random cortex data [2N] (0 on the medial wall) and its image and mask by the authors' steps."""
    labels = _labels()
    data = np.random.default_rng(0).standard_normal(2 * N) * (labels != 0)
    image, mask = _authors_images(data, labels)
    return data, image, mask


def test_equals_the_authors_pipeline(proj, authors):
    data, image, mask = authors
    np.testing.assert_array_equal(proj.mask, mask)
    assert 30_000 < mask.sum() < 32_500  # "about 31,200 of the 65,536 pixels"
    ours = proj.to_image(np.concatenate([data[proj.left], data[proj.right + N]]))
    np.testing.assert_allclose(ours, image, rtol=1e-5, atol=1e-5)
    assert np.abs(image).max() > 1  # real data on the pixels, not an empty image


def test_reads_the_roi_and_the_cortex_beside_it(proj):
    roi = visual_roi("reference")
    labels = _labels()
    read = np.concatenate([proj.left, proj.right + N])
    assert (labels[read] != 0).all()  # cortex only: the medial wall holds no data
    inside = np.isin(np.concatenate([roi.left, roi.right + N]), read).mean()
    assert inside > 0.99  # nearly every ROI vertex (a few own no raster pixel the resize samples)
    outside = int((labels[read] == -1).sum())
    assert 50 < outside < 0.1 * read.size  # the cortex the resize blends in at the mask's edge
    fwd = proj.forward.tocsc()
    assert (np.diff(fwd.indptr) > 0).all()  # every named vertex is read
    xy = proj.vertex_xy[np.isin(read, np.concatenate([roi.left, roi.right + N]))]
    assert xy.min() > -1 and xy.max() < SIZE  # the ROI lies on the image


def test_forward_is_convex_blending(proj):
    fwd = proj.forward.tocsr()
    rows = np.diff(fwd.indptr)
    assert (rows[~proj.mask.ravel()] == 0).all()
    assert (fwd.data > 0).all()
    sums = np.asarray(fwd.sum(axis=1)).ravel()[proj.mask.ravel()]
    assert sums.max() <= 1 + 1e-6
    assert np.mean(sums > 1 - 1e-6) > 0.97  # only edge pixels blend in medial wall or background


def test_to_surface_is_the_normalised_adjoint(proj):
    img = np.random.default_rng(1).standard_normal((2, SIZE, SIZE)).astype(np.float32)
    fwd = proj.forward.astype(np.float64)
    per_pixel = np.asarray(fwd.sum(axis=1)).ravel()
    weighted = fwd.T @ (img.reshape(2, -1) / np.where(per_pixel > 0, per_pixel, 1)).T  # [V, 2]
    expected = (weighted / np.asarray(fwd.sum(axis=0)).ravel()[:, None]).T
    np.testing.assert_allclose(proj.to_surface(img), expected, rtol=1e-4, atol=1e-5)
    const = np.full(proj.n_vertices, 3.0, dtype=np.float32)
    np.testing.assert_allclose(proj.to_surface(proj.to_image(const)), const, rtol=1e-5)


def test_smooth_fields_survive_the_round_trip(proj):
    x, y = proj.vertex_xy[:, 0] / SIZE, proj.vertex_xy[:, 1] / SIZE
    field = np.sin(3 * x) + np.cos(2 * y) + x * y
    back = proj.to_surface(proj.to_image(field))
    err = np.abs(back - field)
    assert np.median(err) < 0.02 and np.corrcoef(back, field)[0, 1] > 0.995


def test_arrays_round_trip_keeps_the_geometry(proj):
    again = FlatMapProjector.from_arrays(proj.to_arrays())
    assert again.geometry == "fmri-pte"
    x = np.random.default_rng(2).standard_normal((3, proj.n_vertices)).astype(np.float32)
    np.testing.assert_array_equal(again.to_image(x), proj.to_image(x))
    old = {k: v for k, v in FlatMapProjector(height=32, width=32).to_arrays().items() if k != "geometry"}
    assert FlatMapProjector.from_arrays(old).geometry == "barycentric"  # stores from before the geometries
    with pytest.raises(DataError, match="geometry"):
        FlatMapProjector.from_arrays({**proj.to_arrays(), "geometry": np.array([7])}, path="store.h5")
    with pytest.raises(DataError, match="geometry"):
        FlatMapProjector(geometry="pycortex")


@pytest.mark.parametrize(("n_in", "n_out"), [(300, 256), (512, 256), (371, 256), (200, 256), (97, 64)])
def test_resize_weights_equal_opencv(n_in, n_out):
    import cv2

    x = np.random.default_rng(n_in).standard_normal((n_in, n_in + 5)).astype(np.float32)
    ours = resize_weights(n_in, n_out, "linear") @ x @ resize_weights(n_in + 5, n_out, "linear").T
    np.testing.assert_allclose(ours, cv2.resize(x, (n_out, n_out)), rtol=1e-5, atol=1e-6)
    near = resize_weights(n_in, n_out, "nearest") @ x @ resize_weights(n_in + 5, n_out, "nearest").T
    np.testing.assert_array_equal(near.astype(np.float32), cv2.resize(x, (n_out, n_out), interpolation=cv2.INTER_NEAREST))


# ----------------------------------------------------------------------------- the geometry in stores and models


def _prepare(root, tmp_path, name, **data):
    import warnings

    from glfa.config import validate_config
    from glfa.data.prepare import prepare_study
    from glfa.data.store import StudyStore

    config = validate_config({"data": {"layout": "generic", "tr": 0.8, "image_size": 32, **data}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return StudyStore.open(prepare_study(root, tmp_path / name, config, progress=False))


@pytest.fixture(scope="module")
def cortex_study(tmp_path_factory):
    """A generic study whose runs hold every cortex vertex (the fmri-pte projector reads beyond the ROI)."""
    from glfa.surface.cifti import read_dtseries, write_dtseries
    from tests.fixtures import write_generic_study

    root = tmp_path_factory.mktemp("cortex") / "study"
    study = write_generic_study(root, subjects=("01",), rois="reference")
    with np.load(hcp_data_dir() / "fMRI_vertex_info_32k.npz") as npz:
        grayl, grayr = npz["grayl"], npz["grayr"]
    for rel in study.data:
        n_trs = read_dtseries(root / rel).data.shape[0]
        data = np.random.default_rng(3).standard_normal((n_trs, grayl.size + grayr.size)).astype(np.float32)
        write_dtseries(root / rel, data, grayl, grayr, study.info["tr"])
    return root


def test_prepare_records_the_geometry(cortex_study, tmp_path):
    pte = _prepare(cortex_study, tmp_path, "pte", geometry="fmri-pte", rois="reference")
    assert pte.geometry == "fmri-pte" and pte.manifest["geometry"] == "fmri-pte"
    assert pte.projector.geometry == "fmri-pte"
    expected = FlatMapProjector(rois="reference", height=32, width=32, geometry="fmri-pte")
    np.testing.assert_array_equal(pte.mask, expected.mask)
    np.testing.assert_array_equal(pte.projector.left, expected.left)
    image = pte.response("01", pte.stimuli[0])
    assert np.abs(image[:, expected.mask]).max() > 0 and (image[:, ~expected.mask] == 0).all()
    bary = _prepare(cortex_study, tmp_path, "bary")
    assert bary.geometry == "barycentric" and bary.projector.geometry == "barycentric"
    with pytest.raises(DataError, match="trained on 'barycentric' flat images but the store .* holds 'fmri-pte'"):
        pte.check_geometry("barycentric", tmp_path / "model")
    pte.check_geometry("fmri-pte", tmp_path / "model")
    pte.check_geometry(None, tmp_path / "model")  # a model from before the geometry was recorded


def test_a_file_of_the_roi_alone_is_a_clear_error(tmp_path, proj):
    from glfa.surface.cifti import read_dtseries, series_on, write_dtseries

    roi = visual_roi("reference")
    data = np.zeros((2, roi.n_vertices), dtype=np.float32)
    path = write_dtseries(tmp_path / "roi.dtseries.nii", data, roi.left, roi.right, tr=2.0)
    with pytest.raises(DataError, match=r"roi\.dtseries\.nii.* of the 9\d{3} vertices the fmri-pte images read are "
                                        r"missing .*needs the cortex around the ROI too"):
        series_on(read_dtseries(path), proj, path)


def test_models_carry_the_geometry_and_refuse_another(tmp_path):
    from glfa.config import validate_config
    from glfa.errors import CheckpointError
    from glfa.models.encoder import FmriEncoder
    from glfa.models.pte import FmriPTE

    config = validate_config({"model": {"preset": "tiny"}})
    pte = FmriPTE.from_config(config.model, 32)
    pte.geometry = "fmri-pte"
    pte.save_pretrained(tmp_path / "pte")
    assert FmriPTE.from_pretrained(tmp_path / "pte").geometry == "fmri-pte"
    encoder = FmriEncoder(config.model, 32, 2, geometry="fmri-pte")
    encoder.load_pte(tmp_path / "pte")
    encoder.save_pretrained(tmp_path / "encoder")
    assert FmriEncoder.from_pretrained(tmp_path / "encoder").geometry == "fmri-pte"
    other = FmriEncoder(config.model, 32, 2, geometry="barycentric")
    with pytest.raises(CheckpointError, match="trained on 'fmri-pte' flat images, this encoder reads 'barycentric'"):
        other.load_pte(tmp_path / "pte")
    with pytest.raises(CheckpointError, match="trained on 'fmri-pte' flat images"):
        other.load_encoder_weights(tmp_path / "encoder")
    FmriEncoder(config.model, 32, 2).load_encoder_weights(tmp_path / "encoder")  # unknown geometry passes


def test_generate_refuses_a_store_of_another_geometry(tmp_path):
    import json

    from glfa.generate import generate
    from tests.fixtures import write_decoding_store

    store_dir = write_decoding_store(tmp_path / "store")
    manifest = json.loads((store_dir / "manifest.json").read_text())
    (store_dir / "manifest.json").write_text(json.dumps({**manifest, "geometry": "fmri-pte"}))
    model_dir = tmp_path / "run" / "cotrain-glfa" / "model"
    model_dir.mkdir(parents=True)
    info = {"kind": "cotrain", "method": "glfa", "generator": str(tmp_path / "generator"), "store": str(store_dir),
            "train_subjects": ["s1", "s2"], "held_out": ["s3"], "config": {}, "num_frames": 2, "image_size": 16,
            "geometry": "barycentric"}  # checked before anything is loaded
    (model_dir / "model.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"trained on 'barycentric' flat images but the store .* holds 'fmri-pte' "
                                        r"images; prepare a store with data.geometry: barycentric"):
        generate(tmp_path / "run", method="glfa", subject="s3", device="cpu", progress=False)
    assert not (tmp_path / "run" / "generations" / "glfa" / "s3-test").exists()
