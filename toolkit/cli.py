"""`toolkit evaluate | predict | report`: use the weights of any segmentation run; report on runs.

    toolkit evaluate --weights runs/<run>/best.pth [--data-dir DIR] [--split test|val|train|all]
    toolkit predict  --weights runs/<run>/best.pth --input FILE_OR_DIR --output DIR
    toolkit report   [runs/]   # runs/<run>/report.html per run and runs/index.html comparing them
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from .checkpoint import atomic_write

__all__ = ["main"]


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {path}")
    atomic_write(path, lambda f: f.write(buf.tobytes()))


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) scan + {0,1} (H, W) mask → BGR uint8 with the mask in red and its outline."""
    grey = image[..., 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    red = bgr.copy()
    red[mask > 0] = (0, 0, 255)
    out = cv2.addWeighted(bgr, 0.6, red, 0.4, 0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(out, contours, -1, (0, 0, 255), 1)


def predict(args: argparse.Namespace) -> int:
    import json

    from .data.mri.channels import resolve_channels
    from .data.mri.io import read_image
    from .inference import IMAGE_SUFFIXES, largest_component, load_segmentation_run, predict_probs

    model, cfg = load_segmentation_run(args.weights)
    split_file = Path(args.weights).parent / "split.json"
    source = json.loads(split_file.read_text()).get("source", "folder") if split_file.is_file() else "folder"
    channels = resolve_channels(source, cfg.get("channels") or cfg.get("in_channels", 1))
    source = Path(args.input)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                       and not p.stem.endswith("_mask"))
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"--input {source} does not exist")
    if not files:
        raise FileNotFoundError(f"--input {source} holds no PNG/JPEG/TIFF images")
    out = Path(args.output)
    threshold = cfg.get("threshold", 0.5) if args.threshold is None else args.threshold
    for path in files:
        image = read_image(path, channels)
        mask = (predict_probs(model, image, cfg["image_size"], flips=args.flips) >= threshold).astype(np.uint8)
        if args.one_region:
            mask = largest_component(mask)
        _write_png(out / f"{path.stem}_mask.png", mask * 255)
        _write_png(out / f"{path.stem}_overlay.png", _overlay(image, mask))
        print(f"{path}: {int(mask.sum())} tumour pixels of {mask.size}")
    print(f"wrote {len(files)} masks and overlays to {out}/")
    return 0


EMPTY_RULE = ("a slice whose true mask is empty scores Dice = IoU = 1 when the prediction is empty too, "
              "0 when it marks any pixel; global scores pool the pixels of all slices")


def evaluate(args: argparse.Namespace) -> int:
    import json

    from .checkpoint import save_json
    from .data.mri.dataset import MRISegmentationDataset
    from .data.mri.discover import discover_mri_slices
    from .data.splits import load_split
    from .inference import evaluate_segmentation, load_segmentation_run

    model, cfg = load_segmentation_run(args.weights)
    run_dir = Path(args.weights).parent
    split_file = run_dir / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    data_dir = Path(args.data_dir or split.get("data_dir") or cfg.get("data_dir") or cfg.get("synthetic_dir", ""))
    found = discover_mri_slices(data_dir, channels=cfg.get("channels") or cfg.get("in_channels", 1),
                                slice_rule=cfg.get("slice_rule") or None, skip_bad_files=cfg.get("skip_bad_files", False))
    records = found.slices
    if args.split != "all":
        splits = load_split(split_file, records, names=[args.split]) if args.split in split else {}
        if args.split not in splits:
            raise ValueError(f"{split_file} has no {args.split!r} split; "
                             f"use --split all, or train with --test-fraction > 0 for a test split")
        records = splits[args.split]
    dataset = MRISegmentationDataset(records, size=cfg["image_size"], skip_bad_files=cfg.get("skip_bad_files", False))
    threshold = cfg.get("threshold", 0.5) if args.threshold is None else args.threshold
    records, summary = evaluate_segmentation(model, dataset, threshold, flips=args.flips,
                                             one_region=args.one_region)
    result = {"weights": str(args.weights), "data_dir": str(data_dir), "split": args.split, "threshold": threshold,
              "flips": args.flips, "one_region": args.one_region, "resolution": cfg["image_size"], "empty_masks": EMPTY_RULE,
              "summary": summary, "per_image": records}
    out = Path(args.output) if args.output else run_dir / f"eval_{args.split}.json"
    save_json(out, result)
    print(f"{'id':>12} {'dice':>6} {'iou':>6} {'true px':>8} {'pred px':>8}")
    for r in sorted(records, key=lambda r: r["dice"])[: args.show]:
        print(f"{r['id']:>12} {r['dice']:6.3f} {r['iou']:6.3f} {r['true_pixels']:8d} {r['pred_pixels']:8d}")
    print(f"{len(records)} slices ({args.split} split of {data_dir}), worst {min(args.show, len(records))} shown")
    for key in ("dice", "iou", "dice_global", "iou_global", "dice_tumour", "empty_correct"):
        print(f"  {key:<14} {summary[key]:.4f}")
    print(f"empty masks: {EMPTY_RULE}\nwrote {out}")
    return 0


def report(args: argparse.Namespace) -> int:
    from .report import write_report

    written = write_report(args.runs_dir)
    print(f"wrote {len(written) - 1} run page(s) and {written[-1]}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="per-image and global Dice/IoU on a data split, as JSON and a table")
    e.add_argument("--weights", required=True, help="best.pth of a segmentation run (config.json beside it)")
    e.add_argument("--data-dir", default=None, help="data folder; default: the one the run trained on")
    e.add_argument("--split", default="test", choices=("test", "val", "train", "all"),
                   help="which part of the run's saved split (split.json) to score; all = every slice")
    e.add_argument("--threshold", type=float, default=None, help="probability threshold; default: the run's")
    e.add_argument("--flips", action="store_true", help="average with the horizontally flipped prediction")
    e.add_argument("--one-region", action="store_true", help="keep only the largest predicted region per slice")
    e.add_argument("--output", default=None, help="JSON file; default: <run>/eval_<split>.json")
    e.add_argument("--show", type=int, default=10, help="how many of the worst slices to print")
    e.set_defaults(func=evaluate)
    p = sub.add_parser("predict", help="masks and overlays for images, at each image's own size")
    p.add_argument("--weights", required=True, help="best.pth of a segmentation run (config.json beside it)")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="folder for <name>_mask.png and <name>_overlay.png")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold; default: the run's")
    p.add_argument("--flips", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument("--one-region", action="store_true", help="keep only the largest predicted region per image")
    p.set_defaults(func=predict)
    r = sub.add_parser("report", help="self-contained HTML page per run and an index comparing the runs")
    r.add_argument("runs_dir", nargs="?", default="runs", help="folder holding run folders (default: runs)")
    r.set_defaults(func=report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
