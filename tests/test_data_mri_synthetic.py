"""The synthetic brain-MRI set (toolkit.data.mri.synthetic): deterministic, figshare layout, idempotent, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from toolkit.data.mri.pairs import find_image_mask_pairs
from toolkit.data.mri.synthetic import generate_synthetic_mri, main as synthetic_main

SIZE = 96  # small slices keep the generator tests fast


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_generator_deterministic(tmp_path):
    a = generate_synthetic_mri(tmp_path / "a", num_images=4, size=SIZE, seed=3)
    b = generate_synthetic_mri(tmp_path / "b", num_images=4, size=SIZE, seed=3)
    c = generate_synthetic_mri(tmp_path / "c", num_images=4, size=SIZE, seed=4)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert len(fa) == 8 and fa == fb
    assert all(fa[k] != fc[k] for k in fa if k.startswith("images"))


def test_generator_layout_and_masks(tmp_path):
    root = generate_synthetic_mri(tmp_path, num_images=12, size=SIZE, seed=0, empty_fraction=0.5)
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["num_images"] == 12 and meta["size"] == SIZE and meta["seed"] == 0
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(f"{i}.png" for i in range(1, 13))
    n_empty, inside, outside = 0, [], []
    for i in range(1, 13):
        img = cv2.imread(str(root / "images" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(root / "masks" / f"{i}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8
        assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        if mask.max() == 0:
            n_empty += 1
        else:
            inside.append(img[mask > 0].mean())
            outside.append(img[(mask == 0) & (img > 20)].mean())
    assert 0 < n_empty < 12  # empty_fraction=0.5 gives both kinds
    assert np.mean(inside) > np.mean(outside) + 10  # tumours are brighter than the head on average


def test_generator_idempotent_and_regenerates(tmp_path):
    root = generate_synthetic_mri(tmp_path, num_images=3, size=SIZE, seed=1)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    generate_synthetic_mri(tmp_path, num_images=3, size=SIZE, seed=1)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == mtimes

    (root / "masks" / "2_mask.png").unlink()  # incomplete set → regenerated
    generate_synthetic_mri(tmp_path, num_images=3, size=SIZE, seed=1)
    assert (root / "masks" / "2_mask.png").is_file()

    before = _files(root)
    generate_synthetic_mri(tmp_path, num_images=2, size=SIZE, seed=2)  # other parameters
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 2
    assert not (root / "images" / "3.png").exists() and not (root / "masks" / "3_mask.png").exists()
    assert _files(root)["images/1.png"] != before["images/1.png"]
    assert not list(root.rglob("*.tmp"))


def test_generator_cli(tmp_path, capsys):
    synthetic_main([str(tmp_path / "cli"), "--num-images", "2", "--seed", "5", "--size", str(SIZE)])
    assert len(find_image_mask_pairs(tmp_path / "cli")) == 2
    assert "2 slices" in capsys.readouterr().out


# --- pairing -----------------------------------------------------------------------------
