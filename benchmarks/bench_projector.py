"""Surface frames -> flat cortical images: FlatMapProjector's fast path against simpler ways.

Every method computes the same barycentric interpolation (the projector's forward sparse matrix
``[H*W, V]``) of ``--frames`` random surface frames ``[T, V]`` into ``[T, H, W]`` float32 images,
in one process, and is checked against ``forward @ x.T`` before it is timed:

- ``to_image`` (fast path): batched float32 gather (torch ``index_select`` of the <= 3 vertices
  per pixel, weighted sum, scatter into the mask pixels) over chunks of frames;
- ``reference``: a per-frame Python loop doing the interpolation pixel by pixel (pure Python,
  timed on ``--reference-frames`` frames): the "per-frame Python loop" of the target;
- ``per-frame numpy``: a Python loop over frames, each frame vectorised with numpy;
- ``per-frame scipy``: a Python loop over frames, each a scipy CSR mat-vec;
- ``batched scipy``: one scipy CSR product per chunk of frames;
- ``to_surface``: the inverse (image -> vertices), batched like the fast path.

Wall-clock frames/s is the best of ``--repeats`` runs; CPU s/frame (process time) is shown too,
since on a shared machine wall time also measures the other jobs. Prints a Markdown table.

A second table compares the geometries in the same process, the barycentric one as the
reference: the first (cold) build of each projector (the fmri-pte one rasterises both flat
hemispheres at height 1024), ``to_image`` and ``to_surface`` frames/s.

    python benchmarks/bench_projector.py [--frames 2048] [--reference-frames 10] [--size 256]
        [--rois paper] [--geometry barycentric] [--threads 2] [--repeats 3]

Target (issue 2): >= 5,000 frames/s on 2 CPU cores, >= 20 x the per-frame Python loop.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def python_table(forward) -> list[tuple[int, list[tuple[int, float]]]]:
    """(pixel, [(vertex, weight), ...]) for every pixel the forward matrix writes, as Python objects."""
    fwd = forward.tocsr()
    table = []
    for pixel in np.nonzero(np.diff(fwd.indptr))[0].tolist():
        lo, hi = fwd.indptr[pixel], fwd.indptr[pixel + 1]
        table.append((pixel, list(zip(fwd.indices[lo:hi].tolist(), fwd.data[lo:hi].tolist()))))
    return table


def reference_loop(x: np.ndarray, table, height: int, width: int) -> np.ndarray:
    """Per-frame, per-pixel Python loop: img[p] = sum_k w_k * x[v_k] over the pixel's triangle."""
    out = np.zeros((x.shape[0], height * width), dtype=np.float32)
    for t in range(x.shape[0]):
        frame = x[t].tolist()
        img = [0.0] * (height * width)
        for pixel, terms in table:
            value = 0.0
            for vertex, weight in terms:
                value += weight * frame[vertex]
            img[pixel] = value
        out[t] = img
    return out.reshape(-1, height, width)


def per_frame_numpy(x: np.ndarray, rows, index, weight, height: int, width: int) -> np.ndarray:
    """Python loop over frames; each frame a vectorised numpy gather + weighted sum + scatter."""
    out = np.zeros((x.shape[0], height * width), dtype=np.float32)
    for t in range(x.shape[0]):
        out[t, rows] = (x[t][index] * weight).sum(axis=1)
    return out.reshape(-1, height, width)


def per_frame_scipy(x: np.ndarray, forward, height: int, width: int) -> np.ndarray:
    """Python loop over frames; each frame one scipy CSR mat-vec."""
    out = np.empty((x.shape[0], height * width), dtype=np.float32)
    for t in range(x.shape[0]):
        out[t] = forward @ x[t]
    return out.reshape(-1, height, width)


