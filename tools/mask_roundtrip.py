"""The Dice a perfect model's masks get back at the scans' own size: each mask resized to the model's side as
training resizes it (``resize_square``, nearest), then back as ``toolkit predict`` does (``resize_back``) or
centre-aligned (``cv2.resize``, predict until 3 Dec 2026), thresholded at 0.5 and scored against the original.

    python tools/mask_roundtrip.py ../shared/data/brain-mri-figshare/masks/*_mask.png --size 240 --limit 200
    python tools/mask_roundtrip.py ../shared/data/brain-mri-lgg/kaggle_3m/*/*_mask.tif --size 240

Masks without tumour are left out. Prints the mean Dice of both ways (docs/brain-mri.md#evaluate-and-predict).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from toolkit.data.mri.io import resize_back, resize_square


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("masks", nargs="+", help="mask files (non-zero = tumour)")
    parser.add_argument("--size", type=int, default=240, help="the model's side, pixels")
    parser.add_argument("--limit", type=int, default=0, help="read at most this many masks (sorted); 0 = all")
    args = parser.parse_args(argv)
    files = sorted(args.masks)[: args.limit or None]
    scores: dict[str, list[float]] = {"resize_back": [], "centre-aligned": []}
    for f in files:
        truth = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        if truth is None:
            parser.error(f"{f} is not a readable image")
        truth = truth > 0
        if not truth.any():
            continue
        h, w = truth.shape
        small = resize_square(truth.astype(np.uint8), args.size, nearest=True).astype(np.float32)
        scores["resize_back"].append(dice(resize_back(small[None], w, h)[0] >= 0.5, truth))
        scores["centre-aligned"].append(dice(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5, truth))
    means = {k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()}
    print(f"{len(scores['resize_back'])} masks with tumour, {args.size} px: "
          + ", ".join(f"{k} Dice {v:.4f}" for k, v in means.items()))
    return means


if __name__ == "__main__":
    main()
