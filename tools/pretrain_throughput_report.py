"""The JSON of tools/pretrain_throughput.sh, from its run folders (or a skeleton with null figures on --dry-run).

    python tools/pretrain_throughput_report.py --work DIR --out FILE --gpus N --images 20000 --batch 256 \
        --commands DIR/commands.txt [--data TEXT] [--assumed] [--dry-run]

Reads ``DIR/runs/pretrain-<bf16|fp16>-<P>gpu/history.json``: the second epoch's ``train_images_per_s``
(images/s over all processes; the first epoch pays cuDNN autotuning and worker start-up) and ``summary.json``
(``train_images_per_s``, the mean over epochs; ``wall_time_s``). A missing file gives null, never a made-up
figure. Estimates for 100 epochs over STL-10's 100,000 unlabelled images (training only: validation, figures
and checkpoints add to it):

- 1 GPU: hours = 100 x 100,000 / (measured 1-GPU images/s) / 3600; rate ``measured``;
- 8 GPUs: rate = 8 x (N-GPU images/s / N) = 8 x 1-GPU images/s x efficiency(N), i.e. the per-GPU rate
  measured on N GPUs kept up to 8 (efficiency applied once); ``measured`` when N = 8, ``estimated``
  otherwise; with one GPU only, 8 x 1-GPU images/s (linear scaling assumed), ``estimated``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from gpu_check_report import _load as load_json  # noqa: E402  (None when missing or malformed)

PRECISIONS = ("bf16", "fp16")
MEASURED_EPOCH = 2
TARGET_EPOCHS, TARGET_IMAGES, TARGET_GPUS = 100, 100_000, 8


def run_figures(work: Path, precision: str, procs: int, batch: int) -> dict:
    """Figures of run ``pretrain-<precision>-<procs>gpu`` (None where it left nothing): ``images_per_s``
    (float, second epoch, all processes), ``mean_images_per_s`` (summary.json), ``wall_time_s``, ``epochs``,
    ``global_batch`` (= procs x batch)."""
    name = f"pretrain-{precision}-{procs}gpu"
    history = load_json(work / "runs" / name / "history.json")
    history = history if isinstance(history, list) else []
    summary = load_json(work / "runs" / name / "summary.json") or {}
    epoch = next((h for h in history if isinstance(h, dict) and h.get("epoch") == MEASURED_EPOCH), {})
    return {"run": name, "processes": procs, "global_batch": procs * batch,
            "images_per_s": epoch.get("train_images_per_s"), "mean_images_per_s": summary.get("train_images_per_s"),
            "wall_time_s": summary.get("wall_time_s"), "epochs": len(history) or None}


def hours(images_per_s: float | None) -> float | None:
    """Hours of TARGET_EPOCHS passes over TARGET_IMAGES at ``images_per_s`` (None when it is missing or <= 0)."""
    return TARGET_EPOCHS * TARGET_IMAGES / images_per_s / 3600 if images_per_s and images_per_s > 0 else None


def estimate(one: dict, many: dict | None, gpus: int) -> dict:
    """Scaling efficiency (N-GPU images/s / (N x 1-GPU images/s); None for N = 1 or a missing rate) and the
    1- and 8-GPU rows ``{gpus, images_per_s, hours, basis}`` (basis ``measured`` | ``estimated``)."""
    rate1 = one["images_per_s"]
    rate_n = many["images_per_s"] if many else None
    efficiency = rate_n / (gpus * rate1) if rate1 and rate_n else None
    if gpus == 1:
        rate8 = TARGET_GPUS * rate1 if rate1 else None
        basis8 = "estimated: 8 x the 1-GPU rate (linear scaling assumed; no multi-GPU run)"
    else:
        rate8 = TARGET_GPUS * rate_n / gpus if rate_n else None
        basis8 = ("measured: the 8-GPU run" if gpus == TARGET_GPUS else
                  f"estimated: 8 x the per-GPU rate measured on {gpus} GPUs (efficiency {gpus} GPUs kept)")
    return {"gpus": gpus, "efficiency": efficiency,
            "1": {"gpus": 1, "images_per_s": rate1, "hours": hours(rate1), "basis": "measured: the 1-GPU run"},
            "8": {"gpus": TARGET_GPUS, "images_per_s": rate8, "hours": hours(rate8), "basis": basis8}}


def build(args: argparse.Namespace) -> dict:
    """The whole JSON (see the module docstring)."""
    work = Path(args.work)
    commands = Path(args.commands).read_text().splitlines() if args.commands else []
    counts = sorted({1, args.gpus})
    runs, estimates = {}, {}
    for precision in PRECISIONS:
        figures = {str(p): run_figures(work, precision, p, args.batch) for p in counts}
        runs[precision] = figures
        estimates[precision] = estimate(figures["1"], figures.get(str(args.gpus)) if args.gpus > 1 else None,
                                        args.gpus)
    return {"tool": "tools/pretrain_throughput.sh", "dry_run": args.dry_run,
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "gpu_count": args.gpus,
            "gpu_count_assumed": args.assumed, "data": args.data, "images": args.images,
            "per_gpu_batch": args.batch, "measured_epoch": MEASURED_EPOCH, "commands": commands, "runs": runs,
            "estimate": {"epochs": TARGET_EPOCHS, "images": TARGET_IMAGES, **estimates},
            "notes": ["images_per_s: history.json train_images_per_s of epoch 2, all processes together",
                      "same batch per GPU on 1 and N GPUs: the global batch is N times larger on N GPUs",
                      "efficiency = N-GPU images/s / (N x 1-GPU images/s)",
                      "hours = 100 epochs x 100,000 images / images_per_s / 3600, training steps only"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--assumed", action="store_true", help="the GPU count was assumed (dry run without GPUs)")
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True, help="images per GPU per step")
    parser.add_argument("--data", default="", help="where the images came from (text for the JSON)")
    parser.add_argument("--commands", default="")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    for name in ("gpus", "images", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected >= 1, got {getattr(args, name)}")
    from toolkit.checkpoint import save_json

    result = build(args)
    save_json(args.out, result)
    print(json.dumps(result["estimate"], indent=1))
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
