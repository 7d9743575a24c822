"""Where `toolkit predict` puts masks at the scans' own size: mean per-image Dice against the original masks.

Without --weights, a perfect model trained without flips: each mask resized to the model's side as training
resizes it (``resize_square``, nearest), then back as predict does (``resize_back``) or centre-aligned
(``cv2.resize``, predict until 3 Dec 2026), thresholded at 0.5. With --weights, a run's model predicts each mask's
image (``<folder>/images/<id>.png`` beside ``<folder>/masks/<id>_mask.png``; no post-processing, no flip TTA)
and its map at 0.5 is placed three ways: centre-aligned, ``resize_back`` as predict does for that run (rows
moved; columns too when it trained without left-right flips), and rows and columns moved.

    python tools/mask_roundtrip.py ../shared/data/brain-mri-figshare/masks/*_mask.png --size 240 --limit 200
    python tools/mask_roundtrip.py ../shared/data/brain-mri-lgg/kaggle_3m/*/*_mask.tif --size 240
    python tools/mask_roundtrip.py data/synthetic-mri/masks/*_mask.png --weights runs/<demo run>/best.pth --limit 120

Masks without tumour are left out, and so are masks already at the model's side. Figures:
docs/brain-mri.md#evaluate-and-predict.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from toolkit.data.mri.io import read_image
from toolkit.data.mri.resize import resize_back, resize_square
from toolkit.inference import trained_with_flips


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def centre_aligned(maps: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])


def model_map(weights: str):
    """image uint8 (H, W, C) → the run's tumour probability (1, S, S) float32 at its side S; and its config."""
    from toolkit.inference import load_ensemble, scan_member_probs
    from toolkit.seg_images import tumour_map

    ensemble, cfg, _, _ = load_ensemble([weights])
    size = int(cfg["image_size"])

    def predict(image: np.ndarray) -> np.ndarray:
        probs = scan_member_probs(ensemble, image, size).numpy()  # (M, 1, K, S, S)
        return tumour_map(probs, ensemble.target.kind).mean(0).astype(np.float32)

    return predict, cfg


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("masks", nargs="+", help="mask files (non-zero = tumour)")
    parser.add_argument("--size", type=int, default=240, help="the model's side, pixels (with --weights: the run's)")
    parser.add_argument("--weights", default="", help="a run's best.pth: place its predictions, not the masks")
    parser.add_argument("--limit", type=int, default=0, help="read at most this many masks (sorted); 0 = all")
    args = parser.parse_args(argv)
    predict, cfg = model_map(args.weights) if args.weights else (None, {})
    size = int(cfg.get("image_size", args.size))
    flip_trained = trained_with_flips(cfg) if args.weights else False  # a perfect model: trained without flips
    ways = {"centre-aligned": centre_aligned,
            "resize_back": lambda m, w, h: resize_back(m, w, h, flip_trained=flip_trained)}
    if predict is not None:
        ways["rows and columns moved"] = lambda m, w, h: resize_back(m, w, h, flip_trained=False)
    scores: dict[str, list[float]] = {k: [] for k in ways}
    for f in sorted(args.masks)[: args.limit or None]:
        truth = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        if truth is None:
            parser.error(f"{f} is not a readable image")
        truth = truth > 0
        h, w = truth.shape
        if not truth.any() or (h, w) == (size, size):
            continue
        if predict is None:
            small = resize_square(truth.astype(np.uint8), size, nearest=True).astype(np.float32)[None]
        else:
            path = Path(f)
            small = predict(read_image(path.parent.parent / "images" / path.name.replace("_mask", "")))
        for name, way in ways.items():
            scores[name].append(dice(way(small, w, h)[0] >= 0.5, truth))
    means = {k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()}
    what = f"{args.weights} (flip-trained: {flip_trained})" if args.weights else "a perfect model"
    print(f"{len(scores['resize_back'])} masks with tumour, {size} px, {what}: "
          + ", ".join(f"{k} Dice {v:.4f}" for k, v in means.items()))
    return means


if __name__ == "__main__":
    main()
