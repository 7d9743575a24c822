"""Precision and memory layout: training images/s of every recipe's model in fp32, bf16 autocast and channels_last.

Baseline: fp32 in the default NCHW layout. Candidates: fp32+channels_last, bf16 (autocast),
bf16+channels_last. Each model gets the same random batch and the same initial weights in
every variant; ``loss_rel_diff`` is |loss - fp32 loss| / fp32 loss of the untrained model
on that batch (how far the lower precision moves the numbers).
"""

from __future__ import annotations

import time

import torch

from .common import Row, interleaved, median
from .models import CONFIGS, TrainStep, recipe_models
from .trainer_overhead import _bf16_supported

SECTION = "precision"


def _calibrate(step: TrainStep, target_s: float) -> int:
    """Steps per repeat so that one repeat of ``step`` takes about ``target_s`` seconds (1..50)."""
    step.run(1)
    start = time.perf_counter()
    step.run(1)
    one = time.perf_counter() - start
    return max(1, min(50, round(target_s / max(one, 1e-6))))


def run(quick: bool = False, repeats: int = 4, target_s: float = 0.4) -> tuple[list[Row], dict]:
    rows: list[Row] = []
    best: dict[str, str] = {}
    default: dict[str, float] = {}  # images/s in the default precision and layout
    bf16_ok = _bf16_supported()
    for spec in recipe_models(quick):
        torch.manual_seed(0)
        base = spec.build()
        steps_by = {name: TrainStep(base, spec, spec.bench_batch, bf16, cl) for name, bf16, cl in CONFIGS}
        losses = {name: s.initial_loss() for name, s in steps_by.items()}
        n = 1 if quick else _calibrate(steps_by["fp32"], target_s)
        times = interleaved({name: (lambda s=s: (s.run(n), None)[1]) for name, s in steps_by.items()},
                            warmup=1, repeats=repeats)
        rate = {name: n * spec.bench_batch / median(ts) for name, ts in times.items()}
        base_name = CONFIGS[0][0]
        best[f"{spec.recipe}: {spec.name}"] = max(rate, key=rate.get)
        default[f"{spec.recipe}: {spec.name}"] = rate["bf16+channels_last" if bf16_ok else "fp32+channels_last"]
        for name, _, _ in CONFIGS[1:]:
            rel = abs(losses[name] - losses[base_name]) / max(abs(losses[base_name]), 1e-12)
            rows.append(Row(SECTION, f"{spec.recipe}: {spec.name}", name, base_name, rate[name], rate[base_name],
                            "images/s", rate[name] / rate[base_name],
                            note=f"batch {spec.bench_batch}, loss rel. diff {rel:.1e}",
                            extra={"steps_per_repeat": n, "repeats_s": times[name],
                                   "baseline_repeats_s": times[base_name], "loss_rel_diff": rel,
                                   "shape": list(spec.shape)}))
    return rows, {"fastest": best, "default_rates": default}