def batched_scipy(x: np.ndarray, forward, height: int, width: int, chunk: int = 256) -> np.ndarray:
    """One scipy CSR product [H*W, V] @ [V, t] per chunk of frames."""
    out = np.empty((x.shape[0], height * width), dtype=np.float32)
    for start in range(0, x.shape[0], chunk):
        out[start : start + chunk] = (forward @ x[start : start + chunk].T).T
    return out.reshape(-1, height, width)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best wall seconds and best process (CPU) seconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=2048)
    parser.add_argument("--reference-frames", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rois", default="paper", choices=["paper", "reference"])
    parser.add_argument("--geometry", default="barycentric", choices=["barycentric", "fmri-pte"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from glfa.surface.flatmap import FlatMapProjector

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    builds = {}
    for geometry in ("barycentric", "fmri-pte"):  # cold builds, timed once each (they are cached in-process)
        t0 = time.perf_counter()
        built = FlatMapProjector(rois=args.rois, height=args.size, width=args.size, geometry=geometry)
        builds[geometry] = (built, time.perf_counter() - t0)
    proj, build_s = builds[args.geometry]
    h, w, fwd = proj.height, proj.width, proj.forward.astype(np.float32).tocsr()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.frames, proj.n_vertices)).astype(np.float32)  # [T, V]
    xr = x[: args.reference_frames]
    expected = (fwd @ x.T).T.reshape(-1, h, w)

    counts = np.diff(fwd.indptr)
    rows = np.nonzero(counts)[0]
    k = int(counts.max())
    index = np.zeros((rows.size, k), dtype=np.int64)  # [p, k]
    weight = np.zeros((rows.size, k), dtype=np.float32)
    for j in range(k):
        has = counts[rows] > j
        index[has, j] = fwd.indices[fwd.indptr[rows[has]] + j]
        weight[has, j] = fwd.data[fwd.indptr[rows[has]] + j]
    table = python_table(fwd)

    methods = {
        "to_image (fast path)": (lambda: proj.to_image(x), args.frames),
        "batched scipy CSR": (lambda: batched_scipy(x, fwd, h, w), args.frames),
        "per-frame scipy mat-vec": (lambda: per_frame_scipy(x, fwd, h, w), args.frames),
        "per-frame numpy": (lambda: per_frame_numpy(x, rows, index, weight, h, w), args.frames),
        "reference: per-frame Python loop": (lambda: reference_loop(xr, table, h, w), args.reference_frames),
    }
    for name, (fn, n) in methods.items():
        got = fn()
        if not np.allclose(got, expected[:n], atol=1e-4):
            raise SystemExit(f"{name} disagrees with the sparse product")
    images = proj.to_image(x)
    if not np.allclose(proj.to_surface(images), (proj.inverse @ images.reshape(args.frames, -1).T).T, atol=1e-4):
        raise SystemExit("to_surface disagrees with the inverse sparse product")

    results = {}
    for name, (fn, n) in methods.items():
        wall, cpu = timed(fn, args.repeats)
        results[name] = (n, wall, cpu)
    wall, cpu = timed(lambda: proj.to_surface(images), args.repeats)
    results["to_surface (inverse, fast path)"] = (args.frames, wall, cpu)
    ref_fps = results["reference: per-frame Python loop"][0] / results["reference: per-frame Python loop"][1]

    print(
        f"FlatMapProjector geometry={args.geometry} rois={args.rois} V={proj.n_vertices} image {h}x{w} "
        f"mask {int(proj.mask.sum())} px (built in {build_s:.2f} s); torch threads {args.threads}, "
        f"{os.cpu_count()} CPUs, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}\n"
    )
    print("| method | frames | wall s | frames/s | CPU ms/frame | x reference |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (n, wall, cpu) in results.items():
        fps = n / wall
        print(f"| {name} | {n} | {wall:.3f} | {fps:,.0f} | {1000 * cpu / n:.3f} | {fps / ref_fps:,.1f} |")
    compare_geometries(builds, args.frames, args.repeats)


def compare_geometries(builds: dict, frames: int, repeats: int) -> None:
    """Print build time and apply speed of each geometry, as ratios to the barycentric one."""
    rows = {}
    for geometry, (proj, build_s) in builds.items():
        x = np.random.default_rng(1).standard_normal((frames, proj.n_vertices)).astype(np.float32)
        images = proj.to_image(x)
        forward_s = timed(lambda: proj.to_image(x), repeats)[0]
        inverse_s = timed(lambda: proj.to_surface(images), repeats)[0]
        rows[geometry] = (proj, build_s, frames / forward_s, frames / inverse_s)
    _, ref_build, ref_fwd, ref_inv = rows["barycentric"]
    print("\n| geometry | V | mask px | max vertices/pixel | build s (cold) | to_image frames/s | to_surface frames/s "
          "| build / barycentric | to_image / barycentric | to_surface / barycentric |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for geometry, (proj, build_s, fwd, inv) in rows.items():
        k = int(np.diff(proj.forward.indptr).max())
        print(f"| {geometry} | {proj.n_vertices:,} | {int(proj.mask.sum()):,} | {k} | {build_s:.2f} | {fwd:,.0f} | "
              f"{inv:,.0f} | {build_s / ref_build:.1f} x | {fwd / ref_fwd:.2f} x | {inv / ref_inv:.2f} x |")


if __name__ == "__main__":
    main()
