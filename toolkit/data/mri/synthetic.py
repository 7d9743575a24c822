"""Synthetic brain-MRI-like slices with tumour masks on disk, for tests and demos.

Each slice is drawn (:func:`~toolkit.data.mri.synthetic_render.render_slice`) from its own
generator ``np.random.default_rng(seed + id)``, so the output is deterministic, independent of
the order or parallelism of generation, and byte-identical between runs. The on-disk layout is
that of the public figshare PNG conversion: ``root/images/<id>.png`` and
``root/masks/<id>_mask.png``, ids 1..N. Command line: ``python -m toolkit.data.mri.synthetic``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from .synthetic_render import GENERATOR_VERSION, render_slice

__all__ = ["generate_synthetic_mri", "main"]

_META_NAME = "synthetic.json"


def _slice_paths(root: Path, i: int) -> tuple[Path, Path]:
    return root / "images" / f"{i}.png", root / "masks" / f"{i}_mask.png"


def _write_png_atomic(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(array)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _generate_one(root: Path, i: int, size: int, seed: int, empty_fraction: float) -> None:
    rng = np.random.default_rng(seed + i)
    with_tumour = bool(rng.random() >= empty_fraction)
    image, mask = render_slice(rng, size, with_tumour)
    img_path, mask_path = _slice_paths(root, i)
    _write_png_atomic(img_path, image)
    _write_png_atomic(mask_path, mask)


def generate_synthetic_mri(
    root: str | os.PathLike,
    num_images: int = 500,
    size: int = 512,
    seed: int = 0,
    empty_fraction: float = 0.1,
    num_workers: int = 1,
) -> Path:
    """Write a synthetic brain-MRI tumour set in the figshare PNG layout; return ``root``.

    Files: ``root/images/<id>.png`` (8-bit grey, size×size, values 0..255) and
    ``root/masks/<id>_mask.png`` (8-bit, values exactly {0, 255}), ids 1..num_images,
    then ``root/synthetic.json`` with the parameters, written last. Slice ``id`` is drawn
    from ``np.random.default_rng(seed + id)``: the same arguments give byte-identical
    files. About ``empty_fraction`` of the slices (each independently) have no tumour.

    Idempotent: when ``synthetic.json`` matches the arguments and every file is present,
    nothing is rewritten. Otherwise the set is regenerated (images written atomically),
    and stale ``<n>.png`` / ``<n>_mask.png`` files with ids above ``num_images`` are removed.
    ``num_workers`` > 1 renders slices on that many threads (same output).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
    root = Path(root)
    meta = {
        "generator": "toolkit.data.synthetic_mri",  # the format tag of existing sets, not a module path
        "version": GENERATOR_VERSION,
        "num_images": int(num_images),
        "size": int(size),
        "seed": int(seed),
        "empty_fraction": float(empty_fraction),
    }
    meta_path = root / _META_NAME
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            old = None
        if old == meta and all(p.is_file() for i in range(1, num_images + 1) for p in _slice_paths(root, i)):
            return root
        meta_path.unlink()  # the set is about to change: it is incomplete until the end

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for folder, suffix in (("images", ".png"), ("masks", "_mask.png")):
        for p in (root / folder).iterdir():
            stem = p.name[: -len(suffix)] if p.name.endswith(suffix) else ""
            if stem.isdigit() and int(stem) > num_images:
                p.unlink()

    ids = range(1, num_images + 1)
    if num_workers > 1:
        with ThreadPoolExecutor(num_workers) as pool:
            list(pool.map(lambda i: _generate_one(root, i, size, seed, empty_fraction), ids))
    else:
        for i in ids:
            _generate_one(root, i, size, seed, empty_fraction)

    tmp = meta_path.with_name(f".{_META_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    return root


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m toolkit.data.mri.synthetic OUT_DIR --num-images N --seed S``."""
    parser = argparse.ArgumentParser(
        prog="python -m toolkit.data.mri.synthetic",
        description="Write synthetic brain-MRI slices and tumour masks (figshare PNG layout).",
    )
    parser.add_argument("out_dir", help="folder to write images/ masks/ synthetic.json into")
    parser.add_argument("--num-images", type=int, default=500, help="number of slices (ids 1..N)")
    parser.add_argument("--size", type=int, default=512, help="side of the square slices in pixels")
    parser.add_argument("--seed", type=int, default=0, help="slice i uses default_rng(seed + i)")
    parser.add_argument("--empty-fraction", type=float, default=0.1, help="fraction of slices without tumour, 0..1")
    parser.add_argument("--num-workers", type=int, default=1, help="rendering threads")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    root = generate_synthetic_mri(
        args.out_dir, args.num_images, args.size, args.seed, args.empty_fraction, args.num_workers
    )
    print(f"{args.num_images} slices in {root} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
