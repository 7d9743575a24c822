"""The JSON of tools/gpu_check.sh, from what its runs left in the work folder (or a skeleton on --dry-run).

    python tools/gpu_check_report.py --work DIR --out FILE --gpus N --recipes brain_mri,mnist_autoencoder \
        --commands DIR/commands.txt [--tolerance 0.15] [--dry-run]

Reads ``DIR/runs/<recipe>-<P>gpu/summary.json`` (``train_images_per_s``: images/s over all processes) and
``history.json`` (last epoch's ``train_loss``, ``val_loss``), ``DIR/peak/<recipe>-<P>gpu/rank*.json``
(tools/gpu_peak.py: peak ``torch.cuda.max_memory_allocated`` per process, bytes) and ``DIR/bench.json``
(``python -m bench.run --only trainer_overhead``). A missing file gives null, never a made-up figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_figures(work: Path, recipe: str, procs: int) -> dict:
    """Figures of one run (None where the run left nothing): images/s, peak memory (bytes, max over
    processes), last epoch's train and val loss, wall time (s)."""
    name = f"{recipe}-{procs}gpu"
    summary = _load(work / "runs" / name / "summary.json") or {}
    history = _load(work / "runs" / name / "history.json") or []
    last = history[-1] if isinstance(history, list) and history else {}
    peaks = [_load(p) or {} for p in sorted((work / "peak" / name).glob("rank*.json"))]
    peak = max((p.get("max_memory_allocated_bytes") or 0 for p in peaks), default=None)
    return {"run": name, "processes": procs, "images_per_s": summary.get("train_images_per_s"),
            "peak_memory_bytes": peak, "peak_memory_gib": None if peak is None else round(peak / 2**30, 3),
            "final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss"),
            "wall_time_s": summary.get("wall_time_s"), "epochs": len(history) if history else None}


def loss_match(one: dict, many: dict, tolerance: float) -> dict:
    """Relative difference of the last train loss on 1 and N GPUs; ``same`` None when a loss is missing."""
    a, b = one.get("final_train_loss"), many.get("final_train_loss")
    if a is None or b is None:
        return {"train_loss_1": a, "train_loss_n": b, "relative_difference": None, "tolerance": tolerance, "same": None}
    rel = abs(a - b) / max(abs(a), 1e-12)
    return {"train_loss_1": a, "train_loss_n": b, "relative_difference": rel, "tolerance": tolerance,
            "same": rel <= tolerance}


def build(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    commands = Path(args.commands).read_text().splitlines() if args.commands else []
    counts = sorted({1, args.gpus})
    runs, scaling, losses = {}, {}, {}
    for recipe in args.recipes:
        figures = {str(p): run_figures(work, recipe, p) for p in counts}
        runs[recipe] = figures
        one, many = figures["1"], figures[str(args.gpus)]
        if args.gpus > 1:
            ratio = (many["images_per_s"] / one["images_per_s"]) if one["images_per_s"] and many["images_per_s"] \
                else None
            scaling[recipe] = {"images_per_s_ratio": ratio, "per_gpu_efficiency": None if ratio is None
                               else ratio / args.gpus}
            losses[recipe] = loss_match(one, many, args.tolerance)
    bench = _load(work / "bench.json") or {}
    overhead = (bench.get("sections") or {}).get("trainer_overhead")
    return {"tool": "tools/gpu_check.sh", "dry_run": args.dry_run, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "gpu_count": args.gpus, "gpu_count_assumed": args.assumed, "precision": "bf16 (accelerate_config.yaml)",
            "skipped": args.skipped, "commands": commands, "runs": runs, "scaling": scaling,
            "loss_match": losses, "trainer_overhead": None if overhead is None else overhead.get("rows"),
            "notes": ["images_per_s: summary.json train_images_per_s, all processes together",
                      "peak_memory_bytes: torch.cuda.max_memory_allocated, the largest over the run's processes "
                      "(tools/gpu_peak.py)",
                      "loss_match: last epoch's train loss, same global batch on 1 and N GPUs; the data order "
                      "differs, so equal only within the tolerance (relative)"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--assumed", action="store_true", help="the GPU count was assumed (dry run without GPUs)")
    parser.add_argument("--recipes", type=lambda s: [r for r in s.split(",") if r], required=True)
    parser.add_argument("--skipped", type=lambda s: [r for r in s.split(",") if r], default=[])
    parser.add_argument("--commands", default="")
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error(f"--gpus: expected >= 1, got {args.gpus}")
    from toolkit.checkpoint import save_json

    result = build(args)
    save_json(args.out, result)
    print(json.dumps({"loss_match": result["loss_match"], "scaling": result["scaling"]}, indent=1))
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
