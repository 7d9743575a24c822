"""``torch.compile`` (inductor) against eager mode: training images/s after compilation, and the compile time.

The same training step as the precision benchmark, in the default precision and layout
(bf16 autocast where supported, channels_last). In the toolkit the option is Accelerate's:
``accelerate launch --dynamo_backend inductor ...`` makes the Trainer's ``prepare`` compile
the model (the Makefile passes ``--dynamo_backend no`` on the CPU). ``compile_s`` is the
time of the first compiled step minus an eager step: what a run pays once (per process).
"""

from __future__ import annotations

import time

import torch

from .common import Row, interleaved, median
from .models import TrainStep, recipe_models
from .trainer_overhead import _bf16_supported

SECTION = "compile"


def run(quick: bool = False, repeats: int = 4,
        models: tuple[str, ...] = ("ResNet-20", "U-Net s2d", "CNN AE")) -> tuple[list[Row], dict]:
    import torch._dynamo

    bf16 = _bf16_supported()
    backend = "eager" if quick else "inductor"  # quick: dynamo tracing only (inductor's C++ build takes a minute)
    rows, info = [], {"compile_s": {}, "backend": backend, "bf16": bf16}
    for spec in recipe_models(quick):
        if spec.name not in (models[-1:] if quick else models):
            continue
        torch.manual_seed(0)
        base = spec.build()
        eager = TrainStep(base, spec, spec.bench_batch, bf16, True)
        torch._dynamo.reset()
        compiled = TrainStep(base, spec, spec.bench_batch, bf16, True, compile=backend)
        eager.run(1)
        t0 = time.perf_counter()
        eager.run(1)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled.run(1)  # compiles forward and backward
        compile_s = time.perf_counter() - t0 - one
        n = 1 if quick else max(1, min(50, round(0.6 / max(one, 1e-6))))
        times = interleaved({"eager": lambda: (eager.run(n), None)[1],
                             "compiled": lambda: (compiled.run(n), None)[1]}, warmup=1, repeats=repeats)
        rate = {k: n * spec.bench_batch / median(t) for k, t in times.items()}
        key = f"{spec.recipe}: {spec.name}"
        info["compile_s"][key] = compile_s
        breakeven = compile_s / max(1 / rate["eager"] - 1 / rate["compiled"], 1e-12)
        rows.append(Row(SECTION, key, f"torch.compile ({backend})", "eager", rate["compiled"], rate["eager"],
                        "images/s", rate["compiled"] / rate["eager"],
                        note=f"batch {spec.bench_batch}, compile {compile_s:.0f} s" + (
                            f", pays off after {breakeven:,.0f} images" if rate["compiled"] > rate["eager"] else ""),
                        extra={"compile_s": compile_s, "eager_s": times["eager"], "compiled_s": times["compiled"]}))
    torch._dynamo.reset()
    return rows, info
