"""Would BatchNorm statistics of whole slices beat those of the training patches? A paired check on one run.

The recipe trains on 96-px patches (half of them centred on tumour) and predicts whole 240-px slices, so the
BatchNorm running means and variances it stores are those of patches. This script takes a finished run's
``best.pth``, predicts its validation slices (flip TTA, no other post-processing), then re-estimates every
BatchNorm layer's statistics on ``--slices`` whole training slices of the same run (train mode, no gradient,
cumulative average, no augmentation) and predicts them again, printing the mean per-image Dice of both at a few
thresholds (an empty true mask scores 1 when predicted empty, as ``toolkit evaluate``). ``--data-dir`` adds
another data set scored the same way (e.g. patients kept outside the run's data; read it only after choosing).

    python tools/bn_recalibration.py runs/<run> --slices 400
    python tools/bn_recalibration.py runs/<run> --data-dir HELD_A,HELD_B

Figures: docs/brain-mri.md ("Where the held-out Dice is lost"). Binary runs on 2D slices only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from toolkit.data.batch_transforms import standardize_per_image
from toolkit.data.splits import load_split
from toolkit.ensemble import SegmentationEnsemble
from toolkit.inference import load_segmentation_run, run_dataset, run_slices
from toolkit.postprocess import per_image_dice
from toolkit.seg_eval import collect_probs

THRESHOLDS = (0.3, 0.4, 0.5)  # probability thresholds scored


def _batches(dataset, batch: int = 16):
    """Float (B, C, S, S) standardised scans of ``dataset`` (uint8 image, mask pairs) in order, channels_last."""
    for start in range(0, len(dataset), batch):
        images = [dataset[j][0] for j in range(start, min(start + batch, len(dataset)))]
        yield standardize_per_image(torch.stack(images)).contiguous(memory_format=torch.channels_last)


def probabilities(model: torch.nn.Module, dataset) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (N, S, S) flip-TTA probabilities in [0, 1], uint8 (N, S, S) {0, 1} true masks) of ``dataset``."""
    preds = collect_probs(SegmentationEnsemble([model.eval()]), dataset, flips=True)
    return preds.flipped, preds.targets


def mean_dice(probs: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """Mean per-image Dice of ``probs > threshold`` against ``truth`` (both (N, S, S)); empty against empty is 1."""
    return float(per_image_dice(probs > threshold, truth).mean())


@torch.no_grad()
def recalibrate(model: torch.nn.Module, dataset) -> None:
    """Replace every BatchNorm layer's running statistics by their cumulative average over ``dataset``."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over all batches
    model.train()
    for x in _batches(dataset):
        model(x)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished brain_mri run folder (best.pth, split.json)")
    parser.add_argument("--slices", type=int, default=400,
                        help="whole training slices drawn (seed 0) to re-estimate on")
    parser.add_argument("--data-dir", default="", help="also score every slice of these folders (comma-separated)")
    args = parser.parse_args()
    model, cfg = load_segmentation_run(args.run / "best.pth")
    split_file = args.run / "split.json"
    records = run_slices(json.loads(split_file.read_text()).get("data_dir") or cfg["data_dir"], cfg)
    split = load_split(split_file, records, names=["train", "val"])
    drawn = np.random.default_rng(0).permutation(len(split["train"]))[:args.slices]
    calibration = run_dataset([split["train"][i] for i in drawn], cfg)
    sets = {"validation": run_dataset(split["val"], cfg)}
    if args.data_dir:
        sets[args.data_dir] = run_dataset(run_slices(args.data_dir, cfg), cfg)
    model = model.to(memory_format=torch.channels_last)
    before = {name: probabilities(model, ds) for name, ds in sets.items()}
    recalibrate(model, calibration)
    after = {name: probabilities(model, ds) for name, ds in sets.items()}
    print(f"BatchNorm statistics re-estimated on {len(calibration)} whole training slices of {args.run}")
    for name in sets:
        for t in THRESHOLDS:
            print(f"{name} ({len(sets[name])} slices), threshold {t}: patch statistics "
                  f"{mean_dice(*before[name], t):.4f}, whole-slice statistics {mean_dice(*after[name], t):.4f}")


if __name__ == "__main__":
    main()
