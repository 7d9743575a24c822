"""Synthetic multi-class brain-MRI volumes in the nnU-Net raw layout, for tests and ``make demo-brats``.

Each case is a brain-shaped ellipsoid holding one tumour with BraTS-style nested labels: edema (2)
around a core whose outer shell enhances (4), with non-enhancing tumour (3) inside the rim and a
necrotic centre (1). Two channels: FLAIR (0000), bright in the edema and core, and T1c (0001), bright
in the enhancing rim and dark in the necrosis; both with Gaussian noise and a smooth bias. Voxels are
1 mm x 1 mm x 3 mm (the affine's diagonal). Case ``i`` is drawn from ``default_rng([seed, i])``: the
same arguments give the same volumes. Command line: ``python -m toolkit.data.mri.synthetic_volumes ROOT``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ...checkpoint import atomic_write
from .nifti import save_nifti
from .raw import DATASET_JSON

__all__ = ["SYNTHETIC_CHANNELS", "SYNTHETIC_LABELS", "SYNTHETIC_REGIONS", "SPACING_MM", "generate_synthetic_volumes",
           "main"]

SYNTHETIC_CHANNELS = ("FLAIR", "T1c")
SYNTHETIC_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing_tumour": 3, "enhancing_tumour": 4}
SYNTHETIC_REGIONS = {"whole_tumour": [1, 2, 3, 4], "tumour_core": [1, 3, 4], "enhancing_tumour": [4]}
#: Voxel size (mm) along X, Y, Z of every generated volume.
SPACING_MM = (1.0, 1.0, 3.0)
_VERSION = 1


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel centres in mm (X, Y, Z each float32 of ``shape``), origin at the volume's centre."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, SPACING_MM)]
    return np.meshgrid(*axes, indexing="ij")


def _case(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """One case: ([FLAIR, T1c] float32 (X, Y, Z), labels uint8 (X, Y, Z) in 0..4)."""
    x, y, z = _grid(shape)
    half = np.array([(n - 1) / 2 * s for n, s in zip(shape, SPACING_MM)], np.float32)
    axes = half * rng.uniform([0.78, 0.84, 0.8], [0.86, 0.92, 0.95])  # the brain ellipsoid's semi-axes, mm
    brain = (x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2 <= 1.0
    # the tumour: an edema ellipsoid (radius r_e mm, random axes), its centre well inside the brain
    r_e = float(rng.uniform(0.32, 0.42) * min(half[:2]))
    centre = rng.uniform(-1, 1, 3) * np.maximum(axes - 1.2 * r_e, 0) * np.array([1, 1, 0.5])
    stretch = rng.uniform(0.8, 1.25, 3)
    wobble = 1 + 0.08 * np.sin(rng.uniform(2, 4) * np.arctan2(y - centre[1], x - centre[0]) + rng.uniform(0, 6.3))
    d = np.sqrt(((x - centre[0]) / stretch[0]) ** 2 + ((y - centre[1]) / stretch[1]) ** 2
                + ((z - centre[2]) / stretch[2]) ** 2) * wobble  # mm, shaped distance from the centre
    r_core = r_e * rng.uniform(0.55, 0.68)
    labels = np.zeros(shape, np.uint8)
    labels[brain & (d < r_e)] = 2  # edema
    labels[brain & (d < r_core)] = 4  # enhancing rim: the core's outer shell
    labels[brain & (d < r_core * 0.75)] = 3  # non-enhancing tumour inside the rim
    labels[brain & (d < r_core * 0.45)] = 1  # necrotic centre
    bias = 1 + 0.1 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) / half[0]  # smooth intensity bias
    # mean intensity per label value (0 background-in-brain, 1..4) and channel: FLAIR, T1c
    means = {"FLAIR": (100, 125, 170, 140, 130), "T1c": (100, 60, 105, 115, 190)}
    chans = []
    for name in SYNTHETIC_CHANNELS:
        vol = np.zeros(shape, np.float32)
        level = np.asarray(means[name], np.float32)[labels] * bias
        vol[brain] = (level + rng.normal(0, 12, shape).astype(np.float32))[brain]
        chans.append(np.clip(vol, 1, None) * brain)  # outside the brain 0; inside never 0
    return chans, labels


def _paths(root: Path, case: str) -> list[Path]:
    return [*(root / "imagesTr" / f"{case}_{c:04d}.nii.gz" for c in range(len(SYNTHETIC_CHANNELS))),
            root / "labelsTr" / f"{case}.nii.gz"]


def generate_synthetic_volumes(root: str | os.PathLike, cases: int = 8, shape: tuple[int, int, int] = (96, 96, 24),
                               seed: int = 0) -> Path:
    """Write ``cases`` synthetic cases in the nnU-Net raw layout under ``root``; return ``root``.

    Files: ``imagesTr/synth_<NNN>_0000.nii.gz`` (FLAIR) and ``_0001.nii.gz`` (T1c), float32 (X, Y, Z) =
    ``shape``, 0 outside the brain and positive inside; ``labelsTr/synth_<NNN>.nii.gz``, uint8 label values
    0..4 (see the module docstring); affine diag(1, 1, 3) mm. ``dataset.json`` (channel_names, labels,
    regions_brats, file_ending ".nii.gz", and the generator's parameters under "synthetic") is written last:
    a set whose dataset.json matches the arguments and whose files all exist is left alone (idempotent);
    otherwise every file is rewritten, each atomically. Raises ValueError for cases < 1, a shape that is not
    three sides of at least 16 (X, Y) and 4 (Z) voxels, or a negative seed.
    """
    shape = tuple(int(s) for s in shape)
    if int(cases) < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    if len(shape) != 3 or min(shape[:2]) < 16 or shape[2] < 4:
        raise ValueError(f"shape must be (X, Y, Z) with X, Y >= 16 and Z >= 4 voxels, got {shape}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(root)
    names = [f"synth_{i + 1:03d}" for i in range(int(cases))]
    params = {"generator": "toolkit.data.mri.synthetic_volumes", "version": _VERSION, "cases": int(cases),
              "shape": list(shape), "seed": int(seed)}
    meta = {"name": "synthetic-brats", "description": "synthetic volumes with BraTS-style nested tumour labels",
            "channel_names": {str(i): n for i, n in enumerate(SYNTHETIC_CHANNELS)}, "labels": SYNTHETIC_LABELS,
            "regions_brats": SYNTHETIC_REGIONS, "numTraining": int(cases), "file_ending": ".nii.gz",
            "synthetic": params}
    meta_path = root / DATASET_JSON
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            old = None
        if old == meta and all(p.is_file() for c in names for p in _paths(root, c)):
            return root
        meta_path.unlink()  # the set is about to change: incomplete until dataset.json is back
    affine = np.diag([*SPACING_MM, 1.0])
    for i, case in enumerate(names):
        chans, labels = _case(shape, np.random.default_rng([int(seed), i]))
        *channel_paths, label_path = _paths(root, case)
        for path, vol in zip(channel_paths, chans):
            save_nifti(path, vol, affine)
        save_nifti(label_path, labels, affine)
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2) + "\n"), mode="w")
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m toolkit.data.mri.synthetic_volumes ROOT [--cases N] [--shape X,Y,Z] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="python -m toolkit.data.mri.synthetic_volumes",
                                     description="Write synthetic multi-class brain-MRI volumes (nnU-Net raw layout).")
    parser.add_argument("root", help="folder for dataset.json, imagesTr/ and labelsTr/")
    parser.add_argument("--cases", type=int, default=8, help="number of cases")
    parser.add_argument("--shape", default="96,96,24", help="X,Y,Z voxels of each volume")
    parser.add_argument("--seed", type=int, default=0, help="case i is drawn from default_rng([seed, i])")
    args = parser.parse_args(argv)
    try:
        shape = tuple(int(s) for s in args.shape.split(","))
        t0 = time.perf_counter()
        root = generate_synthetic_volumes(args.root, args.cases, shape, args.seed)
    except ValueError as err:
        parser.error(str(err))
    print(f"{args.cases} synthetic cases in {root} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
