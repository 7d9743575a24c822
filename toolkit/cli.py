"""`toolkit evaluate | predict | postprocess | export | report`: use the weights of a segmentation run; report.

    toolkit evaluate --weights runs/<run>/best.pth [--data-dir DIR] [--split test|val|train|all]
    toolkit evaluate --weights runs/<cv-run> --data-dir DIR --split all      # the folds' ensemble
    toolkit evaluate --weights runs/<regions-run> --split val   # per patient (volume) and region, HD95 in mm
    toolkit predict  --weights runs/<run>/best.pth --input FILE_OR_DIR --output DIR
    toolkit predict  --weights runs/<run>/best.pth --input <case>_0000.nii.gz --output DIR   # a NIfTI case
    toolkit predict  --weights model.onnx --input FILE_OR_DIR --output DIR   # an exported model, onnxruntime, no torch
    toolkit postprocess --weights runs/<run>   # choose its post-processing again with today's rules (validation)
    toolkit report   [runs/]   # runs/<run>/report.html per run and runs/index.html comparing them
    toolkit export   --weights runs/<run>/best.pth --format onnx|torchscript [--output FILE]   # any recipe's model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def report(args: argparse.Namespace) -> int:
    from .report import write_report

    written = write_report(args.runs_dir)
    print(f"wrote {len(written) - 1} run page(s) and {written[-1]}")
    return 0


def export(args: argparse.Namespace) -> int:
    from .export import export_model

    out, meta, diff = export_model(args.weights, args.format, args.output, check=not args.no_check)
    print(f"wrote {out} ({args.format}, {meta['recipe']} {meta['kind']}): input {meta['input']}; "
          f"preprocessing NOT in the graph: {meta['preprocess']}")
    if diff is not None:
        sides = " and a scan of other sides" if meta.get("dynamic_size_multiple") else ""
        print(f"max abs difference from PyTorch on a random batch of 3{sides}: {diff:.3g}")
    return 0


def _seg_command(name: str):
    def run(args: argparse.Namespace) -> int:
        if name == "predict" and Path(args.output).exists() and not Path(args.output).is_dir():
            raise ValueError(f"--output {args.output} is a file; predict writes its masks and overlays into a folder")
        if name == "predict" and any(str(w).lower().endswith(".onnx") for w in args.weights):
            from . import onnx_predict  # onnxruntime, no torch

            return onnx_predict.predict(args)
        from . import seg_commands  # torch, OpenCV and the models load only for these commands

        return getattr(seg_commands, name)(args)

    return run


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, nargs="+", action="extend",  # --weights A --weights B: both
                   help="best.pth of a segmentation run (config.json beside it), a run folder, or a cross-validation "
                        "folder (its folds' ensemble); several (--weights A B, or --weights given again) = their "
                        "ensemble; predict also takes one .onnx file written by toolkit export (onnxruntime, no torch)")
    p.add_argument("--postprocess", default="auto", choices=("auto", "none"),
                   help="auto: apply the run's postprocess.json (chosen on validation or out-of-fold predictions); "
                        "none: the run's threshold alone")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold; overrides the stored one")
    p.add_argument("--flips", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument("--one-region", action="store_true", help="keep only the largest predicted region per slice")
    p.add_argument("--scale-tta", action="store_true",
                   help="also predict each scan at 0.8x and 1.25x its side and average (about 3x the inference time); "
                        "the stored post-processing turns it on where it gained on validation")


def _count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="per-image, pooled, per-patient Dice/IoU on a data split, as JSON and a table; "
                                        "classes/regions runs and volume data also per patient volume and class/region "
                                        "(Dice, IoU, HD95 mm, volume difference)")
    _model_arguments(e)
    e.add_argument("--data-dir", default=None, help="data folder(s), comma-separated; default: those the run trained on")
    e.add_argument("--split", default=None, choices=("test", "val", "train", "all"),
                   help="which part of the run's saved split (split.json) to score; all = every slice (default: "
                        "test on the data the run trained on, all with --data-dir of other data)")
    e.add_argument("--output", default=None, help="JSON file; default: <run>/eval_<split>.json (several --weights: "
                                                  "eval_<split>_ensemble.json in the first one's folder)")
    e.add_argument("--show", type=_count, default=10,
                   help="how many of the worst slices (or patients) to print (default: 10)")
    e.set_defaults(func=_seg_command("evaluate"))
    p = sub.add_parser("predict", help="masks and overlays for images, at each image's own size")
    _model_arguments(p)
    p.add_argument("--input", required=True, help="an image file or a folder of images; or NIfTI: a .nii.gz volume, "
                   "a case's <case>_0000.nii.gz (with its sibling channels), a raw-layout or .nii.gz folder")
    p.add_argument("--output", required=True, help="folder for <name>_mask.png and <name>_overlay.png "
                   "(NIfTI: <case>_seg.nii.gz label volume and <case>_seg.png)")
    p.set_defaults(func=_seg_command("predict"))
    c = sub.add_parser("postprocess", help="choose a finished run's post-processing again on its validation split "
                                           "with today's rules (2D search; 3D rules on volumes); the old file is "
                                           "kept as postprocess.previous.json")
    c.add_argument("--weights", nargs=1, required=True, help="a segmentation run folder or its best.pth, or a "
                   "cross-validation folder (chosen again out of fold; cv.json rewritten)")
    c.set_defaults(func=_seg_command("postprocess"))
    x = sub.add_parser("export", help="a run's model as ONNX or TorchScript (dynamic batch; the input preprocessing, "
                                      "image size, channels, target and threshold in the file's metadata)")
    x.add_argument("--weights", required=True, help="best.pth (or best.safetensors) of a run, config.json beside it")
    x.add_argument("--format", required=True, choices=("onnx", "torchscript"),
                   help="onnx (torch.onnx dynamo export, dynamic batch) or torchscript (a traced module)")
    x.add_argument("--output", default=None, help="file to write; default: the weights' path as .onnx / .pt")
    x.add_argument("--no-check", action="store_true", help="skip running the exported file against PyTorch")
    x.set_defaults(func=export)
    r = sub.add_parser("report", help="self-contained HTML page per run and an index comparing the runs")
    r.add_argument("runs_dir", nargs="?", default="runs", help="folder holding run folders (default: runs)")
    r.set_defaults(func=report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as err:  # OSError: e.g. --output under a file, a folder without write access
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
